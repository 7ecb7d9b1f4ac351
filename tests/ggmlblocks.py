"""ggml K-quant (and IQ4_NL) blocks written by hand: gguf-py reads them but cannot write them.

``random_blocks`` fills every byte at random but the float16 scale fields (valid, small numbers):
every bit pattern of codes and sub-scales a reader can meet. ``encode`` turns float weights into
blocks with a plain min/max quantizer (llama.cpp searches for better scales; the layout, which is
what a reader must get right, is the same): weights as a real file would hold them, for models.
Layouts: ggml-common.h; each decoder in mlxd/models/gguf/quants.py is the inverse of one here.
"""

from __future__ import annotations

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

QK_K = 256
# byte offsets of the float16 fields (d, dmin) in each block
F16_FIELDS = {
    Q.Q4_0: [0],
    Q.Q4_1: [0, 2],
    Q.Q5_0: [0],
    Q.Q5_1: [0, 2],
    Q.Q8_0: [0],
    Q.IQ4_NL: [0],
    Q.Q2_K: [80, 82],
    Q.Q3_K: [108],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
}


def random_blocks(qtype: Q, rows: int, cols: int, seed: int = 0, scale: float = 1e-2):
    """uint8 (rows, bytes per row): random bytes, with float16 fields drawn from N(0, scale)."""
    rng = np.random.default_rng(seed)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for at in F16_FIELDS[qtype]:
        d = (rng.standard_normal((rows, cols // block, 1)) * scale).astype(np.float16)
        raw[:, :, at : at + 2] = d.view(np.uint8)
    return raw.reshape(rows, -1)


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / b, 0)


def _super_scale(sub: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 super-scale d (n, 1) and the integer sub-scales ~ sub / d in [-top, top]."""
    d = _f16(np.abs(sub).max(1, keepdims=True) / top)
    return d, np.clip(np.rint(_div(sub, d)), -top, top)


def _codes(w, scale, offset, lo: int, hi: int) -> np.ndarray:
    """round((w + offset) / scale) per group, clipped: (n, groups, size) -> same, as int."""
    return np.clip(np.rint(_div(w + offset[..., None], scale[..., None])), lo, hi).astype(np.int16)


def _pack_k4_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The 12 bytes get_scale_min_k4 reads 8 six-bit scales and mins from."""
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    return np.concatenate(
        [
            (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6),
            (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6),
            (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4),
        ],
        axis=1,
    )


def _nibbles(codes: np.ndarray, run: int) -> np.ndarray:
    """(n, 2 * run * r) codes -> (n, run * r) bytes: per pair of runs, low then high nibbles."""
    n = codes.shape[0]
    pairs = codes.reshape(n, -1, 2, run).astype(np.uint8)
    return (pairs[:, :, 0] & 0x0F | (pairs[:, :, 1] << 4)).reshape(n, -1)


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8).reshape(x.shape[0], 2)


def _extreme(g: np.ndarray) -> np.ndarray:
    """The weight of largest magnitude in each group, sign kept."""
    return np.take_along_axis(g, np.abs(g).argmax(-1)[..., None], -1)[..., 0]


def _asymmetric(w: np.ndarray, group: int, levels: int, top: int):
    """Min/max affine codes with integer sub-scales and sub-mins under float16 d and dmin."""
    n = w.shape[0]
    g = w.reshape(n, -1, group)
    m = -np.minimum(g.min(-1), 0)
    d, sc = _super_scale((g.max(-1) + m) / levels, top)
    dmin, mq = _super_scale(m, top)
    codes = _codes(g, d * sc, dmin * mq, 0, levels)
    return codes.reshape(n, -1), d, sc, dmin, mq


def _q2_k(w):
    n = w.shape[0]
    codes, d, sc, dmin, mq = _asymmetric(w, 16, 3, 15)
    planes = (
        codes.reshape(n, 2, 4, 32).astype(np.uint8)
        << (np.arange(4, dtype=np.uint8) * 2)[None, None, :, None]
    )
    qs = np.bitwise_or.reduce(planes, axis=2).reshape(n, 64)
    scales = (sc.astype(np.uint8) | (mq.astype(np.uint8) << 4)).reshape(n, 16)
    return np.concatenate([scales, qs, _f16_bytes(d), _f16_bytes(dmin)], axis=1)


def _q3_k(w):
    n = w.shape[0]
    g = w.reshape(n, 16, 16)
    d, sc = _super_scale(-_extreme(g) / 4, 31)  # the largest |w| lands on code -4
    codes = (_codes(g, d * sc, np.zeros_like(sc), -4, 3) + 4).reshape(n, 2, 4, 32).astype(np.uint8)
    shifts = (np.arange(4, dtype=np.uint8) * 2)[None, None, :, None]
    qs = np.bitwise_or.reduce((codes & 3) << shifts, axis=2).reshape(n, 64)
    high = (codes >> 2).reshape(n, 8, 32) << np.arange(8, dtype=np.uint8)[None, :, None]
    hmask = np.bitwise_or.reduce(high, axis=1)
    u = (sc + 32).astype(np.uint8)  # 6-bit: low nibbles in bytes 0-7, top 2 bits in 8-11
    lo4 = (u[:, :8] & 0x0F) | ((u[:, 8:] & 0x0F) << 4)
    hi2 = np.bitwise_or.reduce(
        (u >> 4).reshape(n, 4, 4) << (np.arange(4, dtype=np.uint8) * 2)[None, :, None], axis=1
    )
    return np.concatenate([hmask, qs, lo4, hi2, _f16_bytes(d)], axis=1)


def _q45_k(w, bits: int):
    n = w.shape[0]
    codes, d, sc, dmin, mq = _asymmetric(w, 32, (1 << bits) - 1, 63)
    head = [_f16_bytes(d), _f16_bytes(dmin), _pack_k4_scales(sc, mq)]
    if bits == 5:
        high = (codes.reshape(n, 8, 32) >> 4).astype(np.uint8)
        head.append(np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8)[None, :, None], 1))
    return np.concatenate([*head, _nibbles(codes, 32)], axis=1)


