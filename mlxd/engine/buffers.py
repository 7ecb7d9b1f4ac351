"""MLX's buffer cache through a batch step on CUDA.

mlx-lm's ``BatchGenerator`` returns MLX's buffer cache to the driver after every prefill chunk
(``mx.clear_cache()``), so on CUDA the next step's large allocations (KV caches growing by 256
tokens, a group of sequences joining the batch) go back to the driver. While a step runs there,
``kept()`` turns that call into nothing; the engine still returns the cache every
``CLEAR_CACHE_EVERY`` steps (running.py). ``keep_cuda_pool`` keeps what MLX frees in the
driver's pool rather than handing it back to the driver.
"""

from __future__ import annotations

import contextlib
import ctypes

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


# CUmemPool_attribute (CUDA driver API, cuda.h): bytes the pool keeps when a stream synchronizes.
CU_MEMPOOL_ATTR_RELEASE_THRESHOLD = 4
KEEP_ALL = 2**64 - 1


def keep_cuda_pool() -> int:
    """Let each CUDA device's default memory pool keep the memory freed into it; returns how
    many pools now do (0 where there is no CUDA driver).

    MLX allocates with ``cudaMallocAsync`` from the default pool, whose release threshold is 0:
    at every synchronization the memory freed into it goes back to the driver, and the next
    allocation of a size MLX's own cache does not hold maps it again. A batch whose row count
    changes (a join, a finish) allocates its whole KV cache anew: on an H200 (8B, 35 rows of
    ~1800 tokens) the step after a finish took 70-80 ms against 33, once 4.5 s. PyTorch's CUDA
    allocator keeps its memory the same way. The driver API (libcuda) reaches the same pools
    whichever CUDA runtime MLX was built with."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    kept = 0
    for index in range(count.value):
        device, pool = ctypes.c_int(0), ctypes.c_void_p()
        value = ctypes.c_uint64(KEEP_ALL)
        if (
            cuda.cuDeviceGet(ctypes.byref(device), index) == 0
            and cuda.cuDeviceGetDefaultMemPool(ctypes.byref(pool), device) == 0
            and cuda.cuMemPoolSetAttribute(
                pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, ctypes.byref(value)
            )
            == 0
        ):
            kept += 1
    return kept
