"""Decode attention that reads the quantized KV cache as stored, for CUDA (--kv-bits).

MLX 0.32's CUDA backend has no quantized matmul for attention's shapes, so a quantized cache
(kvcache.py) could only hand attention its keys and values dequantized: every layer of every
decode step quantized the new token's keys and values, wrote six parts, dequantized the whole
buffer and then attention read that copy again. On an H200 (8B, 4-bit weights) that made
``--kv-bits 8`` decode at 0.86x / 0.68x / 0.52x the full-precision cache's tok/s at 1 / 32 / 64
streams.

Here a decode step's attention is computed straight from the packed codes, scales and biases
(``mx.fast.cuda_kernel``), plus the cache's full-precision *tail*: the last few decode tokens,
which the cache writes as they come (two writes a layer, as a full-precision cache) and
quantizes in one go every ``kvcache.TAIL`` tokens. Positions ``[0, nq)`` come from the codes,
``[nq, n)`` from the tail; a row's left padding is skipped, which is all the mask a batch's
decode step has.

The kernels themselves (their layout, ``supported`` shapes) are in kvkernels.py.

The engine ``allow``s it where it routes the model's attention (CUDA). The first decode step
for each head shape compiles the kernels and checks them against dequantize + attention on
random data (``check``); if compiling or the check fails, that step and every later one
dequantize (``reference``) and the log says why. Multi-token steps (prefill) always dequantize.
"""

from __future__ import annotations

import logging
from functools import cache

import mlx.core as mx

from mlxd.engine.kvkernels import Kernels, supported
from mlxd.engine.kvkernels import build as _build  # a module name: tests put stand-ins here

log = logging.getLogger(__name__)

WARPS = 8  # warps per block
MAX_HEADS_PER_BLOCK = 8  # query heads one block computes (registers: 2 x heads x D/32 floats)
TARGET_BLOCKS = 264  # blocks a step should have before it splits positions (H200: 132 SMs x 2)
MAX_SPLITS = 8
MIN_PAIRS = 4  # position pairs each warp walks at least: no split thinner than this
CHECK_TOLERANCE = 0.02  # max |fused - reference| / max |reference| on the check (bf16: ~0.004)


@cache
def heads_per_block(per_kv: int) -> int:
    """The largest divisor of the query heads per KV head that one block computes."""
    return max(d for d in range(1, min(per_kv, MAX_HEADS_PER_BLOCK) + 1) if per_kv % d == 0)


