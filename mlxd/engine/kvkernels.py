"""The CUDA kernels behind kvattention: one decode step's attention read straight from a
quantized KV cache's packed codes, scales and biases and its full-precision tail.

A block per (sequence, KV head, slice of positions) computes every query head that shares that
KV head (up to kvattention's ``MAX_HEADS_PER_BLOCK``), so each position's codes are read and
dequantized once for the group (an 8B llama: 4 query heads a KV head). Its ``WARPS`` warps (a
template argument) take two positions at a time each, with a running (online) softmax in base 2;
each lane holds ``D / 32`` of a head's dimensions (8-bit, 128 wide: one packed word a lane, a
warp reads a position's row in one coalesced load). The warps' partial results are merged in
shared memory. When the batch has too few (sequence, KV head) pairs to fill the GPU, the
positions are split over up to kvattention's ``MAX_SPLITS`` blocks (as flash-decoding) and a
second small kernel combines the slices.

``_BODY`` is the shared body; ``whole`` writes the output, ``split`` each slice's (output, max,
sum), and ``combine`` merges the slices. kvattention plans the launches (heads a block, slices),
checks the kernels and falls back when they fail.
"""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx

_BODY = """
    constexpr int P = D / 32;             // dimensions per lane
    constexpr int PER_WORD = 32 / BITS;   // codes per packed word
    constexpr int WORDS = D * BITS / 32;  // packed words per position
    constexpr int GROUPS = D / G;         // scales (and biases) per position
    constexpr unsigned MASK = (1u << BITS) - 1u;
    constexpr float LOW = -3.0e38f;       // finite: no inf - inf anywhere
    const int nq = meta[0], heads = meta[1], kv_heads = meta[2];
    const int capacity = meta[3], tail_capacity = meta[4], splits = meta[5];
    const int per_kv = heads / kv_heads;
    const int chunks = per_kv / HB;
    int blk = blockIdx.x;                 // ((b * kv_heads + kv) * chunks + c) * splits + s
    const int s = blk % splits;
    blk /= splits;
    const int c = blk % chunks;
    blk /= chunks;
    const int kv = blk % kv_heads;
    const int b = blk / kv_heads;
    const int h0 = kv * per_kv + c * HB;  // this block's first query head
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = (lane * P) / G;         // a lane's P dimensions share one group and one word
    const int word = (lane * P) / PER_WORD;
    const int shift0 = ((lane * P) % PER_WORD) * BITS;
    const float qscale = sc[0] * 1.4426950408889634f;  // scores in base 2

    float qv[HB][P];
    float m[HB], l[HB], acc[HB][P];
    #pragma unroll
    for (int r = 0; r < HB; ++r) {
        m[r] = LOW;
        l[r] = 0.0f;
        #pragma unroll
        for (int i = 0; i < P; ++i) {
            qv[r][i] = static_cast<float>(q[((size_t)b * heads + h0 + r) * D + lane * P + i]) * qscale;
            acc[r][i] = 0.0f;
        }
    }
    const int first = lp[b];
    const int n = first + len[b];         // the cache's offset: the row's length
    const int span = (n - first + splits - 1) / splits;
    const int lo = first + s * span;
    const int hi = min(n, lo + span);
    const size_t qrow0 = ((size_t)b * kv_heads + kv) * capacity;
    const size_t trow0 = ((size_t)b * kv_heads + kv) * tail_capacity;

    for (int t = lo + 2 * warp; t < hi; t += 2 * WARPS) {
        const bool second = t + 1 < hi;
        float kf[2][P], vf[2][P];
        #pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int tt = second ? t + j : t;  // no second position: read the first again
            if (tt < nq) {
                const size_t row = qrow0 + tt;
                const float ksc = static_cast<float>(ks[row * GROUPS + g]);
                const float kbi = static_cast<float>(kb[row * GROUPS + g]);
                const float vsc = static_cast<float>(vs[row * GROUPS + g]);
                const float vbi = static_cast<float>(vb[row * GROUPS + g]);
                const uint32_t wk = kw[row * WORDS + word];
                const uint32_t wv = vw[row * WORDS + word];
                #pragma unroll
                for (int i = 0; i < P; ++i) {
                    kf[j][i] = ksc * static_cast<float>((wk >> (shift0 + i * BITS)) & MASK) + kbi;
                    vf[j][i] = vsc * static_cast<float>((wv >> (shift0 + i * BITS)) & MASK) + vbi;
                }
            } else {
                const size_t row = trow0 + (tt - nq);
                #pragma unroll
                for (int i = 0; i < P; ++i) {
                    kf[j][i] = static_cast<float>(kt[row * D + lane * P + i]);
                    vf[j][i] = static_cast<float>(vt[row * D + lane * P + i]);
                }
            }
        }
        float sj[2][HB];
        #pragma unroll
        for (int j = 0; j < 2; ++j) {
            #pragma unroll
            for (int r = 0; r < HB; ++r) {
                float dot = 0.0f;
                #pragma unroll
                for (int i = 0; i < P; ++i) dot += qv[r][i] * kf[j][i];
                sj[j][r] = dot;
            }
        }
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            #pragma unroll
            for (int j = 0; j < 2; ++j) {
                #pragma unroll
                for (int r = 0; r < HB; ++r) sj[j][r] += __shfl_xor_sync(0xffffffffu, sj[j][r], o);
            }
        }
        #pragma unroll
        for (int r = 0; r < HB; ++r) {
            const float s1 = second ? sj[1][r] : LOW;
            const float top = fmaxf(m[r], fmaxf(sj[0][r], s1));
            const float keep = exp2f(m[r] - top);
            const float p0 = exp2f(sj[0][r] - top);
            const float p1 = second ? exp2f(s1 - top) : 0.0f;
            l[r] = l[r] * keep + p0 + p1;
            #pragma unroll
            for (int i = 0; i < P; ++i) acc[r][i] = acc[r][i] * keep + p0 * vf[0][i] + p1 * vf[1][i];
            m[r] = top;
        }
    }

    __shared__ float part_m[WARPS][HB];
    __shared__ float part_l[WARPS][HB];
    __shared__ float part_acc[WARPS][HB][D];
    #pragma unroll
    for (int r = 0; r < HB; ++r) {
        if (lane == 0) {
            part_m[warp][r] = m[r];
            part_l[warp][r] = l[r];
        }
        #pragma unroll
        for (int i = 0; i < P; ++i) part_acc[warp][r][lane * P + i] = acc[r][i];
    }
    __syncthreads();
    for (int k = threadIdx.x; k < HB * D; k += 32 * WARPS) {
        const int r = k / D, d = k % D;
        float top = LOW;
        for (int w = 0; w < WARPS; ++w) top = fmaxf(top, part_m[w][r]);
        float total = 0.0f, o = 0.0f;
        for (int w = 0; w < WARPS; ++w) {
            const float f = exp2f(part_m[w][r] - top);  // 0 for a warp that had no position
            total += part_l[w][r] * f;
            o += part_acc[w][r][d] * f;
        }
        const size_t row = (size_t)b * heads + h0 + r;
        EPILOGUE
    }
"""

