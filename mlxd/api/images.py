"""Image parts of a request: where each image comes from, its bytes within the limits, and the
decoded picture, scaled down to what the model looks at.

Three sources: ``data:`` URLs (base64 PNG, JPEG, WebP, GIF's first frame), always; local files
(``file://`` URLs or absolute paths) only under ``--allow-image-files DIR`` and only inside DIR;
``http(s)`` URLs only with ``--allow-image-urls`` (no network is assumed), within
``--max-image-bytes`` and ``--image-url-timeout``. Every refusal is a 400 whose ``param`` is the
part (``messages[i].content[j]``) and whose message names the limit and the value.

A decompression bomb (a small file that decodes to billions of pixels) is refused from its
header: ``Image.open`` reads only the header, and the pixel count is checked before ``load``
(``Image.MAX_IMAGE_PIXELS`` is off: this check replaces PIL's, which only warns up to 2x).
PIL is imported when an image arrives (the vision extra brings it), never at start.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxd.transport.errors import bad_request

FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif"}  # PIL format -> subtype
DATA_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif"}
DETAILS = ("auto", "low", "high")
LOW_DETAIL_SIDE = 512  # pixels: OpenAI's "low" detail sees the image at 512 x 512
URL_CHUNK_BYTES = 64 * 1024  # read size for remote images (the deadline is checked per chunk)


@dataclass(frozen=True)
class ImageLimits:
    """The server's image limits (config: --max-images-per-request and friends)."""

    max_images: int = 8
    max_bytes: int = 20 * 1024**2
    max_pixels: int = 6000 * 6000
    files_dir: str | None = None  # None: local paths are refused
    urls: bool = False  # fetch http(s) URLs
    url_timeout: float = 10.0  # seconds for a whole remote image


@dataclass(frozen=True)
class ImageRef:
    """One image part as the request gave it."""

    where: str  # the part, e.g. "messages[0].content[1]"
    url: str  # data:, file://, an absolute path, or http(s)://
    detail: str = "auto"


@dataclass(frozen=True)
class Picture:
    data: bytes  # the encoded bytes (hashed for the prompt cache)
    image: Any  # PIL.Image.Image, RGB, scaled down


# ----- parts of each API -----


def chat_part(part: dict, where: str) -> ImageRef:
    """OpenAI chat: ``{"type": "image_url", "image_url": {"url", "detail"}}``."""
    value = part.get("image_url")
    if set(part) - {"type", "image_url"} or not isinstance(value, dict):
        raise bad_request(
            f'\'{where}\' must be {{"type": "image_url", "image_url": {{"url": ..., "detail": ...}}}}',
            where,
        )
    for key in value:
        if key not in ("url", "detail"):
            raise bad_request(
                f"Unrecognized image_url field: {key}",
                f"{where}.image_url.{key}",
                "unknown_parameter",
            )
    return _ref(value.get("url"), value.get("detail"), where, f"{where}.image_url")


def anthropic_block(block: dict, where: str) -> ImageRef:
    """Anthropic messages: ``{"type": "image", "source": {"type": "base64", "media_type",
    "data"}}`` (or ``{"type": "url", "url"}``). The hook /v1/messages calls per image block."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise bad_request(f"'{where}.source' must be an object", f"{where}.source")
    if source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise bad_request(
                f"'{where}.source' needs 'media_type' and 'data' strings", f"{where}.source"
            )
        return _ref(f"data:{media};base64,{data}", None, where, f"{where}.source")
    if source.get("type") == "url":
        return _ref(source.get("url"), None, where, f"{where}.source")
    raise bad_request(f"'{where}.source.type' must be 'base64' or 'url'", f"{where}.source.type")


def responses_part(part: dict, where: str) -> ImageRef:
    """OpenAI Responses: ``{"type": "input_image", "image_url": str, "detail"}``. The hook
    /v1/responses calls per input_image part."""
    return _ref(part.get("image_url"), part.get("detail"), where, where)


def _ref(url: Any, detail: Any, where: str, field: str) -> ImageRef:
    if not isinstance(url, str) or not url:
        raise bad_request(f"'{field}.url' must be a non-empty string", f"{field}.url")
    if detail is not None and detail not in DETAILS:
        raise bad_request(
            f"'{field}.detail' must be one of {', '.join(DETAILS)}, got {detail!r}",
            f"{field}.detail",
        )
    return ImageRef(where, url, detail or "auto")


def check_count(refs: list[ImageRef], limits: ImageLimits) -> None:
    if len(refs) > limits.max_images:
        extra = refs[limits.max_images]
        raise bad_request(
            f"{len(refs)} images in one request, more than --max-images-per-request "
            f"({limits.max_images})",
            extra.where,
            "too_many_images",
        )


# ----- bytes -----


def fetch(ref: ImageRef, limits: ImageLimits) -> bytes:
    """The image's encoded bytes, within ``limits`` (call off the event loop)."""
    url = ref.url
    if url[:5].lower() == "data:":
        return _data_url(url, ref.where, limits)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "file" or url.startswith("/"):
        return _local_file(url, ref.where, limits)
    if scheme in ("http", "https"):
        return _remote(url, ref.where, limits)
    raise bad_request(
        f"unsupported image URL (scheme {scheme!r}); send a data: URL with base64 image bytes",
        ref.where,
        "invalid_image_url",
    )


def _too_big(size: int, where: str, limits: ImageLimits):
    return bad_request(
        f"the image is {size} bytes, more than --max-image-bytes ({limits.max_bytes})",
        where,
        "image_too_large",
    )


