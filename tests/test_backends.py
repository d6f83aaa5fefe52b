"""The web backend examples, served for real: aiohttp, and FastAPI under uvicorn."""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import uvicorn
from aiohttp import web

from shortwan import PollPolicy
from shortwan.testing import FakeShortAPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import aiohttp_backend
import fastapi_backend

POLL = PollPolicy(
    min_interval=0.02, max_interval=0.2, prior_seconds_per_video_second=0.01, callback_interval=5
)
ARGS = {"prompt": "a fox", "first_frame_image": "https://example.com/a.png", "duration": 3}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serve_aiohttp(fake: FakeShortAPI) -> AsyncIterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = aiohttp_backend.make_app(
        public_url=base, api_key=fake.api_key, base_url=fake.url, poll=POLL
    )
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield base
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve_fastapi(fake: FakeShortAPI) -> AsyncIterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = fastapi_backend.create_app(
        public_url=base, api_key=fake.api_key, base_url=fake.url, poll=POLL
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        try:
            yield base
        finally:
            server.should_exit = True


async def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(method, url, json=body) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("serve", [serve_aiohttp, serve_fastapi], ids=["aiohttp", "fastapi"])
@pytest.mark.anyio
async def test_submit_callback_and_report(serve: Any) -> None:
    """Submit, receive the callback through the app, report the video; one query per job."""
    async with FakeShortAPI(run_time=0.2) as fake, serve(fake) as base:
        status, created = await call("POST", f"{base}/videos", ARGS)
        assert status == 202, created
        assert created["amount"] == "0.255"
        job_id = created["job_id"]
        status, now = await call("GET", f"{base}/videos/{job_id}")
        assert status == 200
        assert now["status"] in ("queued", "running")
        status, done = await call("GET", f"{base}/videos/{job_id}?wait=10")
        assert done["status"] == "succeeded", done
        assert done["url"].startswith(fake.url)
        assert fake.stats.callbacks_sent == 1
        assert fake.stats.queries <= 2
        status, _ = await call("POST", f"{base}/videos", {"prompt": "no image"})
        assert status == 400
        assert fake.stats.creates_received == 1
