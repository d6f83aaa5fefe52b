"""Image checks and data-URI encoding, so a bad image is refused before money is spent.

Local files are checked in full (every pixel decoded) when they are read. Images already given as
data URIs are checked when a request is built: with Pillow, on their headers (format, sides,
aspect ratio) and, for a PNG that has an alpha channel, on their pixels' transparency; without
Pillow, on their type (from the magic bytes) and size only.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Final, TypeGuard

from ._errors import InvalidRequestError, quoted
from ._spec import (
    IMAGE_FORMATS,
    MAX_IMAGE_ASPECT,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_SIDE,
    MIN_IMAGE_SIDE,
)

__all__ = [
    "check_image_bytes",
    "data_image_problem",
    "image_input",
    "image_input_or_problem",
    "is_remote",
    "oversize_problem",
]

_REMOTE_PREFIXES: Final = ("http://", "https://", "data:")


def is_remote(source: object) -> TypeGuard[str]:
    """Return whether ``source`` is sent to the service as it is: a URL or a data URI, no file."""
    return isinstance(source, str) and source.startswith(_REMOTE_PREFIXES)


def oversize_problem(name: str, size: int) -> str:
    """Return the problem of an image of ``size`` bytes, over the limit."""
    return f"{name}: image is {size:,} bytes, the limit is {MAX_IMAGE_BYTES:,}"


def image_input(source: str | os.PathLike[str] | bytes, *, name: str = "image") -> str:
    """Check a local image against the service's rules and return it as a data URI.

    The rules: JPEG, PNG without transparency, BMP or WEBP; each side 240 to 8000 pixels; aspect
    ratio between 1:8 and 8:1; at most 20 MB. A path must name a regular file (not a device or a
    pipe), and every pixel must decode. Reading the file blocks: in async code call this through
    ``anyio.to_thread.run_sync``.

    Args:
        source: a path, or the image's bytes.
        name: what to call the image in error messages.

    Returns:
        ``data:image/<type>;base64,<data>``, ready for ``first_frame_image`` or
        ``last_frame_image``.

    Raises:
        InvalidRequestError: the image breaks a rule, cannot be read or decoded, or Pillow is not
            installed.
    """
    if is_remote(source):
        raise InvalidRequestError([f"{name}: image_input takes a local file, not a URL"])
    uri, problem = image_input_or_problem(source, name=name)
    if problem is not None:
        raise InvalidRequestError([problem])
    assert uri is not None  # noqa: S101 - no problem means a URI
    return uri


def image_input_or_problem(
    source: str | os.PathLike[str] | bytes | None, *, name: str
) -> tuple[str | None, str | None]:
    """Return ``(value, None)`` for a usable image source, ``(None, problem)`` otherwise.

    URLs and data URIs pass through unchanged (the request checks them); ``None`` stays ``None``.
    """
    if source is None:
        return None, None
    if is_remote(source):
        return source, None
    if isinstance(source, bytes):
        data = source
    else:
        data, problem = _read_image_file(source, name)
        if problem is not None:
            return None, problem
    media_type, problem = check_image_bytes(data, name)
    if problem is not None or media_type is None:
        return None, problem
    _remember(_digest(data), name, None)  # checked in full: its request need not look again
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}", None


def _read_image_file(source: str | os.PathLike[str], name: str) -> tuple[bytes, str | None]:
    """Read a regular file of at most the size limit: ``(data, None)`` or ``(b"", problem)``."""
    path = Path(source)
    shown = quoted(str(path), 200)
    try:
        # Refused before opening: a device or a FIFO may block on open or never end.
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            return b"", f"{name}: {shown} is a folder, not an image file"
        if not stat.S_ISREG(mode):
            return b"", f"{name}: {shown} is not a regular file (a device, pipe or socket)"
        # Non-blocking, so a FIFO swapped in since the check cannot hang the open.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
        fd = os.open(path, flags | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return b"", f"{name}: {shown} is not a regular file (it changed while read)"
            if info.st_size > MAX_IMAGE_BYTES:
                return b"", oversize_problem(name, info.st_size)
            # One byte past the limit tells a file that grew since its size was read.
            data = handle.read(MAX_IMAGE_BYTES + 1)
    except OSError as exc:
        return b"", f"{name}: cannot read {shown}: {exc.strerror or exc}"
    except ValueError as exc:  # a NUL byte, or text the file system cannot take (surrogates)
        return b"", f"{name}: {shown} is not a usable path: {exc}"
    if len(data) > MAX_IMAGE_BYTES:
        return b"", f"{name}: image is over {MAX_IMAGE_BYTES:,} bytes, the limit"
    return data, None


# Magic bytes of the accepted formats, for the check without Pillow.
_MAGIC: Final = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
)
# Data URIs already checked, by digest: a request rebuilt (attrs.evolve, a retry of a batch line)
# is not decoded again. Bounded, and keyed by a digest so no image is kept alive by it. A problem
# is kept with the field it names, as the same bytes may be given for another field.
_CHECKED: Final[OrderedDict[bytes, tuple[str, str] | None]] = OrderedDict()
_CHECKED_SIZE: Final = 256


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _remember(key: bytes, name: str, problem: str | None) -> None:
    _CHECKED[key] = None if problem is None else (name, problem)
    while len(_CHECKED) > _CHECKED_SIZE:
        _CHECKED.popitem(last=False)


def _format_from_magic(data: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def data_image_problem(data: bytes, name: str) -> str | None:
    """Return the first image rule that the decoded bytes of a data URI break, or None.

    With Pillow the headers are read (format, sides, aspect ratio), and the pixels of a PNG that
    may hold transparency; without it, the format (from the magic bytes) and the size are checked
    and the rest is left to the service. The answer is remembered for the same bytes.
    """
    key = _digest(data)
    if key in _CHECKED:
        seen = _CHECKED[key]
        if seen is None or seen[0] == name:
            _CHECKED.move_to_end(key)
            return None if seen is None else seen[1]
    if len(data) > MAX_IMAGE_BYTES:
        problem: str | None = oversize_problem(name, len(data))
    else:
        try:
            import PIL  # noqa: F401, PLC0415 - optional dependency
        except ImportError:
            fmt = _format_from_magic(data)
            problem = None if fmt is not None else _not_accepted(name, None)
        else:
            problem = check_image_bytes(data, name, pixels=False)[1]
    _remember(key, name, problem)
    return problem


def _not_accepted(name: str, fmt: str | None) -> str:
    allowed = ", ".join(IMAGE_FORMATS)
    return f"{name}: format {fmt or 'unknown'} is not accepted (allowed: {allowed})"


def check_image_bytes(
    data: bytes, name: str, *, pixels: bool = True
) -> tuple[str | None, str | None]:
    """Check an image's bytes against the service's rules.

    Works on bytes alone, wherever they came from (a file, a decoded data URI), and needs Pillow.

    Args:
        data: the image file's bytes.
        name: what to call the image in the problem.
        pixels: decode every pixel, so a damaged or cut-off file is refused too. Without it the
            headers are read, and the pixels only of a PNG that may hold transparency.

    Returns:
        ``(media type, None)`` for a good image, ``(None, first rule broken)`` otherwise.
    """
    try:
        from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None, (
            f"{name}: checking a local image needs Pillow; install the media extra: "
            "pip install 'shortwan[media]'"
        )
    if len(data) > MAX_IMAGE_BYTES:
        return None, oversize_problem(name, len(data))
    try:
        with warnings.catch_warnings():
            # Our own side limit refuses huge images before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format
                width, height = image.size
                if fmt not in IMAGE_FORMATS:
                    return None, _not_accepted(name, fmt)
                for side, value in (("width", width), ("height", height)):
                    if not MIN_IMAGE_SIDE <= value <= MAX_IMAGE_SIDE:
                        return None, (
                            f"{name}: {side} is {value} px, it must be "
                            f"{MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE} px"
                        )
                if max(width, height) > MAX_IMAGE_ASPECT * min(width, height):
                    return None, (f"{name}: aspect ratio {width}:{height} is outside 1:8 to 8:1")
                # Every pixel is decoded, so a damaged or cut-off file is refused before it is
                # paid for, not by the service after.
                if pixels:
                    image.load()
                if fmt == "PNG" and _has_transparency(image):
                    return None, f"{name}: PNG images must not have transparent pixels"
    except UnidentifiedImageError:
        return None, f"{name}: not a readable image (not a format Pillow knows)"
    except Exception as exc:
        # Pillow's decoders raise many kinds on damaged data (SyntaxError, EOFError, struct.error,
        # IndexError, OSError, ValueError, …): all mean the same thing here.
        reason = str(exc) or type(exc).__name__
        return None, f"{name}: not a readable image (damaged or cut off: {reason})"
    return IMAGE_FORMATS[fmt], None


def _has_transparency(image: object) -> bool:
    """Return whether any pixel of a PNG is not fully opaque."""
    from PIL import Image  # noqa: PLC0415 - optional dependency

    assert isinstance(image, Image.Image)  # noqa: S101 - narrowing for the type checker
    if image.mode not in ("RGBA", "LA", "PA", "La", "RGBa") and "transparency" not in image.info:
        return False
    alpha = image.convert("RGBA").getchannel("A")
    low, _high = alpha.getextrema()
    return bool(low < 255)  # type: ignore[operator]
