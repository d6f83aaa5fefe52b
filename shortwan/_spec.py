"""The facts of the ``alibaba/wan-2.7/image-to-video`` model, as the service documents them.

Its id, its price, the limits of its arguments and of its media, and the input combinations it
accepts live here and nowhere else: the request model, the local image checks and the command line
all read them from this module. Changing a limit is a change of this file alone.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final, Literal

__all__ = [
    "ACCEPTED_COMBINATIONS",
    "DEFAULT_DURATION",
    "DEFAULT_JOB_TIMEOUT",
    "DEFAULT_RESOLUTION",
    "IMAGE_FORMATS",
    "IMAGE_MEDIA_TYPES",
    "MAX_DURATION",
    "MAX_IMAGE_ASPECT",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_SIDE",
    "MAX_NEGATIVE_PROMPT",
    "MAX_PROMPT",
    "MEDIA_FIELDS",
    "MIN_DURATION",
    "MIN_IMAGE_SIDE",
    "MODEL_ID",
    "PRICE_PER_SECOND",
    "RESOLUTIONS",
    "Resolution",
    "estimated_cost",
]

MODEL_ID: Final = "alibaba/wan-2.7/image-to-video"
PRICE_PER_SECOND: Final = Decimal("0.085")
"""USD charged per second of video, at create time; failed jobs are refunded."""

DEFAULT_JOB_TIMEOUT: Final = 900.0
"""How long waiting for one job lasts unless the caller says otherwise: jobs take 30 s to 10 min."""

# --- the text and the shape of the video -------------------------------------------------------

MAX_PROMPT: Final = 5000
MAX_NEGATIVE_PROMPT: Final = 500
MIN_DURATION: Final = 2
MAX_DURATION: Final = 15
DEFAULT_DURATION: Final = 5
Resolution = Literal["720p", "1080p"]
RESOLUTIONS: Final[tuple[Resolution, ...]] = ("720p", "1080p")
DEFAULT_RESOLUTION: Final[Resolution] = "1080p"

# --- media -------------------------------------------------------------------------------------

MEDIA_FIELDS: Final = (
    "first_frame_image",
    "last_frame_image",
    "driving_audio_url",
    "first_clip_video_url",
)
"""The media arguments, in the order the documentation lists them."""

ACCEPTED_COMBINATIONS: Final = (
    frozenset({"first_frame_image"}),
    frozenset({"first_frame_image", "driving_audio_url"}),
    frozenset({"first_frame_image", "last_frame_image"}),
    frozenset({"first_frame_image", "last_frame_image", "driving_audio_url"}),
    frozenset({"first_clip_video_url"}),
    frozenset({"first_clip_video_url", "last_frame_image"}),
)
"""The only sets of media arguments the service accepts; any other set is refused."""

IMAGE_FORMATS: Final = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "BMP": "image/bmp",
    "WEBP": "image/webp",
}
"""Accepted frame image formats (as Pillow names them) and their media types. PNG only without
transparent pixels."""
IMAGE_MEDIA_TYPES: Final = tuple(IMAGE_FORMATS.values())
# The documented image limit, taken as decimal megabytes: the stricter reading, so nothing we accept
# can be refused for its size after the money is spent.
MAX_IMAGE_BYTES: Final = 20_000_000
MIN_IMAGE_SIDE: Final = 240
MAX_IMAGE_SIDE: Final = 8000
MAX_IMAGE_ASPECT: Final = 8.0
"""The longer side may be at most this many times the shorter one (1:8 to 8:1)."""


def estimated_cost(duration: int) -> Decimal:
    """Return what a video of ``duration`` seconds costs, in USD."""
    return PRICE_PER_SECOND * duration
