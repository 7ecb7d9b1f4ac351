"""GGUF quantized tensors -> MLX affine-quantized weights (groups of 32), and how far each weight
moved on the way.

MLX's affine quantization stores ``code * scale + bias`` per group of 32, 64 or 128 weights, with
float16 scales and biases here. ggml's formats with 32-weight groups keep their codes:

- Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and IQ4_NL have float16 scales and offsets already: exact;
- Q4_K and Q5_K compute each group's scale and minimum as float16 x 6-bit integer in float32;
  rounding those two numbers to float16 is the only change (~7e-4 of the weights' RMS).

Q2_K, Q3_K and Q6_K scale groups of 16, which MLX cannot (32 is its smallest group), so those
tensors are re-quantized from their exact values, min-max per 32 weights, at the narrowest width
whose added error stays under a quarter of the format's own (so the total grows by ~3% at most;
measured on Gaussian weights): 4 bits for Q2_K (6e-2 against its own 0.3), 5 for Q3_K (4e-2
against 0.15), 8 for Q6_K (5e-3 against 2e-2; 6 bits would double its error, at the price of
9 instead of 6.6 bits a weight).

The error is measured against the exact ggml values (``Affine.values``) on up to
``ERROR_SAMPLE_WEIGHTS`` weights a tensor (evenly spaced whole rows; all rows of smaller tensors).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from mlxd.models.gguf.header import UnsupportedModelError, ggml_type_name
from mlxd.models.gguf.quants import BLOCK_FORMATS, Affine, decode

MLX_GROUP = 32  # MLX's smallest affine group, and ggml's legacy block size
CHUNK_WEIGHTS = 1 << 22  # rows converted together: 16 MiB of float32 temporaries at most
ERROR_SAMPLE_WEIGHTS = 1 << 18  # weights per tensor the error is measured on (~64 rows)

# ggml type id -> MLX bits. The codes must fit where they are kept (see the module docstring).
MLX_BITS = {
    2: 4,  # Q4_0
    3: 4,  # Q4_1
    6: 5,  # Q5_0
    7: 5,  # Q5_1
    8: 8,  # Q8_0
    20: 8,  # IQ4_NL: levels -127..113, exact as 8-bit codes (a 4-bit grid would bend them)
    12: 4,  # Q4_K
    13: 5,  # Q5_K
    10: 4,  # Q2_K, re-quantized
    11: 5,  # Q3_K, re-quantized
    14: 8,  # Q6_K, re-quantized
}


@dataclass(frozen=True)
class Packed:
    """One tensor in MLX's quantized layout (numpy, ready for ``mx.array``)."""

    weight: np.ndarray  # uint32 (rows, cols * bits / 32)
    scales: np.ndarray  # float16 (rows, cols / 32)
    biases: np.ndarray  # float16 (rows, cols / 32)
    bits: int


@dataclass(frozen=True)
class TensorError:
    """The MLX weights against the exact ggml values, over the measured weights."""

    sq_err: float
    sq_ref: float
    max_abs: float
    count: int

    @property
    def rel_rms(self) -> float:
        return float(np.sqrt(self.sq_err / self.sq_ref)) if self.sq_ref > 0 else 0.0


@dataclass(frozen=True)
class TypeReport:
    """Every tensor of one ggml type: what it became and how far it moved."""

    ggml_type: str
    tensors: int
    bits: int
    requantized: bool
    rel_rms: float  # over all measured weights of the type
    worst_rel_rms: float  # the worst tensor's
    max_abs: float

    def as_json(self) -> dict:
        return {
            "ggml_type": self.ggml_type,
            "tensors": self.tensors,
            "mlx_bits": self.bits,
            "mlx_group_size": MLX_GROUP,
            "requantized": self.requantized,
            "rel_rms_error": float(f"{self.rel_rms:.3g}"),
            "worst_rel_rms_error": float(f"{self.worst_rel_rms:.3g}"),
            "max_abs_error": float(f"{self.max_abs:.3g}"),
        }

    def line(self) -> str:
        how = "re-quantized" if self.requantized else "codes kept"
        if self.max_abs == 0:
            err = "exact"
        else:
            err = (
                f"relative RMS error {self.rel_rms:.2e} (worst tensor {self.worst_rel_rms:.2e}), "
                f"max |error| {self.max_abs:.2e}"
            )
        return f"{self.ggml_type}: {self.tensors} tensors -> MLX {self.bits}-bit ({how}): {err}"


# Formats whose float16 fields MLX stores unchanged (the offset ``-zero * d`` is exact: ``zero`` is
# a power of two): their MLX weights equal the exact values, so there is nothing to measure.
EXACT = {2, 3, 6, 7, 8, 20}


