"""ggml's block quantization formats, read exactly, with numpy, vectorised over blocks.

Every format here stores affine groups: ``w = code * scale + offset`` for a run of weights (32
for Q4_0..Q8_0, IQ4_NL, Q4_K and Q5_K; 16 for Q2_K, Q3_K and Q6_K), with the scale and offset
built from float16 fields and small integer sub-scales. ``decode`` unpacks blocks to that form
(codes, and per-group float32 scales and offsets); ``Affine.values`` multiplies it out.

The arithmetic follows ggml-quants.c's ``dequantize_row_*`` (and gguf-py's ``dequantize``, which
the tests compare against bit for bit, signed zeros included): sub-scales are multiplied into
float32 first, then one multiply (and one add) per weight. For MLX, ``(code - zero) * scale``
becomes ``code * scale + (-zero * scale)``: the same value, exactly (every product fits
float32's 24-bit significand, and every ``zero`` is a power of two).

Block layouts: ggml-common.h (``block_q4_0`` ... ``block_q6_K``); QK_K = 256 weights per K-block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

QK_K = 256  # weights per K-quant super-block

# llama.cpp's kvalues_iq4nl: IQ4_NL's 16 levels (a non-linear 4-bit code book).
IQ4_NL_LEVELS = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int16
)
IQ4_NL_OFFSET = 128  # the levels + 128 are 1..241: exact 8-bit codes


@dataclass(frozen=True)
class Affine:
    """Weights as ``(codes - zero) * scales`` (symmetric formats) or ``codes * scales + offsets``
    (formats with a minimum), per group of ``group`` consecutive weights."""

    codes: np.ndarray  # uint8 (n, k)
    scales: np.ndarray  # float32 (n, k // group)
    offsets: np.ndarray | None  # float32 (n, k // group), or None for a symmetric format
    zero: int  # the code of weight 0 in a symmetric format
    group: int

    def biases(self) -> np.ndarray:
        """The offsets in MLX's ``codes * scales + biases`` form."""
        return self.offsets if self.offsets is not None else self.scales * -self.zero

    def take_rows(self, rows: np.ndarray) -> Affine:
        offsets = None if self.offsets is None else self.offsets[rows]
        return Affine(self.codes[rows], self.scales[rows], offsets, self.zero, self.group)

    def values(self) -> np.ndarray:
        """float32 (n, k), the way ggml's dequantize_row_* computes them (signed zeros too)."""
        n, k = self.codes.shape
        out = self.codes.reshape(n, k // self.group, self.group).astype(np.float32)
        if self.offsets is None:
            out -= self.zero  # exact: small integers
            out *= self.scales[..., None]
        else:
            out *= self.scales[..., None]
            out += self.offsets[..., None]
        return out.reshape(n, k)


@dataclass(frozen=True)
class BlockFormat:
    elems: int  # weights per block
    nbytes: int  # bytes per block
    group: int  # weights per affine group
    code_bits: int  # the widest code it stores
    decode: Callable[[np.ndarray], Affine]  # (n_blocks, nbytes) uint8 -> Affine over n_blocks


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 field at byte ``at`` of each block, as float32 (n, 1)."""
    return np.ascontiguousarray(blocks[:, at : at + 2]).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, run: int) -> np.ndarray:
    """ggml's 4-bit packing: each run of ``run`` bytes holds ``run`` weights in its low nibbles,
    then the next ``run`` weights in its high nibbles."""
    n = qs.shape[0]
    runs = qs.reshape(n, -1, run)
    out = np.empty((n, runs.shape[1], 2, run), np.uint8)
    np.bitwise_and(runs, 0x0F, out=out[:, :, 0])
    np.right_shift(runs, 4, out=out[:, :, 1])
    return out.reshape(n, -1)


def _bit_planes(bits: np.ndarray, count: int, width: int = 1) -> np.ndarray:
    """(n, k) bytes -> (n, count, k): field i of ``width`` bits of every byte, for i < count."""
    shifts = (np.arange(count, dtype=np.uint8) * width)[None, :, None]
    return (bits[:, None, :] >> shifts) & ((1 << width) - 1)


def _affine(codes, scales, offsets, group: int, zero: int = 0) -> Affine:
    n = codes.shape[0]
    return Affine(
        np.ascontiguousarray(codes.reshape(n, -1), dtype=np.uint8),
        np.ascontiguousarray(scales.reshape(n, -1), dtype=np.float32),
        None if offsets is None else np.ascontiguousarray(offsets.reshape(n, -1), dtype=np.float32),
        zero,
        group,
    )


# -- 32-weight formats ---------------------------------------------------------------------------


def _q4_0(b: np.ndarray) -> Affine:  # d, qs[16]: d * (q - 8)
    return _affine(_nibbles(b[:, 2:], 16), _f16(b, 0), None, 32, zero=8)


def _q4_1(b: np.ndarray) -> Affine:  # d, m, qs[16]: d * q + m
    return _affine(_nibbles(b[:, 4:], 16), _f16(b, 0), _f16(b, 2), 32)


def _q5_high(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1's fifth bits: a little-endian uint32, bit j for weight j."""
    return np.unpackbits(qh, axis=1, bitorder="little") << 4


def _q5_0(b: np.ndarray) -> Affine:  # d, qh[4], qs[16]: d * (q - 16)
    return _affine(_nibbles(b[:, 6:], 16) | _q5_high(b[:, 2:6]), _f16(b, 0), None, 32, zero=16)


def _q5_1(b: np.ndarray) -> Affine:  # d, m, qh[4], qs[16]: d * q + m
    return _affine(_nibbles(b[:, 8:], 16) | _q5_high(b[:, 4:8]), _f16(b, 0), _f16(b, 2), 32)


def _q8_0(b: np.ndarray) -> Affine:  # d, int8 qs[32]: d * q
    codes = (b[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return _affine(codes, _f16(b, 0), None, 32, zero=128)


def _iq4_nl(b: np.ndarray) -> Affine:  # d, qs[16]: d * levels[q]
    codes = IQ4_NL_LEVELS[_nibbles(b[:, 2:], 16)] + IQ4_NL_OFFSET
    return _affine(codes, _f16(b, 0), None, 32, zero=IQ4_NL_OFFSET)


# -- K-quants (256-weight super-blocks) ----------------------------------------------------------


def _k4_scales(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 8 six-bit (scale, min) pairs packed in 12 bytes (get_scale_min_k4)."""
    n = sc.shape[0]
    d, m, md = (x[:, 0] for x in np.split(sc.reshape(n, 3, 4), 3, axis=1))
    scales = np.concatenate([d & 63, (md & 0x0F) | ((d >> 2) & 0x30)], axis=1)
    mins = np.concatenate([m & 63, (md >> 4) | ((m >> 2) & 0x30)], axis=1)
    return scales.astype(np.float32), mins.astype(np.float32)


def _q2_k(b: np.ndarray) -> Affine:  # scales[16], qs[64], d, dmin: d*sc*q - dmin*m
    n = b.shape[0]
    sc, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b, 80), _f16(b, 82)
    codes = _bit_planes(qs.reshape(n * 2, 32), 4, 2)  # 2 halves x 4 shifts x 32
    return _affine(codes, d * (sc & 0x0F), -(dmin * (sc >> 4)), 16)


def _q3_k(b: np.ndarray) -> Affine:  # hmask[32], qs[64], scales[12], d: d*(s-32)*(q-4)
    n = b.shape[0]
    hmask, qs, sc = b[:, :32], b[:, 32:96], b[:, 96:108]
    d = _f16(b, 108)
    low = _bit_planes(qs.reshape(n * 2, 32), 4, 2).reshape(n, 8, 32)
    high = _bit_planes(hmask, 8)  # bit 4h+j of hmask[l] tops weight (half h, shift j, l)
    # 16 six-bit scales: low nibbles from bytes 0-7 (then their high nibbles), top two bits from
    # bytes 8-11, two bits per scale.
    lo4 = _bit_planes(sc[:, :8], 2, 4).reshape(n, 16)
    hi2 = _bit_planes(sc[:, 8:], 4, 2).reshape(n, 16)
    scale = d * ((lo4 | (hi2 << 4)).astype(np.int8) - np.int8(32)).astype(np.float32)
    return _affine(low | (high << 2), scale, None, 16, zero=4)


def _q4_k(b: np.ndarray) -> Affine:  # d, dmin, scales[12], qs[128]: d*sc*q - dmin*m
    scales, mins = _k4_scales(b[:, 4:16])
    return _affine(_nibbles(b[:, 16:], 32), _f16(b, 0) * scales, -(_f16(b, 2) * mins), 32)


def _q5_k(b: np.ndarray) -> Affine:  # d, dmin, scales[12], qh[32], qs[128]
    n = b.shape[0]
    scales, mins = _k4_scales(b[:, 4:16])
    high = _bit_planes(b[:, 16:48], 8).reshape(n, QK_K)  # bit s of qh[l]: weight l of group s
    codes = _nibbles(b[:, 48:], 32) | (high << 4)
    return _affine(codes, _f16(b, 0) * scales, -(_f16(b, 2) * mins), 32)


def _q6_k(b: np.ndarray) -> Affine:  # ql[128], qh[64], int8 scales[16], d: d*sc*(q-32)
    n = b.shape[0]
    ql, qh, sc = b[:, :128], b[:, 128:192], b[:, 192:208]
    d = _f16(b, 208)
    low = _nibbles(ql, 32).reshape(n, 2, 4, 32)  # per half: ql[0:32] lo, ql[32:64] lo, ... hi
    low = low[:, :, [0, 2, 1, 3]]  # weights 32k..32k+31 take ql[32(k%2)...] >> 4(k//2)
    high = _bit_planes(qh.reshape(n * 2, 32), 4, 2).reshape(n, 2, 4, 32)
    scale = d * sc.view(np.int8).astype(np.float32)
    return _affine(low | (high << 4), scale, None, 16, zero=32)


# ggml type id (ggml.h) -> block format
BLOCK_FORMATS: dict[int, BlockFormat] = {
    2: BlockFormat(32, 18, 32, 4, _q4_0),
    3: BlockFormat(32, 20, 32, 4, _q4_1),
    6: BlockFormat(32, 22, 32, 5, _q5_0),
    7: BlockFormat(32, 24, 32, 5, _q5_1),
    8: BlockFormat(32, 34, 32, 8, _q8_0),
    10: BlockFormat(QK_K, 84, 16, 2, _q2_k),
    11: BlockFormat(QK_K, 110, 16, 3, _q3_k),
    12: BlockFormat(QK_K, 144, 32, 4, _q4_k),
    13: BlockFormat(QK_K, 176, 32, 5, _q5_k),
    14: BlockFormat(QK_K, 210, 16, 6, _q6_k),
    20: BlockFormat(32, 18, 32, 8, _iq4_nl),
}


def decode(raw: np.ndarray, ggml_type: int) -> Affine:
    """Rows of packed blocks, uint8 (rows, bytes per row) -> Affine over (rows, weights per row)."""
    fmt = BLOCK_FORMATS[ggml_type]
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(-1, fmt.nbytes)
    a = fmt.decode(blocks)
    offsets = None if a.offsets is None else a.offsets.reshape(rows, -1)
    return Affine(a.codes.reshape(rows, -1), a.scales.reshape(rows, -1), offsets, a.zero, a.group)


def row_bytes(ggml_type: int, cols: int) -> int:
    fmt = BLOCK_FORMATS[ggml_type]
    return cols // fmt.elems * fmt.nbytes
