"""What the test modules share: a poll policy for the fake's time scale, a client, requests,
a callback URL to receive on, and a child interpreter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

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


@asynccontextmanager
async def callback_sink() -> AsyncIterator[tuple[str, list[Any]]]:
    """Serve a callback URL on 127.0.0.1; yield it with the list its JSON bodies land in."""
    received: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", received
    finally:
        await runner.cleanup()


def run_python(
    script: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter (this one's), for environments the test shapes."""
    return subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