def _q6_k(w):
    n = w.shape[0]
    g = w.reshape(n, 16, 16)
    d, sc = _super_scale(-_extreme(g) / 32, 127)  # the largest |w| lands on code -32
    codes = (_codes(g, d * sc, np.zeros_like(sc), -32, 31) + 32).astype(np.uint8)
    quarters = codes.reshape(n, 2, 4, 32)  # half, k, l: ql nibble k // 2 of ql[32 (k % 2) + l]
    ql = (quarters[:, :, :2] & 0x0F) | ((quarters[:, :, 2:] & 0x0F) << 4)
    qh = np.bitwise_or.reduce(
        (quarters >> 4) << (np.arange(4, dtype=np.uint8) * 2)[None, None, :, None], axis=2
    )
    scales = sc.astype(np.int8).view(np.uint8)
    return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), scales, _f16_bytes(d)], axis=1)


IQ4_NL_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113])


def _iq4_nl(w):
    """float16 d per 32 weights (the largest |w| on level -127), nearest of the 16 levels."""
    n = w.shape[0]
    g = w.reshape(n, 32)
    d = _f16(-_extreme(g)[:, None] / 127)
    idx = np.abs(_div(g, d)[..., None] - IQ4_NL_LEVELS).argmin(-1).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _nibbles(idx, 16)], axis=1)


ENCODERS = {
    Q.Q2_K: _q2_k,
    Q.Q3_K: _q3_k,
    Q.Q4_K: lambda w: _q45_k(w, 4),
    Q.Q5_K: lambda w: _q45_k(w, 5),
    Q.Q6_K: _q6_k,
    Q.IQ4_NL: _iq4_nl,
}


def encode(w: np.ndarray, qtype: Q) -> np.ndarray:
    """float32 (rows, cols) -> uint8 (rows, bytes per row); gguf-py's quantizer where it has one."""
    if qtype not in ENCODERS:
        return gguf.quants.quantize(w.astype(np.float32), qtype)
    rows, cols = w.shape
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    blocks = ENCODERS[qtype](w.astype(np.float32).reshape(-1, block))
    return np.ascontiguousarray(blocks, dtype=np.uint8).reshape(rows, -1)
