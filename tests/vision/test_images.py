"""Image parts and their limits (mlxd/api/images.py): sources, decoding, refusals. PIL only."""

from __future__ import annotations

import http.server
import threading

import pytest

pytest.importorskip("PIL")

from imagedata import data_url, noise, pixel_bomb, solid, truncated_png  # noqa: E402

from mlxd.api import images  # noqa: E402
from mlxd.api.images import ImageLimits, ImageRef  # noqa: E402
from mlxd.api.messages import image_refs, messages  # noqa: E402
from mlxd.transport.errors import HttpError  # noqa: E402

WHERE = "messages[0].content[1]"


def load(url: str, limits: ImageLimits | None = None, side: int = 64, detail: str = "auto"):
    return images.load(ImageRef(WHERE, url, detail), limits or ImageLimits(), side)


def refused(url: str, limits: ImageLimits | None = None) -> HttpError:
    with pytest.raises(HttpError) as info:
        load(url, limits)
    err = info.value
    assert err.status == 400 and err.param == WHERE
    return err


@pytest.mark.parametrize(
    "fmt,mime",
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_each_format_decodes_to_rgb(fmt, mime):
    pic = load(data_url(solid((200, 10, 10), (40, 30), fmt), mime))
    assert pic.image.mode == "RGB" and pic.image.size == (40, 30)


def test_gif_first_frame():
    from imagedata import encode
    from PIL import Image

    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    pixel = load(data_url(data, "image/gif")).image.getpixel((5, 5))
    assert pixel[0] > 200 and pixel[2] < 50


def test_large_image_scaled_down_to_the_model_side():
    pic = load(data_url(noise(1, (400, 200))), side=64)
    assert pic.image.size == (128, 64)  # shorter side to 64, aspect kept
    low = load(data_url(noise(1, (2000, 1000))), side=1024, detail="low")
    assert min(low.image.size) == images.LOW_DETAIL_SIDE
    small = load(data_url(noise(1, (50, 40))), side=64)
    assert small.image.size == (50, 40)  # never scaled up


def test_corrupt_base64():
    err = refused("data:image/png;base64,@@not*base64@@")
    assert "base64" in err.message and err.code == "invalid_image"


def test_not_an_image():
    err = refused(data_url(b"hello, I am plain text, not a picture"))
    assert "not an image" in err.message


def test_truncated_png():
    err = refused(data_url(truncated_png()))
    assert "truncated or corrupt" in err.message


def test_pixel_bomb_refused_from_the_header():
    err = refused(data_url(pixel_bomb()), ImageLimits(max_pixels=1_000_000))
    assert "--max-image-pixels (1000000)" in err.message and err.code == "image_too_many_pixels"
    assert "100000 x 100000" in err.message
    # just past the limit (where PIL would only warn): our own check, with the size named
    err = refused(data_url(pixel_bomb(1001)), ImageLimits(max_pixels=1_000_000))
    assert "1001 x 1001 = 1002001 pixels" in err.message


def test_too_many_bytes():
    data = noise(2, (100, 100))
    err = refused(data_url(data), ImageLimits(max_bytes=1000))
    assert err.code == "image_too_large" and "--max-image-bytes (1000)" in err.message


def test_unsupported_type_and_scheme():
    assert "not supported" in refused("data:image/tiff;base64,AAAA").message
    assert refused("data:image/png,rawbytes").code == "invalid_image_url"
    assert "scheme 'ftp'" in refused("ftp://example.invalid/a.png").message


def test_local_files_only_inside_the_allowed_dir(tmp_path):
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    (allowed / "a.png").write_bytes(solid((0, 255, 0)))
    (other / "b.png").write_bytes(solid((0, 255, 0)))
    (allowed / "link.png").symlink_to(other / "b.png")
    assert refused(str(allowed / "a.png")).code == "image_files_disabled"
    limits = ImageLimits(files_dir=str(allowed))
    assert load(str(allowed / "a.png"), limits).image.size == (64, 64)
    assert load((allowed / "a.png").as_uri(), limits).image.size == (64, 64)
    for outside in (other / "b.png", allowed / "link.png", allowed / ".." / "other" / "b.png"):
        assert refused(str(outside), limits).code == "image_file_not_allowed"
    assert "no such image file" in refused(str(allowed / "missing.png"), limits).message
    assert refused(
        str(allowed / "a.png"), ImageLimits(files_dir=str(allowed), max_bytes=10)
    ).code == ("image_too_large")


@pytest.fixture
def image_host():
    """An HTTP server on 127.0.0.1 serving /small.png, /big.png and /slow.png."""
    small, big = solid((0, 0, 255)), noise(5, (300, 300))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = {"/small.png": small, "/big.png": big}.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_urls_only_when_allowed(image_host):
    assert refused(image_host + "/small.png").code == "image_urls_disabled"
    limits = ImageLimits(urls=True, max_bytes=20_000, url_timeout=5)
    assert load(image_host + "/small.png", limits).image.size == (64, 64)
    assert refused(image_host + "/big.png", limits).code == "image_too_large"
    assert refused(image_host + "/missing.png", limits).code == "invalid_image_url"


def test_chat_parts_parse_with_their_place():
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare "},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,AA", "detail": "low"},
                    },
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,BB"}},
                ],
            },
        ]
    }
    msgs = messages(body)
    refs = image_refs(msgs)
    assert [(r.where, r.detail) for r in refs] == [
        ("messages[1].content[1]", "low"),
        ("messages[1].content[2]", "auto"),
    ]
    assert msgs[0]["content"] == "Be brief."  # text-only content stays a string


@pytest.mark.parametrize(
    "part,param",
    [
        ({"type": "image_url", "image_url": "data:x"}, "messages[0].content[0]"),
        ({"type": "image_url", "image_url": {"url": 3}}, "messages[0].content[0].image_url.url"),
        (
            {"type": "image_url", "image_url": {"url": "x", "detail": "max"}},
            "messages[0].content[0].image_url.detail",
        ),
        (
            {"type": "image_url", "image_url": {"url": "x", "size": 1}},
            "messages[0].content[0].image_url.size",
        ),
        ({"type": "input_audio", "input_audio": {}}, "messages[0].content[0].type"),
    ],
)
def test_bad_parts_name_their_field(part, param):
    with pytest.raises(HttpError) as info:
        messages({"messages": [{"role": "user", "content": [part]}]})
    assert info.value.status == 400 and info.value.param == param


def test_too_many_images():
    refs = [ImageRef(f"messages[0].content[{i}]", "data:,") for i in range(3)]
    with pytest.raises(HttpError) as info:
        images.check_count(refs, ImageLimits(max_images=2))
    assert info.value.param == "messages[0].content[2]"
    assert "--max-images-per-request (2)" in info.value.message


def test_anthropic_and_responses_hooks():
    block = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"},
    }
    ref = images.anthropic_block(block, "messages[0].content[0]")
    assert ref.url == "data:image/png;base64,QUJD"
    part = {"type": "input_image", "image_url": "data:image/png;base64,QUJD", "detail": "high"}
    assert images.responses_part(part, "input[0].content[0]").detail == "high"
