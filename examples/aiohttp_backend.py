"""An aiohttp backend that submits videos and receives their callbacks.

    POST /videos            {"prompt": "...", "first_frame_image": "https://...", "duration": 5}
                            → 202 {"job_id": "...", "amount": "0.425"}
    GET  /videos/{job_id}   → {"status": "running"} or {"status": "succeeded", "url": "..."}
    GET  /videos/{job_id}?wait=30   waits up to 30 s for the end first
    POST /shortwan/callbacks/{token}   the service's callbacks (mounted CallbackReceiver)

Run it against the local fake (no key, no network):

    shortwan fake-server --port 8080 &
    SHORTWAN_BASE_URL=http://127.0.0.1:8080 SHORTAPI_KEY=ak-5e7a2c0ffee0d15ea5edfa4e0b1e2024 \
        PUBLIC_URL=http://127.0.0.1:8000 python examples/aiohttp_backend.py
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from aiohttp import web

from shortwan import (
    DEFAULT_POLL,
    AsyncShortWan,
    ImageToVideo,
    InvalidRequestError,
    JobTimeoutError,
    PollPolicy,
    ShortWanError,
)
from shortwan.callbacks import CallbackReceiver

CLIENT = web.AppKey("client", AsyncShortWan)


def make_app(
    *,
    public_url: str,
    api_key: str | None = None,
    base_url: str | None = None,
    poll: PollPolicy = DEFAULT_POLL,
) -> web.Application:
    """Build the application; the client lives as long as the app."""
    receiver = CallbackReceiver(public_url)
    app = web.Application()

    async def client_context(app: web.Application) -> AsyncIterator[None]:
        async with AsyncShortWan(
            api_key, base_url=base_url, poll=poll, callbacks=receiver
        ) as client:
            app[CLIENT] = client
            yield

    async def submit(request: web.Request) -> web.Response:
        try:
            video_request = ImageToVideo(**await request.json())
        except (ValueError, TypeError, InvalidRequestError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            job = await request.app[CLIENT].submit(video_request)
        except ShortWanError as exc:
            return web.json_response({"error": type(exc).__name__, "detail": str(exc)}, status=502)
        return web.json_response({"job_id": job.id, "amount": str(job.amount)}, status=202)

    async def report(request: web.Request) -> web.Response:
        client = request.app[CLIENT]
        try:
            # Known jobs are looked up; a job another worker created is attached by its id.
            job = client.attach(request.match_info["job_id"])
            wait = float(request.query.get("wait", "0"))
        except (ValueError, InvalidRequestError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            video = await job.result(timeout=min(max(wait, 0.001), 60))
        except JobTimeoutError:
            return web.json_response({"status": job.status.name.lower()})
        except ShortWanError as exc:
            return web.json_response({"status": "failed", "error": str(exc)})
        return web.json_response({"status": "succeeded", "url": video.url})

    app.cleanup_ctx.append(client_context)
    app.router.add_post("/videos", submit)
    app.router.add_get("/videos/{job_id}", report)
    app.add_subapp(receiver.path_prefix, receiver.aiohttp_app())
    return app


if __name__ == "__main__":
    web.run_app(
        make_app(public_url=os.environ.get("PUBLIC_URL", "http://127.0.0.1:8000")),
        host="127.0.0.1",
        port=8000,
    )
