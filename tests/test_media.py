"""Local images: checked against the service's rules and encoded before money is spent."""

from __future__ import annotations

import base64
import io
import os
import struct
from pathlib import Path

import attrs
import pytest
from helpers import run_python
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from shortwan import ImageToVideo, InvalidRequestError, image_input


def encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def rgb(width: int = 320, height: int = 240) -> Image.Image:
    return Image.new("RGB", (width, height), (200, 80, 40))


def decoded(uri: str) -> tuple[str, bytes]:
    head, payload = uri.split(",", 1)
    return head, base64.b64decode(payload)


class TestFormats:
    @pytest.mark.parametrize(
        ("fmt", "media_type"),
        [
            ("JPEG", "image/jpeg"),
            ("PNG", "image/png"),
            ("BMP", "image/bmp"),
            ("WEBP", "image/webp"),
        ],
    )
    def test_accepted_formats_round_trip(self, fmt: str, media_type: str) -> None:
        """JPEG, PNG, BMP and WEBP become data URIs of their type holding the same bytes."""
        data = encode(rgb(), fmt)
        head, body = decoded(image_input(data))
        assert head == f"data:{media_type};base64"
        assert body == data

    @pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
    def test_other_formats_refused(self, fmt: str) -> None:
        """GIF and TIFF are refused, naming the format."""
        with pytest.raises(InvalidRequestError, match=fmt):
            image_input(encode(rgb(), fmt))

    def test_garbage_refused(self) -> None:
        """Bytes that are no image are refused with a typed error."""
        with pytest.raises(InvalidRequestError, match="not a readable image"):
            image_input(b"certainly not an image" * 10)


class TestTransparency:
    def test_opaque_rgba_png_accepted(self) -> None:
        """An RGBA PNG whose pixels are all opaque is fine."""
        image = Image.new("RGBA", (320, 240), (10, 20, 30, 255))
        assert image_input(encode(image, "PNG")).startswith("data:image/png")

    def test_one_transparent_pixel_refused(self) -> None:
        """A single transparent pixel makes a PNG unacceptable."""
        image = Image.new("RGBA", (320, 240), (10, 20, 30, 255))
        image.putpixel((5, 5), (0, 0, 0, 0))
        with pytest.raises(InvalidRequestError, match="transparent"):
            image_input(encode(image, "PNG"))

    def test_palette_png_with_transparency_refused(self) -> None:
        """A palette PNG with a transparent entry in use is refused."""
        image = Image.new("P", (320, 240), 0)
        image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        with pytest.raises(InvalidRequestError, match="transparent"):
            image_input(encode(image, "PNG", transparency=0))


class TestGeometryAndSize:
    @pytest.mark.parametrize(
        ("size", "ok"),
        [
            ((240, 240), True),
            ((239, 300), False),
            ((300, 239), False),
            ((8000, 1000), True),
            ((8001, 1100), False),
            ((240, 1920), True),
            ((240, 1921), False),
        ],
    )
    def test_sides_and_aspect(self, size: tuple[int, int], ok: bool) -> None:
        """Sides must be 240 to 8000 px and the aspect ratio within 1:8 to 8:1."""
        data = encode(Image.new("L", size, 128).convert("RGB"), "PNG")
        if ok:
            image_input(data)
        else:
            with pytest.raises(InvalidRequestError):
                image_input(data)

    def test_over_twenty_megabytes_refused_before_decoding(self, tmp_path: Path) -> None:
        """A file over 20,000,000 bytes is refused by its size alone."""
        path = tmp_path / "huge.png"
        path.write_bytes(b"\0" * 20_000_001)
        with pytest.raises(InvalidRequestError, match="20,000,000"):
            image_input(path)

    def test_missing_file_named(self, tmp_path: Path) -> None:
        """A path that does not exist is refused, naming it."""
        with pytest.raises(InvalidRequestError, match=r"nothere\.png"):
            image_input(tmp_path / "nothere.png")


