"""What the test modules share: a poll policy for the fake's time scale, a client and requests."""

from __future__ import annotations

from typing import Any

from shortwan import AsyncShortWan, ImageToVideo, PollPolicy
from shortwan.testing import FakeShortAPI

URL = "https://example.com/frame.png"
# Time scaled down: jobs of tenths of a second, queries tens of milliseconds apart.
POLL = PollPolicy(
    min_interval=0.02,
    max_interval=0.2,
    prior_seconds_per_video_second=0.01,
    max_queries_per_second=2000,
    max_concurrent_queries=32,
)


def client_for(fake: FakeShortAPI, **kwargs: Any) -> AsyncShortWan:
    """Return a client of ``fake`` polling at the fake's pace (``kwargs`` go to the client)."""
    kwargs.setdefault("poll", POLL)
    return AsyncShortWan(fake.api_key, base_url=fake.url, **kwargs)


def req(prompt: str = "a fox", **kwargs: Any) -> ImageToVideo:
    """Return a request with ``prompt`` and a remote first frame."""
    return ImageToVideo(prompt=prompt, first_frame_image=URL, **kwargs)
