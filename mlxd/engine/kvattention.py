"""Decode attention that reads the quantized KV cache as stored, for CUDA (--kv-bits).

MLX 0.32's CUDA backend has no quantized matmul for attention's shapes, so a quantized cache
(kvcache.py) hands attention its keys and values dequantized: every layer of every decode step
quantizes the new token's keys and values, writes them, dequantizes the whole buffer and then
attention reads that copy again. On an H200 (8B, 4-bit weights) that made ``--kv-bits 8``
decode at 0.86x / 0.68x / 0.52x the full-precision cache's tok/s at 1 / 32 / 64 streams.

Here one kernel (``mx.fast.cuda_kernel``) computes a decode step's attention straight from the
packed codes, scales and biases: a block per (sequence, query head), its warps taking every
``WARPS``-th position with a running (online) softmax, each lane holding ``D / 32`` of the head's
dimensions (8-bit, 128 wide: one packed word a lane, so a warp reads a position's row in one
coalesced load), then the warps' partial results merged. Positions before the row's left
padding and from the cache's length on are skipped, which is all the mask a batch's decode step
has.

The engine ``allow``s it where it routes the model's attention (CUDA); a cache's first one-token
step then asks ``ready``, which compiles the kernel and checks it against dequantize + attention
on random data (``check``) once per head width, bits and dtype; if compiling or the check fails,
caches keep dequantizing and the log says why. Multi-token steps (prefill) and batches of fewer
than ``MIN_ROWS`` (sequence, KV head) pairs still dequantize.
"""

from __future__ import annotations

import logging

import mlx.core as mx

log = logging.getLogger(__name__)

WARPS = 4  # warps per block (sequence x query head)
# A step's (sequence, KV head) pairs below which caches keep dequantizing: the kernel's blocks
# (one per sequence and query head) walk their positions one warp-stride at a time, so a small
# batch leaves most of the GPU idle. H200, 8B (8 KV heads, 32 query heads), --kv-bits 8 against
# the full-precision cache: fused at every batch 0.66x at 1 stream and 0.63x at 64; dequantizing
# 0.74-0.86x at 1 and 0.52-0.57x at 64 (other calls, other hosts); one attention call at 64
# streams 0.29 ms fused against 0.56 ms (bench/kv_fused_check.py). 256 = 32 such streams.
MIN_ROWS = 256
CHECK_TOLERANCE = 0.02  # max |fused - reference| / max |reference| on the check (bf16: ~0.004)