class TestFromFiles:
    def test_paths_are_encoded_urls_kept(self, tmp_path: Path) -> None:
        """from_files encodes local files and keeps URLs as they are."""
        path = tmp_path / "first.jpg"
        path.write_bytes(encode(rgb(), "JPEG"))
        request = ImageToVideo.from_files(
            first_frame_image=path, last_frame_image="https://example.com/last.png"
        )
        assert request.first_frame_image is not None
        assert request.first_frame_image.startswith("data:image/jpeg;base64,")
        assert request.last_frame_image == "https://example.com/last.png"

    def test_image_input_refuses_urls(self) -> None:
        """image_input takes local files only."""
        with pytest.raises(InvalidRequestError, match="local file"):
            image_input("https://example.com/a.png")

    def test_image_and_argument_problems_listed_together(self) -> None:
        """A bad image and a bad argument are reported in one error."""
        with pytest.raises(InvalidRequestError) as info:
            ImageToVideo.from_files(first_frame_image=encode(rgb(100, 100), "PNG"), duration=40)
        text = "\n".join(info.value.problems)
        assert "width" in text
        assert "duration" in text


def damaged_png(cut: int = 9) -> bytes:
    """An opaque RGBA PNG whose IDAT length is off by ``cut``: Pillow raises SyntaxError on it."""
    data = bytearray(encode(Image.new("RGBA", (320, 240), (10, 20, 30, 255)), "PNG"))
    at = data.find(b"IDAT") - 4
    length = struct.unpack(">I", data[at : at + 4])[0]
    data[at : at + 4] = struct.pack(">I", length - cut)
    return bytes(data)