def _data_url(url: str, where: str, limits: ImageLimits) -> bytes:
    head, comma, payload = url.partition(",")
    params = head[5:].lower().split(";")
    if not comma or "base64" not in params[1:]:
        raise bad_request(
            "a data: image URL must be 'data:image/TYPE;base64,DATA'", where, "invalid_image_url"
        )
    if params[0] and params[0] not in DATA_TYPES:
        raise bad_request(
            f"image type {params[0]!r} is not supported (PNG, JPEG, WebP or GIF)",
            where,
            "invalid_image",
        )
    if len(payload) // 4 * 3 > limits.max_bytes + 3:  # judged before decoding anything
        raise _too_big(len(payload) // 4 * 3, where, limits)
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(
            "the image's base64 data is not valid base64", where, "invalid_image"
        ) from None
    if len(data) > limits.max_bytes:
        raise _too_big(len(data), where, limits)
    return data


def _local_file(url: str, where: str, limits: ImageLimits) -> bytes:
    if limits.files_dir is None:
        raise bad_request(
            "local image files are off; start mlxd with --allow-image-files DIR to allow them",
            where,
            "image_files_disabled",
        )
    raw = urllib.parse.unquote(urllib.parse.urlsplit(url).path) if url.startswith("file:") else url
    root = Path(limits.files_dir).resolve()
    try:
        path = Path(raw).resolve(strict=True)  # symlinks followed: the target must be inside
    except OSError:
        raise bad_request(f"no such image file: {raw}", where, "invalid_image_url") from None
    if not path.is_relative_to(root) or not path.is_file():
        raise bad_request(
            f"image file {raw} is not inside --allow-image-files ({root})",
            where,
            "image_file_not_allowed",
        )
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise _too_big(size, where, limits)
    return path.read_bytes()[: limits.max_bytes + 1]


def _remote(url: str, where: str, limits: ImageLimits) -> bytes:
    if not limits.urls:
        raise bad_request(
            "remote image URLs are off; send the image as a data: URL, or start mlxd with "
            "--allow-image-urls",
            where,
            "image_urls_disabled",
        )
    deadline = time.monotonic() + limits.url_timeout
    try:
        with urllib.request.urlopen(url, timeout=limits.url_timeout) as resp:  # noqa: S310
            if urllib.parse.urlsplit(resp.geturl()).scheme not in ("http", "https"):
                raise bad_request(
                    "the image URL redirected off http(s)", where, "invalid_image_url"
                )
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limits.max_bytes:
                raise _too_big(int(length), where, limits)
            data = bytearray()
            while chunk := resp.read(URL_CHUNK_BYTES):
                data += chunk
                if len(data) > limits.max_bytes:
                    raise _too_big(len(data), where, limits)
                if time.monotonic() > deadline:
                    raise TimeoutError
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket
        raise bad_request(
            f"could not fetch the image: HTTP {exc.code}", where, "invalid_image_url"
        ) from None
    except TimeoutError:
        raise bad_request(
            f"the image did not arrive within --image-url-timeout ({limits.url_timeout:g}s)",
            where,
            "image_url_timeout",
        ) from None
    except OSError as exc:  # URLError, HTTPError, connection refused, DNS
        raise bad_request(f"could not fetch the image: {exc}", where, "invalid_image_url") from None
    return bytes(data)


# ----- pixels -----


def decode(data: bytes, ref: ImageRef, limits: ImageLimits, side: int) -> Any:
    """A PIL RGB image no larger than the model needs; bombs refused from the header."""
    from PIL import Image

    # PIL's own bomb check only warns between its limit and twice it (and a warning cannot be
    # caught per thread); ours below refuses at --max-image-pixels from the same header.
    Image.MAX_IMAGE_PIXELS = None
    where = ref.where
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except (OSError, SyntaxError, ValueError):  # UnidentifiedImageError is an OSError
        raise bad_request(
            "the data is not an image (PNG, JPEG, WebP or GIF)", where, "invalid_image"
        ) from None
    if img.format not in FORMATS:
        raise bad_request(
            f"image format {img.format} is not supported (PNG, JPEG, WebP or GIF)",
            where,
            "invalid_image",
        )
    width, height = img.size
    if width * height > limits.max_pixels:
        raise _too_many_pixels((width, height), where, limits)
    target = min(side, LOW_DETAIL_SIDE) if ref.detail == "low" else side
    if img.format == "JPEG":  # decode at a reduced scale when the image is far larger
        img.draft("RGB", (target, target))
    try:
        img.seek(0)  # GIF: the first frame
        img.load()
        rgb = img.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError):
        raise bad_request(
            f"the {img.format} image could not be decoded (truncated or corrupt)",
            where,
            "invalid_image",
        ) from None
    return _scale_down(rgb, target)


def _too_many_pixels(size: tuple[int, int], where: str, limits: ImageLimits):
    return bad_request(
        f"the image has {size[0]} x {size[1]} = {size[0] * size[1]} pixels, more than "
        f"--max-image-pixels ({limits.max_pixels})",
        where,
        "image_too_many_pixels",
    )


def _scale_down(img: Any, target: int) -> Any:
    """Scale so the shorter side is ``target`` when it is longer: the processor would shrink it
    anyway, and a smaller image costs less to resize, normalize and hold."""
    from PIL import Image

    width, height = img.size
    short = min(width, height)
    if short <= target:
        return img
    scale = target / short
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC)


def load(ref: ImageRef, limits: ImageLimits, side: int) -> Picture:
    data = fetch(ref, limits)
    return Picture(data, decode(data, ref, limits, side))
