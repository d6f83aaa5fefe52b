"""The fake service's own checks of a create body, written apart from the client's models.

Keeping them separate means a bug in the client's validation shows up as a disagreement in tests
instead of hiding behind shared code. Data-URI images are held to the image rules of protocol.md
§6 (format, sides, aspect ratio, no transparency, size), read from their headers by ``_images``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from ._images import ImageHeader, read_header, transparent_pixels

__all__ = ["IMAGE_LIMIT", "MAX_ASPECT", "MAX_SIDE", "MIN_SIDE", "MODEL", "check_create"]

MODEL: Final = "alibaba/wan-2.7/image-to-video"
_BODY_KEYS: Final = frozenset({"model", "args", "callback_url"})
_STRINGS: Final = {
    "prompt": 5000,
    "negative_prompt": 500,
}
_MEDIA: Final = (
    "first_frame_image",
    "last_frame_image",
    "driving_audio_url",
    "first_clip_video_url",
)
_ALLOWED: Final = frozenset(
    {
        frozenset({"first_frame_image"}),
        frozenset({"first_frame_image", "driving_audio_url"}),
        frozenset({"first_frame_image", "last_frame_image"}),
        frozenset({"first_frame_image", "last_frame_image", "driving_audio_url"}),
        frozenset({"first_clip_video_url"}),
        frozenset({"first_clip_video_url", "last_frame_image"}),
    }
)
_ARG_KEYS: Final = frozenset({*_STRINGS, "resolution", "duration", "prompt_extend", *_MEDIA})
_IMAGE_URI: Final = re.compile(r"data:image/(jpeg|jpg|png|bmp|webp);base64,([A-Za-z0-9+/=\s]+)")
IMAGE_LIMIT: Final = 20_000_000
MIN_SIDE: Final = 240
MAX_SIDE: Final = 8000
MAX_ASPECT: Final = 8


def _is_web_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and " " not in value


def _image_problem(key: str, value: str) -> str | None:
    """Return the image rule ``value`` breaks, or ``None``: URLs are not fetched, only checked."""
    if _is_web_url(value):
        return None
    match = _IMAGE_URI.fullmatch(value)
    if match is None:
        return f"{key} must be an http(s) URL or an image data URI"
    payload = match[2]
    chars = len(payload) - sum(payload.count(space) for space in " \t\r\n")
    # Four base64 characters hold three bytes (less up to two of padding): a payload this long
    # is over the limit without decoding it.
    if chars * 3 // 4 - 2 > IMAGE_LIMIT:
        return f"{key}: the image is over {IMAGE_LIMIT:,} bytes (20 MB), the limit"
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        return f"{key}: the data URI's base64 does not decode"
    if not data:
        return f"{key}: the data URI holds no image"
    if len(data) > IMAGE_LIMIT:
        return f"{key}: the image is {len(data):,} bytes, over the {IMAGE_LIMIT:,} (20 MB) limit"
    header = read_header(data)
    if isinstance(header, str):
        return f"{key}: the image must be JPEG, PNG, BMP or WEBP; {header}"
    return _header_problem(key, header, data)


def _header_problem(key: str, header: ImageHeader, data: bytes) -> str | None:
    width, height = header.width, header.height
    for side, size in (("width", width), ("height", height)):
        if not MIN_SIDE <= size <= MAX_SIDE:
            return f"{key}: each side must be {MIN_SIDE} to {MAX_SIDE} px; the {side} is {size} px"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return f"{key}: the aspect ratio must be 1:8 to 8:1; this image is {width}:{height}"
    # Pillow, when present, tells an opaque RGBA file from a transparent one, as the client's
    # local check does; without it the declared alpha channel decides.
    if header.format == "PNG" and header.alpha and transparent_pixels(data) is not False:
        return f"{key}: a PNG image must have no transparency"
    return None


def check_create(body: object) -> tuple[list[str], Mapping[str, Any]]:
    """Return ``(problems, args)`` for a create body; no problems means the job may be made."""
    if not isinstance(body, Mapping):
        return ["the body must be a JSON object"], {}
    problems = [f"unknown field {key!r}" for key in body if key not in _BODY_KEYS]
    if body.get("model") != MODEL:
        problems.append(f"unknown model {body.get('model')!r}")
    callback = body.get("callback_url")
    if callback is not None and not (isinstance(callback, str) and _is_web_url(callback)):
        problems.append("callback_url must be an http(s) URL")
    args = body.get("args")
    if not isinstance(args, Mapping):
        problems.append("args must be an object")
        return problems, {}
    for key, value in args.items():
        if key not in _ARG_KEYS:
            problems.append(f"unknown argument {key!r}")
        elif value is None:
            problems.append(f"{key} must not be null")
    for key, limit in _STRINGS.items():
        value = args.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            problems.append(f"{key} must be a string of at most {limit} characters")
    resolution = args.get("resolution", "1080p")
    if resolution not in ("720p", "1080p"):
        problems.append("resolution must be 720p or 1080p")
    duration = args.get("duration", 5)
    if type(duration) is not int or not 2 <= duration <= 15:
        problems.append("duration must be an integer from 2 to 15")
    if type(args.get("prompt_extend", False)) is not bool:
        problems.append("prompt_extend must be a boolean")
    given = set()
    for key in _MEDIA:
        value = args.get(key)
        if value is None:
            continue
        given.add(key)
        if not isinstance(value, str):
            problems.append(f"{key} must be a string")
        elif key.endswith("_image"):
            problem = _image_problem(key, value)
            if problem is not None:
                problems.append(problem)
        elif not _is_web_url(value):
            problems.append(f"{key} must be an http(s) URL")
    if frozenset(given) not in _ALLOWED:
        problems.append(f"input combination {sorted(given)} is not supported")
    return problems, args
