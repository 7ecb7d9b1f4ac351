"""Pipeline parallelism over two ranks (MLX's launcher, ``ring`` on 127.0.0.1) computes the
logits one process computes, also for a model whose weights mix dtypes as a GGUF export's do
(float16 projections and embedding, float32 norms: the hidden state turns float32 after the
first norm). Each rank adds zeros for the stages it does not own; those zeros must be of the
owner's dtype, or the sum reads a buffer of the wrong size (SmolLM2's logits were NaN)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
from pathlib import Path

import mlx.core as mx
import pytest

from group import launch_env, ring_launch
from tinymodel import build_tiny_model

SCRIPT = Path(__file__).with_name("pipeline_logits.py")
# Two ranks import MLX and run six tokens: seconds. Mismatched sums hang instead of failing.
RUN_TIMEOUT_S = 90


def mixed_dtypes(path: Path) -> Path:
    """The tiny model with float16 weights and float32 norms, as mlxd's GGUF export writes."""
    file = path / "model.safetensors"
    weights = mx.load(str(file))
    mixed = {
        k: v if "norm" in k or v.dtype != mx.float32 else v.astype(mx.float16)
        for k, v in weights.items()
    }
    assert any(v.dtype == mx.float16 for v in mixed.values())
    mx.save_safetensors(str(file), mixed, metadata={"format": "mlx"})
    return path


def run_group(model: Path, weights: str, out: Path) -> dict:
    command = ring_launch(2, str(SCRIPT), str(model), weights, str(out))
    # A session of its own, so that a hang takes the ranks down with the launcher (killing
    # the launcher alone left them spinning in a collective).
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=launch_env(),
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the ranks hung: {output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("quantize_bits", [None, 4])
def test_pipeline_logits_match_one_process_with_mixed_dtypes(tmp_path, quantize_bits):
    model = mixed_dtypes(build_tiny_model(tmp_path / "mixed", quantize_bits=quantize_bits))
    result = run_group(model, "quantized" if quantize_bits else "dense", tmp_path / "out.json")
    assert result["dtype"] == "mlx.core.float32"  # the norms made the hidden state float32
    assert not any(math.isnan(x) for x in result["got"])
    assert result["got"] == result["want"]  # adding zeros is exact: bit for bit