_SOURCE = """
    constexpr int P = D / 32;             // dimensions per lane
    constexpr int PER_WORD = 32 / BITS;   // codes per packed word
    constexpr int WORDS = D * BITS / 32;  // packed words per position
    constexpr int GROUPS = D / G;         // scales (and biases) per position
    constexpr unsigned MASK = (1u << BITS) - 1u;
    const int n = meta[0], heads = meta[1], kv_heads = meta[2], capacity = meta[3];
    const int bh = blockIdx.x;            // sequence * heads + query head
    const int b = bh / heads;
    const int kv = (bh % heads) / (heads / kv_heads);
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = (lane * P) / G;         // a lane's P dimensions share one group
    const float scale = sc[0];
    const float NEG_INF = -__int_as_float(0x7f800000);  // MLX 0.32.4's header has no inf

    float qv[P];
    float qsum = 0.0f;
    for (int i = 0; i < P; ++i) {
        qv[i] = static_cast<float>(q[(size_t)bh * D + lane * P + i]) * scale;
        qsum += qv[i];
    }
    const size_t row0 = ((size_t)b * kv_heads + kv) * capacity;
    float m = NEG_INF, l = 0.0f;
    float acc[P];
    for (int i = 0; i < P; ++i) acc[i] = 0.0f;

    for (int t = lp[b] + warp; t < n; t += WARPS) {
        const size_t row = row0 + t;
        float dot = 0.0f;
        for (int i = 0; i < P; ++i) {
            const int e = lane * P + i;
            const uint32_t w = kw[row * WORDS + e / PER_WORD];
            dot += qv[i] * static_cast<float>((w >> ((e % PER_WORD) * BITS)) & MASK);
        }
        float s = static_cast<float>(ks[row * GROUPS + g]) * dot
                + static_cast<float>(kb[row * GROUPS + g]) * qsum;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        const float m_new = fmaxf(m, s);
        const float keep = __expf(m - m_new);
        const float p = __expf(s - m_new);
        l = l * keep + p;
        const float vscale = static_cast<float>(vs[row * GROUPS + g]);
        const float vbias = static_cast<float>(vb[row * GROUPS + g]);
        for (int i = 0; i < P; ++i) {
            const int e = lane * P + i;
            const uint32_t w = vw[row * WORDS + e / PER_WORD];
            const float v = vscale * static_cast<float>((w >> ((e % PER_WORD) * BITS)) & MASK) + vbias;
            acc[i] = acc[i] * keep + p * v;
        }
        m = m_new;
    }

    __shared__ float part_m[WARPS];
    __shared__ float part_l[WARPS];
    __shared__ float part_acc[WARPS][D];
    if (lane == 0) {
        part_m[warp] = m;
        part_l[warp] = l;
    }
    for (int i = 0; i < P; ++i) part_acc[warp][lane * P + i] = acc[i];
    __syncthreads();
    if (warp == 0) {
        float top = NEG_INF;
        for (int w = 0; w < WARPS; ++w) top = fmaxf(top, part_m[w]);
        float total = 0.0f;
        float o[P];
        for (int i = 0; i < P; ++i) o[i] = 0.0f;
        for (int w = 0; w < WARPS; ++w) {
            if (part_m[w] == NEG_INF) continue;  // a warp that had no position
            const float f = __expf(part_m[w] - top);
            total += part_l[w] * f;
            for (int i = 0; i < P; ++i) o[i] += part_acc[w][lane * P + i] * f;
        }
        for (int i = 0; i < P; ++i) {
            out[(size_t)bh * D + lane * P + i] = static_cast<T>(total > 0.0f ? o[i] / total : 0.0f);
        }
    }
"""

_kernel = None  # the compiled kernel once ``enable`` checked it


def supported(head_dim: int, bits: int, group_size: int) -> bool:
    """Shapes the kernel handles: heads 32..128 wide in steps of 32 lanes' worth of codes."""
    per_lane = head_dim // 32
    return (
        bits in (4, 8)
        and head_dim % 32 == 0
        and 1 <= per_lane <= 4
        and group_size % per_lane == 0
        and head_dim % group_size == 0
        and (head_dim * bits) % 32 == 0
    )


def _build():
    return mx.fast.cuda_kernel(
        name="mlxd_quantized_decode_attention",
        input_names=["q", "kw", "ks", "kb", "vw", "vs", "vb", "lp", "meta", "sc"],
        output_names=["out"],
        source=_SOURCE,
    )


def attend(
    kernel,
    queries: mx.array,
    keys,
    values,
    left_padding: mx.array,
    n: int,
    scale: float,
    bits: int,
    group_size: int,
) -> mx.array:
    """One decode step's attention: ``queries`` (B, H, 1, D); ``keys`` and ``values`` the
    cache's whole (packed, scales, biases) buffers, (B, Hkv, capacity, ...), of which the first
    ``n`` positions are filled and each row's first ``left_padding`` are padding."""
    B, H, L, D = queries.shape
    kv_heads, capacity = keys[0].shape[1], keys[0].shape[2]
    if L != 1:
        raise ValueError("the fused quantized attention computes one query position")
    meta = mx.array([n, H, kv_heads, capacity], dtype=mx.int32)
    (out,) = kernel(
        inputs=[
            queries,
            *keys,
            *values,
            left_padding.astype(mx.int32),
            meta,
            mx.array([scale], dtype=mx.float32),
        ],
        template=[
            ("T", queries.dtype),
            ("BITS", bits),
            ("D", D),
            ("G", group_size),
            ("WARPS", WARPS),
        ],
        grid=(B * H * 32 * WARPS, 1, 1),
        threadgroup=(32 * WARPS, 1, 1),
        output_shapes=[(B, H, 1, D)],
        output_dtypes=[queries.dtype],
    )
    return out


