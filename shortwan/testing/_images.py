"""Read an image's format, sides and transparency from its header bytes, without Pillow.

The fake checks data-URI images against the service's image rules with this reader, so it works
in test environments that lack Pillow. Only the headers are read: a file whose pixels are damaged
after a valid header is not noticed here.

What "transparency" means for a PNG, the one format the rules restrict: the file has an alpha
channel (colour type 4 or 6) or a ``tRNS`` chunk, *and* at least one pixel is not fully opaque.
The second half needs the pixels: with Pillow installed they are decoded (the same test the
client's local-file check makes); without it, a PNG that declares an alpha channel or a ``tRNS``
chunk counts as transparent, which is stricter than the client for opaque RGBA files.
"""

from __future__ import annotations

import io
import struct
import warnings
from typing import Final

import attrs

__all__ = ["ImageHeader", "read_header", "transparent_pixels"]

_PNG: Final = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers carry the sides; C4 (Huffman tables), C8 and CC (arithmetic coding
# conditioning) share the range but are not frames.
_JPEG_FRAMES: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and the restart markers.
_JPEG_BARE: Final = frozenset({0x01, *range(0xD0, 0xD8)})


@attrs.frozen
class ImageHeader:
    """What an image's header says.

    Attributes:
        format: ``JPEG``, ``PNG``, ``BMP`` or ``WEBP``.
        width: in pixels.
        height: in pixels.
        alpha: the header declares an alpha channel or a transparent colour (for a PNG: colour
            type 4 or 6, or a ``tRNS`` chunk).
    """

    format: str
    width: int
    height: int
    alpha: bool


def read_header(data: bytes) -> ImageHeader | str:
    """Return the header facts of ``data``, or a sentence saying why they cannot be read."""
    try:
        if data.startswith(_PNG):
            return _png(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg(data)
        if data.startswith(b"BM"):
            return _bmp(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
    except (struct.error, IndexError):
        kind = _kind(data)
        return f"its {kind} header is cut short"
    return "its bytes are none of these"


def _kind(data: bytes) -> str:
    if data.startswith(_PNG):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    return "BMP" if data.startswith(b"BM") else "WEBP"


def _png(data: bytes) -> ImageHeader | str:
    length, kind = struct.unpack_from(">I4s", data, 8)
    if kind != b"IHDR" or length < 13:
        return "its PNG header has no IHDR chunk first"
    width, height, _depth, colour = struct.unpack_from(">IIBB", data, 16)
    alpha = colour in (4, 6)
    at = 8
    # The tRNS chunk must come before the image data; later chunks cannot add transparency.
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        if kind == b"tRNS":
            alpha = True
        if kind in (b"IDAT", b"IEND"):
            break
        at += 12 + length
    return ImageHeader("PNG", width, height, alpha)


def _jpeg(data: bytes) -> ImageHeader | str:
    at = 2
    while True:
        if data[at] != 0xFF:
            return "its JPEG markers are damaged"
        while data[at] == 0xFF:  # fill bytes may pad any marker
            at += 1
        marker = data[at]
        if marker in _JPEG_BARE:
            at += 1
            continue
        if marker in (0xD9, 0xDA):
            return "its JPEG data has no frame header"
        (length,) = struct.unpack_from(">H", data, at + 1)
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack_from(">HH", data, at + 4)
            return ImageHeader("JPEG", width, height, False)
        at += 1 + length


def _bmp(data: bytes) -> ImageHeader | str:
    (size,) = struct.unpack_from("<I", data, 14)
    if size == 12:  # the old OS/2 header: unsigned 16-bit sides
        width, height = struct.unpack_from("<HH", data, 18)
        return ImageHeader("BMP", width, height, False)
    if size < 16:
        return "its BMP header is of no known kind"
    width, height = struct.unpack_from("<ii", data, 18)
    alpha = False
    if size >= 56:
        (bits,) = struct.unpack_from("<H", data, 28)
        (alpha_mask,) = struct.unpack_from("<I", data, 66)
        alpha = bits == 32 and alpha_mask != 0
    # A negative height means rows run top-down; the side is its size.
    return ImageHeader("BMP", abs(width), abs(height), alpha)


def _webp(data: bytes) -> ImageHeader | str:
    kind = data[12:16]
    if kind == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            return "its WEBP (VP8) frame has no start code"
        width, height = struct.unpack_from("<HH", data, 26)
        return ImageHeader("WEBP", width & 0x3FFF, height & 0x3FFF, False)
    if kind == b"VP8L":
        if data[20] != 0x2F:
            return "its WEBP (VP8L) stream has no signature"
        (bits,) = struct.unpack_from("<I", data, 21)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return ImageHeader("WEBP", width, height, bool(bits >> 28 & 1))
    if kind == b"VP8X":
        if len(data) < 30:
            raise IndexError("cut short")
        flags = data[20]
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return ImageHeader("WEBP", width, height, bool(flags & 0x10))
    return "its WEBP data has no VP8, VP8L or VP8X chunk first"


def transparent_pixels(data: bytes) -> bool | None:
    """Return whether any pixel of an image is not fully opaque; ``None`` without Pillow.

    An image Pillow cannot decode counts as transparent: nothing shows it is opaque.
    """
    try:
        from PIL import Image  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            # The sides were checked first (at most 8000 px), so no image here is a bomb.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                low, _high = image.convert("RGBA").getchannel("A").getextrema()
    except Exception:  # hostile bytes make Pillow's decoders raise almost anything
        return True
    return bool(low < 255)