_WHOLE = "out[row * D + d] = static_cast<T>(total > 0.0f ? o / total : 0.0f);"
_PART = """const size_t part = row * splits + s;
        part_out[part * D + d] = o;
        if (d == 0) {
            part_max[part] = top;
            part_sum[part] = total;
        }"""

_COMBINE = """
    constexpr int P = D / 32;
    constexpr float LOW = -3.0e38f;
    const int splits = meta[0];
    const size_t row = blockIdx.x;        // sequence * heads + head: one warp each
    const int lane = threadIdx.x;
    float top = LOW;
    for (int s = 0; s < splits; ++s) top = fmaxf(top, part_max[row * splits + s]);
    float total = 0.0f;
    float o[P];
    #pragma unroll
    for (int i = 0; i < P; ++i) o[i] = 0.0f;
    for (int s = 0; s < splits; ++s) {
        const size_t part = row * splits + s;
        const float f = exp2f(part_max[part] - top);
        total += part_sum[part] * f;
        #pragma unroll
        for (int i = 0; i < P; ++i) o[i] += part_out[part * D + lane * P + i] * f;
    }
    #pragma unroll
    for (int i = 0; i < P; ++i) {
        out[row * D + lane * P + i] = static_cast<T>(total > 0.0f ? o[i] / total : 0.0f);
    }
"""

_INPUTS = ["q", "kw", "ks", "kb", "vw", "vs", "vb", "kt", "vt", "lp", "len", "meta", "sc"]


class Kernels(NamedTuple):
    whole: object  # one block per (sequence, KV head, head chunk): writes the output
    split: object  # several blocks per row: writes each slice's (output, max, sum)
    combine: object  # merges the slices


def supported(head_dim: int, bits: int, group_size: int) -> bool:
    """Shapes the kernel handles: heads 32..128 wide, a lane's dimensions in one group and one
    packed word."""
    per_lane = head_dim // 32
    return (
        bits in (4, 8)
        and head_dim % 32 == 0
        and per_lane in (1, 2, 4)
        and group_size % per_lane == 0
        and head_dim % group_size == 0
    )


def build() -> Kernels:
    """Define the three kernels (MLX compiles each on its first launch per template)."""
    fast = mx.fast
    return Kernels(
        whole=fast.cuda_kernel(
            name="mlxd_quantized_decode_attention",
            input_names=_INPUTS,
            output_names=["out"],
            source=_BODY.replace("EPILOGUE", _WHOLE),
        ),
        split=fast.cuda_kernel(
            name="mlxd_quantized_decode_attention_split",
            input_names=_INPUTS,
            output_names=["part_out", "part_max", "part_sum"],
            source=_BODY.replace("EPILOGUE", _PART),
        ),
        combine=fast.cuda_kernel(
            name="mlxd_quantized_decode_attention_combine",
            input_names=["part_out", "part_max", "part_sum", "meta"],
            output_names=["out"],
            source=_COMBINE,
        ),
    )
