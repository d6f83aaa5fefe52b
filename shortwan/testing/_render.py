"""Make the clips the fake serves: from a job's image, or plain, of the length the job asked for.

:func:`render_clip` turns a still image into a slow zoom-in or a left-to-right pan over it ("Ken
Burns"), with Pillow and PyAV (the ``media`` and ``video`` extras). :func:`plain_clip` needs PyAV
only: a bar sweeps once across a gradient while a row of ticks counts the seconds. Both are H.264
in MP4, made in memory; both return ``None`` when an extra is missing (or, for
:func:`render_clip`, the bytes are not an image), and the caller falls back.

Served clips keep the 16:9 frame of the asked resolution at a quarter of its sides
(:data:`FRAME_SIZES`) and :data:`FPS` frames a second: cheap to encode, many at a time.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import logging
import math
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "FPS",
    "FRAME_SIZES",
    "MOTIONS",
    "image_bytes_from_arg",
    "plain_clip",
    "render_clip",
    "sample_images",
]

logger = logging.getLogger("shortwan.testing")

MOTIONS: Final = ("zoom", "pan")
FRAME_SIZES: Final = MappingProxyType({"720p": (320, 180), "1080p": (480, 270)})
FPS: Final = 8
# The zoom ends this much closer than it starts; the pan shows this share of the fitted width.
ZOOM: Final = 1.25
PAN_WINDOW: Final = 0.8
# The formats the service accepts for first_frame_image; anything else is not worth decoding.
_FORMATS: Final = ("JPEG", "PNG", "BMP", "WEBP")
# The source is shrunk once to this many times the clip's size: enough detail for the deepest
# zoom, and per-frame resampling no longer depends on how big the upload was.
_HEADROOM: Final = 2.0
_DATA_URI: Final = re.compile(
    r"data:image/[\w.+-]+(?:;[\w.+-]+=[^;,]*)*;base64,(.*)", re.IGNORECASE | re.DOTALL
)

Box = tuple[float, float, float, float]


def image_bytes_from_arg(value: str) -> bytes | None:
    """Decode a ``data:image/...;base64,`` URI to the image's bytes.

    Args:
        value: a ``first_frame_image``-style argument.

    Returns:
        The decoded bytes, or ``None`` for an http(s) URL (the fake never fetches the web), a URI
        of another kind, broken base64 or an empty payload.
    """
    match = _DATA_URI.fullmatch(value.strip())
    if match is None:
        return None
    # Line breaks are legal inside base64 bodies (MIME wraps at 76); the strict decoder is not.
    payload = "".join(match[1].split())
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data or None


def sample_images() -> list[Path]:
    """Return the bundled sample images (960x540 JPEG landscapes), sorted by name."""
    folder = resources.files("shortwan.testing") / "data/images"
    return sorted(Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".jpg"))


def render_clip(
    image: bytes,
    *,
    seconds: float = 2.0,
    width: int = 480,
    height: int = 270,
    fps: int = 12,
    motion: str = "zoom",
) -> bytes | None:
    """Render a clip that zooms into or pans across ``image``, as H.264 MP4 bytes.

    The work is CPU-bound and blocks; from async code run it in a thread. At the defaults it
    takes about 0.2 s. Two renders of the same image can differ by a few bytes (the encoder is
    not bit-exact here), so keep the result wherever the bytes must stay the same.

    Args:
        image: JPEG, PNG, BMP or WEBP bytes; any size or aspect ratio (the clip shows the largest
            centred part with the clip's aspect ratio).
        seconds: length of the clip.
        width: frame width in pixels, even (yuv420p halves the chroma planes).
        height: frame height in pixels, even.
        fps: frames per second.
        motion: ``"zoom"`` (a slow zoom into the centre) or ``"pan"`` (left to right).

    Returns:
        The MP4 file's bytes, or ``None`` when Pillow or PyAV is missing, the bytes are not a
        readable image, or the encoder fails.

    Raises:
        ValueError: an option is out of range or ``motion`` is unknown.
    """
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, not {motion!r}")
    _check_shape(seconds, width, height, fps)
    try:
        import av  # noqa: PLC0415 - optional dependency
        from PIL import Image  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    source = _decode(image, width, height)
    if source is None:
        return None
    count = max(1, round(seconds * fps))

    def frames() -> Iterator[Any]:
        for box in _windows(source.size, width / height, count, motion):
            # A float box crops and scales in one step, with sub-pixel precision, so slow
            # motion glides instead of stepping a whole pixel at a time. Bicubic is sharp at
            # these under-2x reductions and rings less than Lanczos at flat shapes' edges.
            frame = source.resize((width, height), Image.Resampling.BICUBIC, box=box)
            yield av.VideoFrame.from_image(frame)  # type: ignore[no-untyped-call]

    return _encode(av, frames(), width, height, fps, crf=23)


def plain_clip(seconds: int, width: int, height: int, fps: int = FPS) -> bytes | None:
    """Return a clip without a source image, as H.264 MP4 bytes; ``None`` without PyAV.

    A light bar sweeps once from left to right over a dark gradient, and a row of ticks at the
    bottom fills one tick per second, so a player shows the length at a glance. The result is
    kept per arguments (the encoder is not bit-exact, and the same job must get the same bytes).
    Blocks for about 0.01 s per second of clip at 480x270; from async code run it in a thread.

    Raises:
        ValueError: an option is out of range.
    """
    _check_shape(seconds, width, height, fps)
    # One cache key however the arguments were spelt: plain_clip(2, 480, 270) and
    # plain_clip(2, 480, 270, FPS) must share their bytes.
    return _plain_clip(seconds, width, height, fps)


@functools.lru_cache(maxsize=32)
def _plain_clip(seconds: int, width: int, height: int, fps: int) -> bytes | None:
    try:
        import av  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    return _encode(av, _plain_frames(av, seconds, width, height, fps), width, height, fps, crf=30)


def _check_shape(seconds: float, width: int, height: int, fps: int) -> None:
    if not (seconds > 0 and fps > 0 and width > 0 and height > 0):
        raise ValueError("seconds, fps, width and height must be positive")
    if width % 2 or height % 2:
        raise ValueError("width and height must be even")


def _plain_frames(av: Any, seconds: int, width: int, height: int, fps: int) -> Iterator[Any]:
    """Yield the frames of :func:`plain_clip`, painted straight into YUV planes."""
    count = seconds * fps
    strip = max(2, height // 10) & ~1
    bar = max(2, width // 40)
    gradient = bytes(40 + 80 * x // width for x in range(width))
    for index in range(count):
        frame = av.VideoFrame(width, height, "yuv420p")
        luma, blue, red = frame.planes
        pad = bytes(luma.line_size - width)
        left = round(index / max(1, count - 1) * (width - bar))
        row = gradient[:left] + b"\xeb" * bar + gradient[left + bar :] + pad
        ticks = bytearray(width)
        for second in range(index // fps + 1):
            # A gap between cells, so the seconds can be counted.
            start, end = second * width // seconds, (second + 1) * width // seconds
            ticks[start + 1 : end - 1] = b"\xc0" * max(0, end - start - 2)
        luma.update(row * (height - strip) + (bytes(ticks) + pad) * strip)
        # Flat colour planes: the tint tells nothing, and constant planes cost the encoder nothing.
        blue.update(b"\x96" * blue.buffer_size)
        red.update(b"\x70" * red.buffer_size)
        yield frame


def _encode(
    av: Any, frames: Iterator[Any], width: int, height: int, fps: int, *, crf: int
) -> bytes | None:
    """Encode ``frames`` as H.264 in MP4 and return the file's bytes; ``None`` if it fails."""
    buffer = io.BytesIO()
    try:
        # No "+faststart": moving the index to the front rereads the output, which a BytesIO
        # cannot do through PyAV. Players fetch the index at the end with a Range request.
        with av.open(buffer, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            # Speed over size: the clip is made while a client waits for its download.
            stream.options = {"crf": str(crf), "preset": "veryfast"}
            for frame in frames:
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    except (av.FFmpegError, av.codec.codec.UnknownCodecError) as exc:
        # A PyAV build without libx264, or an encoder refusing the options: fall back, loudly.
        logger.warning("cannot encode a clip: %s", exc)
        return None
    return buffer.getvalue()


def _decode(data: bytes, width: int, height: int) -> Image.Image | None:
    """Return ``data`` as an upright RGB image at most ``_HEADROOM`` times the clip's size."""
    from PIL import Image, ImageOps  # noqa: PLC0415 - optional dependency

    try:
        with Image.open(io.BytesIO(data), formats=_FORMATS) as opened:
            # For JPEG this picks a DCT scale while decoding: big photos load several times faster.
            opened.draft("RGB", (math.ceil(width * _HEADROOM), math.ceil(height * _HEADROOM)))
            upright = ImageOps.exif_transpose(opened)
            if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
                # Transparent pixels keep arbitrary colours; put them on black, as a player would.
                rgba = upright.convert("RGBA")
                source = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                source.alpha_composite(rgba)
                image = source.convert("RGB")
            else:
                image = upright.convert("RGB")
    except Exception:  # hostile bytes make Pillow's decoders raise almost anything
        logger.debug("cannot decode the image for a clip", exc_info=True)
        return None
    scale = max(width * _HEADROOM / image.width, height * _HEADROOM / image.height)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def _windows(size: tuple[int, int], aspect: float, count: int, motion: str) -> list[Box]:
    """Return the part of the image each frame shows, as float ``(left, top, right, bottom)``."""
    src_w, src_h = size
    fit_w = min(float(src_w), src_h * aspect)
    fit_h = fit_w / aspect
    boxes = []
    for index in range(count):
        t = index / (count - 1) if count > 1 else 0.0
        ease = t * t * (3 - 2 * t)  # smoothstep: starts and stops gently, no jolt at the ends
        if motion == "zoom":
            # Scaling by a constant ratio per frame reads as an even speed; linear would slow down.
            scale = ZOOM**ease
            w, h = fit_w / scale, fit_h / scale
            left = (src_w - w) / 2
        else:
            w, h = fit_w * PAN_WINDOW, fit_h * PAN_WINDOW
            left = (src_w - w) * ease
        top = (src_h - h) / 2
        boxes.append((left, top, left + w, top + h))
    return boxes
