"""The fake's image rules for data URIs: headers read without Pillow, rules named, SDK agreed."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
import pytest
from helpers import run_python
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shortwan import ImageToVideo, InvalidRequestError, image_input
from shortwan.testing import FakeShortAPI
from shortwan.testing._images import read_header
from shortwan.testing._rules import check_create

MODEL = "alibaba/wan-2.7/image-to-video"


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def uri(data: bytes, media: str = "png") -> str:
    return f"data:image/{media};base64,{base64.b64encode(data).decode()}"


def png_header(width: int, height: int, colour: int = 2) -> bytes:
    """A PNG signature and IHDR alone: enough for the header reader, no pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def fake_problems(data: bytes, media: str = "png") -> list[str]:
    """Return what the fake says of a create whose first frame is ``data``."""
    problems, _ = check_create({"model": MODEL, "args": {"first_frame_image": uri(data, media)}})
    return problems


def sdk_accepts(data: bytes) -> bool:
    """Return whether the SDK's local-file check accepts ``data``."""
    try:
        image_input(data)
    except InvalidRequestError:
        return False
    return True


def palette_png(transparent_index: int) -> bytes:
    """A palette PNG filled with index 0, whose tRNS chunk makes ``transparent_index`` clear."""
    image = Image.new("P", (320, 240), 0)
    image.putpalette([200, 80, 40] * 2 + [0] * 762)
    return encode(image, "PNG", transparency=transparent_index)


RGB = Image.new("RGB", (320, 240), (200, 80, 40))
OPAQUE_RGBA = encode(Image.new("RGBA", (320, 240), (10, 20, 30, 255)), "PNG")
CLEAR_RGBA = encode(Image.new("RGBA", (320, 240), (10, 20, 30, 0)), "PNG")
HALF_CLEAR = Image.new("RGBA", (320, 240), (10, 20, 30, 255))
HALF_CLEAR.paste((0, 0, 0, 0), (0, 0, 10, 10))


class TestHeaderReader:
    @settings(max_examples=60, deadline=None)
    @given(
        fmt=st.sampled_from(["JPEG", "PNG", "BMP", "WEBP", "WEBP-lossless"]),
        mode=st.sampled_from(["RGB", "RGBA", "L", "LA", "P"]),
        width=st.integers(1, 700),
        height=st.integers(1, 700),
    )
    def test_format_and_sides_match_pillow(
        self, fmt: str, mode: str, width: int, height: int
    ) -> None:
        """Format, sides and PNG alpha read from the header are what Pillow reads."""
        if fmt == "JPEG" and mode not in ("RGB", "L"):
            mode = "RGB"
        if fmt.startswith("WEBP") and mode not in ("RGB", "RGBA"):
            mode = "RGBA"
        if fmt == "BMP" and mode == "LA":
            mode = "L"
        name, _, variant = fmt.partition("-")
        data = encode(Image.new(mode, (width, height)), name, lossless=variant == "lossless")
        header = read_header(data)
        assert not isinstance(header, str), header
        with Image.open(io.BytesIO(data)) as image:
            assert (header.format, header.width, header.height) == (image.format, *image.size)
            if name == "PNG":
                declared = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
                assert header.alpha == declared

    def test_jpeg_with_fill_bytes_and_restart_markers(self) -> None:
        """Fill bytes before a marker and bare markers before the frame do not lose the sides."""
        data = encode(RGB, "JPEG")
        spliced = data[:2] + b"\xff\xd0" + b"\xff\xff" + data[2:]
        header = read_header(spliced)
        assert not isinstance(header, str)
        assert (header.width, header.height) == (320, 240)

    @pytest.mark.parametrize(
        ("data", "words"),
        [
            (b"", "none of these"),
            (b"GIF89a" + bytes(40), "none of these"),
            (b"\x89PNG\r\n\x1a\n\x00\x00", "cut short"),
            (encode(RGB, "JPEG")[:100], "cut short"),
            (b"\xff\xd8\xff\xd9", "no frame header"),
            (b"BM" + bytes(12), "cut short"),
            (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(7) + b"\x9d\x01\x2a", "cut short"),
            (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(12), "no start code"),
        ],
        ids=[
            "empty",
            "gif",
            "png-short",
            "jpeg-short",
            "jpeg-no-frame",
            "bmp-short",
            "webp-short",
            "webp-no-start",
        ],
    )
    def test_broken_headers_are_described(self, data: bytes, words: str) -> None:
        """Bytes that are not a readable header give a sentence, never an exception."""
        problem = read_header(data)
        assert isinstance(problem, str)
        assert words in problem


