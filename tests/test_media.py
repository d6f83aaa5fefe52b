"""Local images: checked against the service's rules and encoded before money is spent."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
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
