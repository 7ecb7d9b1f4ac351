"""PyTorch stays out of a serving process (service/imports.py), in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys

# transformers here has no PyTorch to find: pretend it does, as on a PyTorch image, then check
# that what keep_torch_out() leaves behind says "absent" and a tokenizer still loads.
PRETEND = """
import sys
from transformers.utils import import_utils
import transformers.utils as utils
present = lambda *a, **k: True
import_utils.is_torch_available = utils.is_torch_available = present
from mlxd.service.imports import keep_torch_out
told = keep_torch_out()
import os
print(told, os.environ.get("USE_TORCH"), utils.is_torch_available(), import_utils.is_torch_available())
if told:  # (left alone, transformers would go looking for the PyTorch it was promised)
    from pathlib import Path
    from mlx_lm.tokenizer_utils import load
    tok = load(Path(sys.argv[1]))
    print(len(tok.encode("hello world")) > 0, "torch" in sys.modules)
"""


def _run(tiny_model_dir, **env) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("USE_TORCH", "MLXD_TORCH")}
    out = subprocess.run(
        [sys.executable, "-c", PRETEND, str(tiny_model_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **env},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_transformers_is_told_pytorch_is_absent(tiny_model_dir):
    told, use_torch, via_utils, via_import_utils, encodes, torch = _run(tiny_model_dir)
    assert (told, use_torch, via_utils, via_import_utils) == ("True", "0", "False", "False")
    assert (encodes, torch) == ("True", "False")


def test_opting_out_leaves_transformers_alone(tiny_model_dir):
    told, _use_torch, via_utils, via_import_utils = _run(tiny_model_dir, MLXD_TORCH="1")
    assert (told, via_utils, via_import_utils) == ("False", "True", "True")


def test_a_user_setting_wins(tiny_model_dir):
    _told, use_torch, *_ = _run(tiny_model_dir, USE_TORCH="1")
    assert use_torch == "1"
