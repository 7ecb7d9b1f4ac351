"""Reference servers the bench installs for itself, never project dependencies.

vllm-mlx (PyPI; an MLX server with continuous batching, a prefix cache and KV quantization) pulls
fastapi, uvicorn, mlx-vlm, mlx-embeddings, gradio and more, so it lives in its own virtual
environment, bench/.venv-vllm-mlx, made on first use with pip (MLX pinned to the version the
project runs, CPU wheel on Linux). It is run with its continuous batching on.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

VLLM_MLX = "vllm-mlx==0.6.0"  # the version measured in issue 15
VENV = Path(__file__).resolve().parent / ".venv-vllm-mlx"
INSTALL_TIMEOUT_S = 1800
SERVED_NAME = "bench"  # vllm-mlx requires a "model" field that names what it serves


def vllm_mlx_executable(mlx_version: str, log) -> Path:
    """The ``vllm-mlx`` command of the bench's own venv, installing it the first time; raises
    RuntimeError saying why it cannot be had (no registry on a GPU machine, say)."""
    exe = VENV / "bin" / "vllm-mlx"
    if exe.exists():
        return exe
    mlx = f"mlx[cpu]=={mlx_version}" if platform.system() == "Linux" else f"mlx=={mlx_version}"
    log(f"installing {VLLM_MLX} into {VENV} (once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        done = subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", VLLM_MLX, mlx],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"cannot make {VENV}: {exc}") from None
    if done.returncode != 0 or not exe.exists():
        raise RuntimeError(f"pip install {VLLM_MLX} failed: {done.stderr.strip()[-500:]}")
    return exe


def vllm_mlx_command(
    exe: Path, model_dir: Path, host: str, port: int, extra: list[str]
) -> list[str]:
    return [
        str(exe),
        "serve",
        str(model_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--continuous-batching",
        "--served-model-name",
        SERVED_NAME,
        *extra,
    ]