def splits_for(blocks: int, n: int) -> int:
    """Slices of the positions for a step of ``blocks`` unsplit blocks over ``n`` positions: a
    power of two (few distinct launch shapes), 1 once the blocks fill the GPU."""
    if blocks >= TARGET_BLOCKS:
        return 1
    want = min(MAX_SPLITS, -(-TARGET_BLOCKS // blocks), max(1, n // (2 * WARPS * MIN_PAIRS)))
    return 1 << (want.bit_length() - 1)


_constants: dict[tuple, mx.array] = {}


def _constant(values: tuple, dtype) -> mx.array:
    """A small array of these values, made once (and so moved to the device once)."""
    key = (values, dtype)
    made = _constants.get(key)
    if made is None:
        if len(_constants) >= 256:  # lengths and batch sizes come and go
            _constants.clear()
        made = _constants[key] = mx.array(values, dtype=dtype)
        mx.eval(made)
    return made


def attend(
    kernels: Kernels,
    queries: mx.array,
    keys,
    values,
    left_padding: mx.array,
    lengths: mx.array,
    n: int,
    scale: float,
    bits: int,
    group_size: int,
    tail: tuple[mx.array, mx.array] | None = None,
    nq: int | None = None,
    splits: int | None = None,
) -> mx.array:
    """One decode step's attention: ``queries`` (B, H, 1, D); ``keys`` and ``values`` the
    cache's whole (packed, scales, biases) buffers, (B, Hkv, capacity, ...), holding positions
    ``[0, nq)``; ``tail`` full-precision (keys, values), (B, Hkv, tail capacity, D), holding
    ``[nq, n)``; each row's first ``left_padding`` positions are padding and the other
    ``lengths`` (the cache's offset, on the device: n - left_padding) its tokens.

    Everything the kernels read is already on the device: the lengths are the cache's own
    array, and the few integers that change only at a flush or a new batch size (``meta``) and
    the scale are made once and kept (``_constant``). A small array made from Python each step
    costs a host-to-device transfer per layer, which at one stream was most of the call."""
    B, H, L, D = queries.shape
    kv_heads, capacity = keys[0].shape[1], keys[0].shape[2]
    if L != 1:
        raise ValueError("the fused quantized attention computes one query position")
    if tail is None:
        blank = _constant((0,), queries.dtype)
        tail, nq = (blank, blank), n
    assert nq is not None
    hb = heads_per_block(H // kv_heads)
    blocks = B * kv_heads * (H // kv_heads // hb)
    if splits is None:
        splits = splits_for(blocks, n)
    tail_capacity = tail[0].shape[2] if tail[0].ndim == 4 else 1
    meta = _constant((nq, H, kv_heads, capacity, tail_capacity, splits), mx.int32)
    if left_padding.dtype != mx.int32:
        left_padding = left_padding.astype(mx.int32)
    if lengths.dtype != mx.int32:
        lengths = lengths.astype(mx.int32)
    inputs = [
        queries,
        *keys,
        *values,
        *tail,
        left_padding,
        lengths,
        meta,
        _constant((scale,), mx.float32),
    ]
    template = [
        ("T", queries.dtype),
        ("BITS", bits),
        ("D", D),
        ("G", group_size),
        ("WARPS", WARPS),
        ("HB", hb),
    ]
    launch = {
        "grid": (blocks * splits * 32 * WARPS, 1, 1),
        "threadgroup": (32 * WARPS, 1, 1),
    }
    if splits == 1:
        (out,) = kernels.whole(  # type: ignore[operator]
            inputs=inputs,
            template=template,
            output_shapes=[(B, H, 1, D)],
            output_dtypes=[queries.dtype],
            **launch,
        )
        return out
    parts = kernels.split(  # type: ignore[operator]
        inputs=inputs,
        template=template,
        output_shapes=[(B, H, splits, D), (B, H, splits), (B, H, splits)],
        output_dtypes=[mx.float32] * 3,
        **launch,
    )
    (out,) = kernels.combine(  # type: ignore[operator]
        inputs=[*parts, _constant((splits,), mx.int32)],
        template=[("T", queries.dtype), ("D", D)],
        grid=(B * H * 32, 1, 1),
        threadgroup=(32, 1, 1),
        output_shapes=[(B, H, 1, D)],
        output_dtypes=[queries.dtype],
    )
    return out


def reference(queries, keys, values, left_padding, n, scale, bits, group_size, tail=None, nq=None):
    """The same with MLX's own ops: dequantize the first nq positions, append the tail's
    ``n - nq``, mask the padding."""
    from mlxd.engine.attention import plain_attention

    nq = n if nq is None else nq
    (kw, ks, kb), (vw, vs, vb) = keys, values
    k = mx.dequantize(kw, ks, kb, group_size=group_size, bits=bits)[..., :nq, :]
    v = mx.dequantize(vw, vs, vb, group_size=group_size, bits=bits)[..., :nq, :]
    if n > nq:
        assert tail is not None
        k = mx.concatenate([k.astype(tail[0].dtype), tail[0][..., : n - nq, :]], axis=2)
        v = mx.concatenate([v.astype(tail[1].dtype), tail[1][..., : n - nq, :]], axis=2)
    mask = (mx.arange(n)[None, :] >= left_padding[:, None])[:, None, None, :]
    return plain_attention(queries, k, v, scale, mask)


def check(kernels: Kernels, head_dim: int, bits: int, group_size: int, dtype, per_kv: int) -> float:
    """The largest difference between the kernels and ``reference`` on random data, relative to
    the largest output: two sequences (the second left-padded by 37), 2 KV heads with
    ``per_kv`` query heads each, 260 quantized positions and a tail of 31, with and without
    splitting the positions, and without a tail. Values the step must not read (padding, the
    codes from nq on, the tail past its filled length) are 8: reading any of them moves the
    output by far more than rounding."""
    mx.random.seed(0)
    B, kv_heads, capacity, nq, tail_capacity, n, pad = 2, 2, 320, 260, 40, 291, 37
    H = kv_heads * per_kv
    queries = mx.random.normal((B, H, 1, head_dim)).astype(dtype)
    position = mx.arange(capacity)[None, None, :, None]
    padded = (position < pad) & (mx.arange(B) == 1)[:, None, None, None]
    shape = (B, kv_heads, capacity, head_dim)
    raw_keys = mx.where(position >= nq, 8.0, mx.random.normal(shape))
    raw_values = mx.where((position >= nq) | padded, 8.0, mx.random.normal(shape))
    keys = mx.quantize(raw_keys.astype(dtype), group_size=group_size, bits=bits)
    values = mx.quantize(raw_values.astype(dtype), group_size=group_size, bits=bits)
    tail_shape = (B, kv_heads, tail_capacity, head_dim)
    beyond = mx.arange(tail_capacity)[None, None, :, None] >= n - nq
    tail = (
        mx.where(beyond, 8.0, mx.random.normal(tail_shape)).astype(dtype),
        mx.where(beyond, 8.0, mx.random.normal(tail_shape)).astype(dtype),
    )
    left_padding = mx.array([0, pad])
    scale = head_dim**-0.5
    worst = 0.0
    for with_tail, splits in ((True, 1), (True, 3), (False, 1), (False, 4)):
        length = n if with_tail else nq
        args = (queries, keys, values, left_padding, length, scale, bits, group_size)
        more = {"tail": tail, "nq": nq} if with_tail else {}
        lengths = length - left_padding
        got = attend(kernels, *args[:4], lengths, *args[4:], splits=splits, **more)  # type: ignore[arg-type]
        want = reference(*args, **more).astype(mx.float32)
        error = (mx.abs(got.astype(mx.float32) - want).max() / mx.abs(want).max()).item()
        assert isinstance(error, float)
        if error != error:  # NaN: no use looking further
            return error
        worst = max(worst, error)
    return worst


_allowed = False  # attention is routed through mlxd (attention.install): tuples reach decode
_kernels: Kernels | None = None
_checked: dict[tuple, bool] = {}  # (head width, bits, group, dtype, heads per KV head) -> ok
_refused: set[tuple] = set()  # (head width, bits, group): the kernels failed; caches dequantize


def allow(on: bool = True) -> None:
    """Let caches try the kernel: only where mlxd routes the model's attention (on CUDA)."""
    global _allowed, _kernels
    _allowed, _kernels = on, None
    _checked.clear()
    _refused.clear()


def usable(head_dim: int, bits: int, group_size: int) -> bool:
    """Whether a cache of these may hand a decode step its buffers as stored: allowed, on
    CUDA, a shape the kernel takes, and not refused by a failed check."""
    return (
        _allowed
        and (head_dim, bits, group_size) not in _refused
        and supported(head_dim, bits, group_size)
        and mx.cuda.is_available()
    )


def enable(head_dim: int, bits: int, group_size: int, dtype, per_kv: int) -> bool:
    """Compile and check the kernels for these heads; True if decode steps may use them. Any
    failure leaves the dequantizing path, with the reason in the log."""
    global _kernels
    try:
        kernels = _kernels or _build()
        error = check(kernels, head_dim, bits, group_size, dtype, per_kv)
    except Exception as exc:  # noqa: BLE001 - a JIT or launch failure: keep the safe path
        log.warning("kv cache: fused quantized attention unavailable (%s); dequantizing", exc)
        return False
    if not error <= CHECK_TOLERANCE:  # NaN fails too
        log.warning(
            "kv cache: fused quantized attention differs from dequantize + attention "
            "by %.3g on the check; dequantizing",
            error,
        )
        return False
    _kernels = kernels
    log.info(
        "kv cache: decode attention reads the %d-bit cache as stored (fused kernel, %s, "
        "%d query heads a KV head, check within %.1e)",
        bits,
        dtype,
        per_kv,
        error,
    )
    return True


def decode(queries: mx.array, cache, scale: float) -> mx.array:
    """A decode step over a quantized cache's buffers and tail: the checked kernels, or (their
    first use for these heads failed) dequantize + attention, after which the cache's later
    steps dequantize by themselves (``usable`` says no)."""
    assert cache.keys is not None
    head_dim, bits, group = queries.shape[-1], cache.kv_bits, cache.group_size
    per_kv = queries.shape[1] // cache.keys[0].shape[1]
    key = (head_dim, bits, group, queries.dtype, per_kv)
    if key not in _checked:
        _checked[key] = enable(head_dim, bits, group, queries.dtype, per_kv)
        if not _checked[key]:
            _refused.add((head_dim, bits, group))
    args = (queries, cache.keys, cache.values, cache.left_padding, cache._idx, scale, bits, group)
    tail = cache.tail()
    more = {"tail": tail, "nq": cache._idx - cache._tail} if tail is not None else {}
    if not _checked[key]:
        return reference(*args, **more)
    assert _kernels is not None
    return attend(_kernels, *args[:4], cache.offset, *args[4:], **more)
