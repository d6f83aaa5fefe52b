"""The fake service's own checks of a create body, written apart from the client's models.

Keeping them separate means a bug in the client's validation shows up as a disagreement in tests
instead of hiding behind shared code.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = ["MODEL", "check_create"]

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
_IMAGE_LIMIT: Final = 20_000_000


def _is_web_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and " " not in value


def _image_ok(value: str) -> bool:
    if _is_web_url(value):
        return True
    match = _IMAGE_URI.fullmatch(value)
    if match is None:
        return False
    try:
        data = base64.b64decode(match[2], validate=False)
    except (binascii.Error, ValueError):
        return False
    return 0 < len(data) <= _IMAGE_LIMIT


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
            if not _image_ok(value):
                problems.append(f"{key} must be an http(s) URL or an image data URI")
        elif not _is_web_url(value):
            problems.append(f"{key} must be an http(s) URL")
    if frozenset(given) not in _ALLOWED:
        problems.append(f"input combination {sorted(given)} is not supported")
    return problems, args
