"""MLX's buffer cache through a batch step on CUDA.

mlx-lm's ``BatchGenerator`` returns MLX's buffer cache to the driver after every prefill chunk
(``mx.clear_cache()``), so on CUDA the next step's large allocations (KV caches growing by 256
tokens, a group of sequences joining the batch) go back to the driver. While a step runs there,
``kept()`` turns that call into nothing; the engine still returns the cache every
``CLEAR_CACHE_EVERY`` steps (running.py).
"""

from __future__ import annotations

import contextlib

import mlx.core as mx


def _keep() -> None:
    """Stands in for ``mx.clear_cache`` while a batch step runs (``kept``)."""


@contextlib.contextmanager
def kept(active: bool):
    if not active:
        yield
        return
    original = mx.clear_cache
    mx.clear_cache = _keep
    try:
        yield
    finally:
        mx.clear_cache = original