class TestImageRules:
    @pytest.mark.parametrize(
        ("data", "rule"),
        [
            (b"this is not an image at all", "JPEG, PNG, BMP or WEBP"),
            (encode(RGB, "GIF"), "JPEG, PNG, BMP or WEBP"),
            (encode(Image.new("RGB", (1, 1)), "PNG"), "240 to 8000 px"),
            (encode(Image.new("RGB", (239, 600)), "JPEG"), "240 to 8000 px"),
            (png_header(8001, 2000), "240 to 8000 px"),
            (encode(Image.new("RGB", (2490, 300)), "PNG"), "1:8 to 8:1"),
            (encode(Image.new("RGB", (300, 2490)), "BMP"), "1:8 to 8:1"),
            (CLEAR_RGBA, "no transparency"),
            (encode(HALF_CLEAR, "PNG"), "no transparency"),
            (palette_png(0), "no transparency"),
            (png_header(400, 300) + bytes(20_000_001), "20,000,000"),
        ],
        ids=[
            "garbage",
            "gif",
            "1x1",
            "239px",
            "8001px",
            "8.3:1",
            "1:8.3",
            "clear",
            "partly-clear",
            "trns-used",
            "over-20MB",
        ],
    )
    def test_each_broken_rule_is_named(self, data: bytes, rule: str) -> None:
        """Every image the rules refuse is refused by the fake, with the rule in the message."""
        problems = fake_problems(data)
        assert len(problems) == 1
        assert rule in problems[0]
        assert problems[0].startswith("first_frame_image")

    @pytest.mark.parametrize(
        "data",
        [
            encode(RGB, "PNG"),
            encode(RGB, "JPEG"),
            encode(RGB, "BMP"),
            encode(RGB, "WEBP"),
            encode(Image.new("RGBA", (320, 240), (1, 2, 3, 0)), "WEBP"),  # only PNG is restricted
            encode(Image.new("RGB", (1920, 240)), "JPEG"),  # exactly 8:1
            encode(Image.new("L", (240, 240)), "PNG"),  # the smallest sides
            png_header(8000, 1000),  # the largest side
            OPAQUE_RGBA,
            palette_png(1),  # a tRNS chunk whose clear colour no pixel uses
        ],
        ids=[
            "png",
            "jpeg",
            "bmp",
            "webp",
            "webp-alpha",
            "8:1",
            "240px",
            "8000px",
            "opaque-rgba",
            "trns-unused",
        ],
    )
    def test_images_within_the_rules_are_accepted(self, data: bytes) -> None:
        """Images at the edges of every rule are accepted."""
        assert fake_problems(data) == []

    def test_declared_type_need_not_match(self) -> None:
        """The format comes from the bytes: a JPEG labelled image/png is judged as a JPEG."""
        assert fake_problems(encode(RGB, "JPEG"), media="png") == []

    def test_last_frame_is_held_to_the_same_rules(self) -> None:
        """The last frame's image is checked like the first, and named in the problem."""
        args = {"first_frame_image": uri(encode(RGB, "PNG")), "last_frame_image": uri(CLEAR_RGBA)}
        problems, _ = check_create({"model": MODEL, "args": args})
        assert problems == ["last_frame_image: a PNG image must have no transparency"]


AGREEMENT = [
    encode(RGB, "PNG"),
    OPAQUE_RGBA,
    CLEAR_RGBA,
    encode(HALF_CLEAR, "PNG"),
    encode(Image.new("LA", (320, 240), (90, 0)), "PNG"),
    encode(Image.new("LA", (320, 240), (90, 255)), "PNG"),
    palette_png(0),
    palette_png(1),
    encode(RGB, "JPEG"),
    encode(Image.new("RGB", (1920, 240)), "JPEG"),
    encode(Image.new("RGB", (1921, 240)), "JPEG"),
    encode(Image.new("RGB", (239, 300)), "BMP"),
    encode(RGB, "BMP"),
    encode(RGB, "WEBP", lossless=True),
    encode(RGB, "GIF"),
    encode(Image.new("RGB", (1, 1)), "PNG"),
    b"not an image",
]