def is_requantized(ggml_type: int) -> bool:
    return BLOCK_FORMATS[ggml_type].group != MLX_GROUP


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """MLX's layout: each row a little-endian bit stream of ``bits``-bit codes, read as uint32."""
    n, k = codes.shape
    if bits == 8:
        out = codes
    elif bits == 4:
        out = codes[:, 0::2] | (codes[:, 1::2] << 4)
    else:  # 8 codes fill exactly ``bits`` bytes of a little-endian uint64
        eights = codes.reshape(n, k // 8, 8)
        words = np.zeros((n, k // 8), np.uint64)
        for i in range(8):
            words |= eights[..., i].astype(np.uint64) << np.uint64(i * bits)
        out = words.view(np.uint8).reshape(n, k // 8, 8)[..., :bits]
    return np.ascontiguousarray(out).reshape(n, -1).view(np.uint32)


def requantize(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Min-max affine codes per 32 weights; codes picked against the float16-rounded scale and
    bias, so the rounding costs nothing extra."""
    n, k = values.shape
    groups = values.reshape(n, k // MLX_GROUP, MLX_GROUP)
    lo, hi = groups.min(-1), groups.max(-1)
    levels = (1 << bits) - 1
    with np.errstate(over="ignore"):  # to_mlx refuses what overflows
        scales = ((hi - lo) / levels).astype(np.float16)
        biases = lo.astype(np.float16)
    s = scales.astype(np.float32)[..., None]
    with np.errstate(divide="ignore"):
        inv = np.where(s > 0, 1 / s, 0).astype(np.float32)
    work = groups - biases.astype(np.float32)[..., None]
    work *= inv
    np.rint(work, out=work)
    np.clip(work, 0, levels, out=work)
    return work.astype(np.uint8).reshape(n, k), scales, biases


def _mlx_form(affine: Affine, ggml_type: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, float16 scales, float16 biases) for MLX."""
    bits = MLX_BITS[ggml_type]
    if is_requantized(ggml_type):
        return requantize(affine.values(), bits)
    with np.errstate(over="ignore"):  # to_mlx refuses what overflows
        return affine.codes, affine.scales.astype(np.float16), affine.biases().astype(np.float16)


def _measure(exact: np.ndarray, codes, scales, biases) -> TensorError:
    n, k = codes.shape
    got = codes.reshape(n, k // MLX_GROUP, MLX_GROUP).astype(np.float32)
    got = got * scales.astype(np.float32)[..., None] + biases.astype(np.float32)[..., None]
    err = got.reshape(n, k) - exact
    return TensorError(
        float(np.square(err, dtype=np.float64).sum()),
        float(np.square(exact, dtype=np.float64).sum()),
        float(np.abs(err).max()) if err.size else 0.0,
        err.size,
    )


def _sample_rows(rows: int, cols: int) -> np.ndarray:
    take = max(1, min(rows, ERROR_SAMPLE_WEIGHTS // cols))
    return np.unique(np.linspace(0, rows - 1, take).round().astype(np.int64))


def to_mlx(raw: np.ndarray, ggml_type: int, name: str) -> tuple[Packed, TensorError]:
    """Rows of ggml blocks, uint8 (rows, bytes per row) -> MLX quantized weight, and its error."""
    fmt = BLOCK_FORMATS[ggml_type]
    rows, cols = raw.shape[0], raw.shape[1] // fmt.nbytes * fmt.elems
    bits = MLX_BITS[ggml_type]
    weight = np.empty((rows, cols * bits // 32), np.uint32)
    scales = np.empty((rows, cols // MLX_GROUP), np.float16)
    biases = np.empty_like(scales)
    sample, errors = _sample_rows(rows, cols), []
    step = max(1, CHUNK_WEIGHTS // cols)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        affine = decode(raw[start:stop], ggml_type)
        codes, s, b = _mlx_form(affine, ggml_type)
        if not (np.isfinite(s).all() and np.isfinite(b).all()):
            raise UnsupportedModelError(
                f"tensor {name} ({ggml_type_name(ggml_type)}) has scales beyond float16's range"
            )
        weight[start:stop], scales[start:stop], biases[start:stop] = pack(codes, bits), s, b
        picked = sample[(sample >= start) & (sample < stop)] - start
        if ggml_type in EXACT:
            errors.append(TensorError(0.0, 0.0, 0.0, 0))
        elif picked.size:
            exact = affine.take_rows(picked).values()
            errors.append(_measure(exact, codes[picked], s[picked], b[picked]))
    return Packed(weight, scales, biases, bits), _combine(errors)


def _combine(errors: Iterable[TensorError]) -> TensorError:
    errors = list(errors)
    return TensorError(
        sum(e.sq_err for e in errors),
        sum(e.sq_ref for e in errors),
        max((e.max_abs for e in errors), default=0.0),
        sum(e.count for e in errors),
    )


def summarize(measured: Iterable[tuple[int, TensorError]]) -> list[TypeReport]:
    """One report per ggml type, from (ggml type, error) per quantized tensor."""
    by_type: dict[int, list[TensorError]] = {}
    for ggml_type, err in measured:
        by_type.setdefault(ggml_type, []).append(err)
    reports = []
    for ggml_type, errs in sorted(by_type.items()):
        total = _combine(errs)
        reports.append(
            TypeReport(
                ggml_type_name(ggml_type),
                len(errs),
                MLX_BITS[ggml_type],
                is_requantized(ggml_type),
                total.rel_rms,
                max(e.rel_rms for e in errs),
                total.max_abs,
            )
        )
    return reports
