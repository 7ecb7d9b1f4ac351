"""PyTorch stays out of a serving process.

mlx-lm's tokenizers come from transformers, and where PyTorch is installed transformers imports
it on the way to a tokenizer (transformers 5.17 on the H200 machine's PyTorch image: through
torchvision, which its image and video utilities load; older ones through their generation code,
accelerate, scikit-learn): there ``import mlxd.service.run`` and a tokenizer took 10.7 s with
PyTorch and 4.3 s without (``python -X importtime``), at every start, for a server that never
runs a PyTorch model; an 8B model's second start went from 10.8 to 5.2 s.

So before mlx-lm is first imported, transformers is told PyTorch is not there: ``USE_TORCH=0``
(transformers 4 reads it; a value the user set wins) and, for transformers 5, which reads no
variable, its ``is_torch_available``, ``is_accelerate_available`` and ``is_torchvision_available``
answer False. Tokenizers work as they do on a machine without PyTorch (every test here runs that
way). ``MLXD_TORCH=1`` leaves transformers alone.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

OPT_OUT = "MLXD_TORCH"  # =1: let transformers import PyTorch as usual
# Each of these would import PyTorch: accelerate and torchvision do themselves (transformers 5.17
# loads torchvision.io while it loads a tokenizer, through its image and video utilities).
CHECKS = ("is_torch_available", "is_accelerate_available", "is_torchvision_available")


def _absent(*_args, **_kwargs) -> bool:
    return False


def keep_torch_out() -> bool:
    """Call before mlx-lm is first imported; True when transformers was told (False: opted
    out, PyTorch already imported, or no transformers)."""
    if os.environ.get(OPT_OUT) == "1" or "torch" in sys.modules:
        return False
    for name in ("USE_TORCH", "USE_TF", "USE_FLAX"):
        os.environ.setdefault(name, "0")
    try:
        from transformers.utils import import_utils  # light: no PyTorch behind it
    except Exception:  # noqa: BLE001 - no transformers, or one that fails here: leave it
        return False
    originals = {getattr(import_utils, name, None) for name in CHECKS} - {None}
    # Every transformers module imported so far that holds a check by name (transformers.utils
    # among them, which later imports read), replaced in its own namespace: an attribute lookup
    # on transformers' lazy modules imports whatever the name maps to (on the H200 image, a
    # vision model's module that needs PyTorch).
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith("transformers"):
            continue
        namespace = vars(module)
        for name in CHECKS:
            if namespace.get(name) in originals:
                namespace[name] = _absent
    log.debug("transformers told that PyTorch is absent (%s=1 to allow it)", OPT_OUT)
    return True
