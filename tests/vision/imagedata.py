"""Image bytes for the vision tests: real images, a corrupt one, a truncated PNG, a pixel bomb."""

from __future__ import annotations

import base64
import io
import struct
import zlib


def encode(img, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def solid(color, size=(64, 64), fmt: str = "PNG") -> bytes:
    from PIL import Image

    return encode(Image.new("RGB", size, color), fmt)


def noise(seed: int, size=(100, 80), fmt: str = "PNG") -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype("uint8")
    return encode(Image.fromarray(pixels), fmt)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def truncated_png() -> bytes:
    whole = noise(3, (100, 100))
    return whole[: len(whole) // 2]


def pixel_bomb(side: int = 100_000) -> bytes:
    """A valid PNG header claiming side x side pixels, with a few bytes of data: a
    decompression bomb as its header tells it (nothing past the header is ever read)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    data = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def chat(url: str, text: str = "What is this?", **extra) -> dict:
    """A chat body with one user turn: ``text`` then one image part."""
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    return {"messages": [{"role": "user", "content": content}], **extra}