def reference(queries, keys, values, left_padding, n, scale, bits, group_size):
    """The same with MLX's own ops: dequantize the first n positions, mask the padding."""
    from mlxd.engine.attention import plain_attention

    (kw, ks, kb), (vw, vs, vb) = keys, values
    k = mx.dequantize(kw, ks, kb, group_size=group_size, bits=bits)[..., :n, :]
    v = mx.dequantize(vw, vs, vb, group_size=group_size, bits=bits)[..., :n, :]
    mask = (mx.arange(n)[None, :] >= left_padding[:, None])[:, None, None, :]
    return plain_attention(queries, k, v, scale, mask)


def check(kernel, head_dim: int, bits: int, group_size: int, dtype) -> float:
    """The largest difference between the kernel and ``reference`` on random data, relative to
    the largest output: two sequences (the second left-padded by 37), 4 query heads over 2 KV
    heads, a buffer longer than filled. Values the step must not read (padding, past the
    filled length) are 8: reading any of them moves the output by far more than rounding."""
    mx.random.seed(0)
    B, H, kv_heads, capacity, n, pad = 2, 4, 2, 320, 291, 37
    queries = mx.random.normal((B, H, 1, head_dim)).astype(dtype)
    position = mx.arange(capacity)[None, None, :, None]
    unread = (position >= n) | ((position < pad) & (mx.arange(B) == 1)[:, None, None, None])
    raw_values = mx.where(unread, 8.0, mx.random.normal((B, kv_heads, capacity, head_dim)))
    keys = mx.quantize(
        mx.random.normal((B, kv_heads, capacity, head_dim)).astype(dtype),
        group_size=group_size,
        bits=bits,
    )
    values = mx.quantize(raw_values.astype(dtype), group_size=group_size, bits=bits)
    left_padding = mx.array([0, pad])
    scale = head_dim**-0.5
    got = attend(kernel, queries, keys, values, left_padding, n, scale, bits, group_size)
    want = reference(queries, keys, values, left_padding, n, scale, bits, group_size)
    want = want.astype(mx.float32)
    error = mx.abs(got.astype(mx.float32) - want).max() / mx.abs(want).max()
    value = error.item()
    assert isinstance(value, float)
    return value


_allowed = False  # attention is routed through mlxd (attention.install): tuples reach decode
_tried: dict[tuple, bool] = {}  # (head width, bits, group, dtype) -> the kernel checked out


def allow(on: bool = True) -> None:
    """Let caches try the kernel: only where mlxd routes the model's attention (on CUDA)."""
    global _allowed, _kernel
    _allowed, _kernel = on, None
    _tried.clear()


def ready(head_dim: int, bits: int, group_size: int, dtype) -> bool:
    """Whether a decode step over a cache of these may read its codes: the first time for each
    shape the kernel is compiled and checked (``enable``); the answer is kept."""
    if not _allowed:
        return False
    key = (head_dim, bits, group_size, str(dtype))
    if key not in _tried:
        _tried[key] = enable(head_dim, bits, group_size, dtype)
    return _tried[key]


def enable(head_dim: int, bits: int, group_size: int, dtype) -> bool:
    """Compile and check the kernel for these heads (CUDA only); True if decode steps may use
    it. Any failure leaves the dequantizing path, with the reason in the log."""
    global _kernel
    if not mx.cuda.is_available():
        return False
    if not supported(head_dim, bits, group_size):
        log.info(
            "kv cache: no fused attention for %d-wide heads at %d bits (groups of %d); "
            "dequantizing",
            head_dim,
            bits,
            group_size,
        )
        return False
    try:
        kernel = _build()
        error = check(kernel, head_dim, bits, group_size, dtype)
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
    _kernel = kernel
    log.info(
        "kv cache: decode attention reads the %d-bit cache as stored (fused kernel, %s, "
        "check within %.1e)",
        bits,
        dtype,
        error,
    )
    return True


def enabled() -> bool:
    return _kernel is not None


def decode(queries: mx.array, cache, scale: float) -> mx.array:
    """``attend`` with the enabled kernel over a quantized cache's buffers."""
    assert _kernel is not None and cache.keys is not None
    return attend(
        _kernel,
        queries,
        cache.keys,
        cache.values,
        cache.left_padding,
        cache._idx,
        scale,
        cache.kv_bits,
        cache.group_size,
    )
