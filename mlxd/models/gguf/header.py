"""The GGUF header: metadata and the tensor directory, read with the stdlib, no tensor data touched.

``mx.load`` hides the tensor types (K-quants come back as float16 without a word, BF16 narrowed to
float16, unknown types dropped), so we read the header ourselves first (0.07 s for SmolLM2's 49k
tokens and merges) and refuse what we cannot load faithfully before loading anything.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path


class UnsupportedModelError(ValueError):
    """The file is valid GGUF, but holds something we cannot serve faithfully (the message says
    what)."""


# ggml.h `enum ggml_type`, for naming what a file holds.
GGML_TYPE_NAMES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    15: "Q8_K",
    16: "IQ2_XXS",
    17: "IQ2_XS",
    18: "IQ3_XXS",
    19: "IQ1_S",
    20: "IQ4_NL",
    21: "IQ3_S",
    22: "IQ2_S",
    23: "IQ4_XS",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    29: "IQ1_M",
    30: "BF16",
    34: "TQ1_0",
    35: "TQ2_0",
    39: "MXFP4",
}

# GGUF metadata value types (ggml's docs/gguf.md) -> struct code, for the fixed-size ones.
GGUF_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
GGUF_STRING, GGUF_ARRAY = 8, 9
GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = {2, 3}  # v1 used 32-bit lengths; llama.cpp has written v3 since 2023
GGUF_DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # MLX order (outermost first), the reverse of GGUF's ne[]
    offset: int  # absolute, in bytes from the start of the file


@dataclass(frozen=True)
class GgufHeader:
    metadata: dict
    tensors: dict[str, TensorInfo]


def ggml_type_name(ggml_type: int) -> str:
    return GGML_TYPE_NAMES.get(ggml_type, f"ggml type {ggml_type}")


class _Cursor:
    """Little-endian reads from a buffer, advancing an offset."""

    def __init__(self, buf) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def string(self) -> str:
        (n,) = self.unpack("Q")
        self.pos += n
        return bytes(self.buf[self.pos - n : self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype == GGUF_STRING:
            return self.string()
        if vtype != GGUF_ARRAY:
            return self.unpack(GGUF_SCALARS[vtype])[0]
        etype, n = self.unpack("IQ")
        if etype == GGUF_STRING:
            return [self.string() for _ in range(n)]
        if etype not in GGUF_SCALARS:
            raise UnsupportedModelError(f"GGUF metadata array of value type {etype}")
        return list(self.unpack(f"{n}{GGUF_SCALARS[etype]}"))


def read_header(path: Path) -> GgufHeader:
    """Metadata and tensor directory of a GGUF file, without touching the tensor data."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf)
        try:
            return _parse_header(cur, path)
        except struct.error:
            raise UnsupportedModelError(
                f"{path.name}: GGUF header cut short at byte {cur.pos}"
            ) from None


def _parse_header(cur: _Cursor, path: Path) -> GgufHeader:
    magic, version, n_tensors, n_keys = cur.unpack("4sIQQ")
    if magic != GGUF_MAGIC:
        raise UnsupportedModelError(f"{path.name} is not a GGUF file (magic {magic!r})")
    if version not in GGUF_VERSIONS:
        raise UnsupportedModelError(f"GGUF version {version} (supported: 2, 3)")
    metadata = {}
    for _ in range(n_keys):
        key = cur.string()
        metadata[key] = cur.value(cur.unpack("I")[0])
    raw = []
    for _ in range(n_tensors):
        name = cur.string()
        (n_dims,) = cur.unpack("I")
        dims = cur.unpack(f"{n_dims}Q")
        ggml_type, offset = cur.unpack("IQ")
        raw.append((name, ggml_type, tuple(reversed(dims)), offset))
    align = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    data_start = -(-cur.pos // align) * align  # tensor data starts at the next aligned byte
    return GgufHeader(metadata, {n: TensorInfo(n, t, s, data_start + o) for n, t, s, o in raw})