class TestAgreementWithTheSDK:
    @pytest.mark.parametrize("data", AGREEMENT)
    def test_fake_and_local_file_check_agree(self, data: bytes) -> None:
        """The fake accepts a data-URI image exactly when the SDK accepts it as a local file."""
        assert (fake_problems(data) == []) == sdk_accepts(data)

    @pytest.mark.parametrize("data", AGREEMENT)
    def test_fake_and_request_check_agree(self, data: bytes) -> None:
        """The fake accepts a data-URI image exactly when ImageToVideo accepts it as one."""
        try:
            ImageToVideo(first_frame_image=uri(data))
        except InvalidRequestError:
            accepted = False
        else:
            accepted = True
        assert (fake_problems(data) == []) == accepted


class TestWithoutPillow:
    def test_declared_alpha_decides_without_pillow(self) -> None:
        """Without Pillow an opaque RGBA PNG counts as transparent; RGB PNGs and JPEGs pass."""
        script = """
import base64, sys
sys.modules["PIL"] = None  # as if Pillow were not installed
from shortwan.testing._rules import check_create
for line in sys.stdin:
    args = {"first_frame_image": "data:image/png;base64," + line.strip()}
    problems, _ = check_create({"model": "alibaba/wan-2.7/image-to-video", "args": args})
    print(problems[0] if problems else "ok")
"""
        images = [OPAQUE_RGBA, encode(RGB, "PNG"), encode(RGB, "JPEG"), CLEAR_RGBA]
        stdin = "".join(base64.b64encode(data).decode() + "\n" for data in images)
        done = run_python(script, stdin)
        assert done.returncode == 0, done.stderr
        transparent = "first_frame_image: a PNG image must have no transparency"
        assert done.stdout.splitlines() == [transparent, "ok", "ok", transparent]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class TestThroughHTTP:
    @pytest.mark.parametrize("transport", ["envelope", "http"])
    @pytest.mark.anyio
    async def test_refused_image_names_the_rule_and_makes_no_job(
        self, http: aiohttp.ClientSession, transport: Literal["envelope", "http"]
    ) -> None:
        """A create with a transparent PNG is refused with code 400 naming the rule; no job."""
        async with FakeShortAPI(error_transport=transport) as fake:
            headers = {"Authorization": f"Bearer {fake.api_key}"}
            body = {"model": MODEL, "args": {"first_frame_image": uri(CLEAR_RGBA)}}
            url = f"{fake.url}/api/v1/job/create"
            async with http.post(url, json=body, headers=headers) as r:
                status, answer = r.status, await r.json()
        assert status == (400 if transport == "http" else 200)
        assert answer["code"] == 400
        assert "no transparency" in answer["message"]
        assert fake.stats.jobs_created == 0

    @pytest.mark.anyio
    async def test_a_multi_megabyte_image_is_accepted(self, http: aiohttp.ClientSession) -> None:
        """A data URI of megabytes that keeps the rules creates a job."""
        photo = Image.effect_noise((2000, 1500), 64).convert("RGB")
        data = encode(photo, "PNG")
        assert len(data) > 1_000_000
        async with FakeShortAPI(run_time=0) as fake:
            headers = {
                "Authorization": f"Bearer {fake.api_key}",
                "Content-Type": "application/json",
            }
            body = {"model": MODEL, "args": {"first_frame_image": uri(data)}}
            url = f"{fake.url}/api/v1/job/create"
            # A stream, not bytes: aiohttp warns of large bodies sent from memory in one piece.
            payload = io.BytesIO(json.dumps(body).encode())
            async with http.post(url, data=payload, headers=headers) as r:
                answer = await r.json()
        assert answer["code"] == 0
        assert fake.stats.jobs_created == 1