class TestDamagedImages:
    def test_broken_chunks_refused(self) -> None:
        """A PNG whose chunks are out of step (SyntaxError in Pillow) is an InvalidRequestError."""
        with pytest.raises(InvalidRequestError, match="not a readable image"):
            image_input(damaged_png())

    @pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
    def test_cut_off_image_refused(self, fmt: str) -> None:
        """An image cut off halfway is refused before it is sent, not accepted by its header."""
        data = encode(rgb(), fmt)
        with pytest.raises(InvalidRequestError, match="not a readable image"):
            image_input(data[: len(data) // 2])

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def test_any_damage_is_a_refusal_or_a_uri(self, data: st.DataObject) -> None:
        """Bytes flipped or cut anywhere in an image give a data URI or InvalidRequestError."""
        fmt, mode = data.draw(
            st.sampled_from([("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "RGB"), ("WEBP", "RGBA")])
        )
        image = Image.new(mode, (240, 240))
        original = encode(image, fmt, **({"transparency": 0} if mode == "P" else {}))
        damaged = bytearray(original)
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(damaged) - 1))
            damaged[at] = data.draw(st.integers(0, 255))
        damaged = damaged[: data.draw(st.integers(1, len(damaged)))]
        try:
            uri = image_input(bytes(damaged))
        except InvalidRequestError:
            return  # a refusal is a right answer; any other exception fails the test
        assert uri.startswith("data:image/")


class TestLocalPaths:
    def test_device_refused_without_reading(self) -> None:
        """A device is refused as not a regular file, unread (/dev/zero would never end)."""
        # /dev/null, not /dev/zero: should this regress, the test fails instead of eating memory.
        if not Path("/dev/null").exists():
            pytest.skip("no /dev/null here")
        with pytest.raises(InvalidRequestError, match="not a regular file"):
            image_input("/dev/null")

    def test_fifo_refused_without_opening(self, tmp_path: Path) -> None:
        """A FIFO nobody writes to is refused instead of blocking forever."""
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        fifo = tmp_path / "pipe.png"
        os.mkfifo(fifo)
        with pytest.raises(InvalidRequestError, match="not a regular file"):
            image_input(fifo)

    def test_folder_refused(self, tmp_path: Path) -> None:
        """A folder is named as such."""
        with pytest.raises(InvalidRequestError, match="is a folder"):
            image_input(tmp_path)

    @pytest.mark.parametrize("name", ["img\x00.png", "img\ud800.png"])
    def test_unusable_paths_refused(self, tmp_path: Path, name: str) -> None:
        """A path with a NUL byte or a lone surrogate is an InvalidRequestError, not ValueError."""
        with pytest.raises(InvalidRequestError, match="not a usable path"):
            image_input(str(tmp_path / name))

    def test_damaged_file_refused_through_from_files(self, tmp_path: Path) -> None:
        """A damaged image on disk is listed among the request's problems."""
        path = tmp_path / "broken.png"
        path.write_bytes(damaged_png())
        with pytest.raises(InvalidRequestError, match="not a readable image"):
            ImageToVideo.from_files(first_frame_image=path, prompt="x")


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


class TestDataURIs:
    @pytest.mark.parametrize(
        ("data", "rule"),
        [
            (b"garbage, no image at all" * 20, "not a readable image"),
            (encode(rgb(1, 1), "PNG"), "width is 1 px"),
            (encode(rgb(2490, 300), "PNG"), "aspect ratio 2490:300"),
            (encode(Image.new("RGBA", (320, 240), (0, 0, 0, 0)), "PNG"), "transparent"),
            (encode(rgb(), "GIF"), "format GIF is not accepted"),
        ],
        ids=["garbage", "1x1", "8.3:1", "transparent", "gif"],
    )
    def test_a_data_uri_that_breaks_a_rule_is_refused_when_built(
        self, data: bytes, rule: str
    ) -> None:
        """A data-URI image is held to the image rules where the request is built, with Pillow."""
        with pytest.raises(InvalidRequestError, match=rule):
            ImageToVideo(first_frame_image=data_uri(data))

    @pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "WEBP"])
    def test_a_good_data_uri_is_accepted(self, fmt: str) -> None:
        """Images within the rules pass, whatever type the URI declares."""
        request = ImageToVideo(first_frame_image=data_uri(encode(rgb(), fmt)))
        assert request.first_frame_image is not None
        ImageToVideo(
            last_frame_image=data_uri(encode(rgb(), fmt), "image/jpeg"),
            first_frame_image="https://example.com/a.png",
        )

    def test_the_last_frame_is_checked_too(self) -> None:
        """A last frame breaking a rule is refused, listed with the request's other problems."""
        with pytest.raises(InvalidRequestError) as info:
            ImageToVideo(
                first_frame_image="https://example.com/a.png",
                last_frame_image=data_uri(encode(rgb(100, 100), "PNG")),
                duration=99,
            )
        problems = info.value.problems
        assert any(p.startswith("last_frame_image: width is 100 px") for p in problems)
        assert any("duration" in p for p in problems)

    def test_the_same_bad_image_names_the_field_it_is_given_for(self) -> None:
        """Bytes refused once for one field are refused for another under that field's name."""
        bad = data_uri(encode(rgb(100, 100), "PNG"))
        with pytest.raises(InvalidRequestError, match="first_frame_image: width is 100 px"):
            ImageToVideo(first_frame_image=bad)
        with pytest.raises(InvalidRequestError) as info:
            ImageToVideo(first_frame_image="https://example.com/a.png", last_frame_image=bad)
        assert (
            [p for p in info.value.problems if "width is 100 px" in p]
            == [p for p in info.value.problems if p.startswith("last_frame_image: width is 100 px")]
            != []
        )

    def test_without_pillow_type_and_size_are_checked(self) -> None:
        """Without Pillow a data URI is checked for its type (magic bytes) and size only."""
        script = """
import base64, sys
sys.modules["PIL"] = None  # as if Pillow were not installed
from shortwan import ImageToVideo, InvalidRequestError
for line in sys.stdin:
    try:
        ImageToVideo(first_frame_image="data:image/png;base64," + line.strip())
    except InvalidRequestError as exc:
        print(exc.problems[0])
    else:
        print("ok")
"""
        images = [
            b"garbage, no image at all" * 20,
            encode(rgb(1, 1), "PNG"),
            encode(rgb(), "JPEG"),
            encode(rgb(), "WEBP"),
            encode(rgb(), "GIF"),
        ]
        stdin = "".join(base64.b64encode(data).decode() + "\n" for data in images)
        done = run_python(script, stdin)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            "first_frame_image: format unknown is not accepted (allowed: JPEG, PNG, BMP, WEBP)",
            "ok",  # its sides cannot be read without Pillow: the service judges them
            "ok",
            "ok",
            "first_frame_image: format unknown is not accepted (allowed: JPEG, PNG, BMP, WEBP)",
        ]

    def test_a_request_rebuilt_is_not_judged_differently(self) -> None:
        """A request rebuilt (attrs.evolve, the same line again) gets the same verdict each time."""
        good = ImageToVideo(first_frame_image=data_uri(encode(rgb(), "PNG")))
        assert attrs.evolve(good, duration=10).duration == 10
        bad = data_uri(encode(rgb(1, 1), "PNG"))
        for _ in range(2):
            with pytest.raises(InvalidRequestError, match="width is 1 px"):
                ImageToVideo(first_frame_image=bad)
