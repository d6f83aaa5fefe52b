"""An aiohttp backend served by several worker processes that share callbacks through Redis.

    POST /videos            {"prompt": "...", "first_frame_image": "https://...", "duration": 5}
                            → 202 {"job_id": "...", "amount": "0.425", "worker": 4242}
    GET  /videos/{job_id}?wait=30   → {"status": "succeeded", "url": "...", "worker": 4243}
    GET  /stats             → {"worker": 4244, "callbacks": {"received": 9, "forwarded": 7, ...}}
    POST /shortwan/callbacks/{token}   the service's callbacks (mounted CallbackReceiver)

The service calls back on whichever worker the kernel picks. Each worker's receiver shares its
tokens through Redis, so a callback that lands on the wrong worker is forwarded to the one that
created the job (or confirmed there, if that worker is gone), and a wait in any worker resolves
from the job's end once any worker has seen it.

Run it against the local fake (no key, no network) with four workers:

    redis-server --port 6379 --save '' &
    shortwan fake-server --port 8080 &
    SHORTWAN_BASE_URL=http://127.0.0.1:8080 SHORTAPI_KEY=ak-5e7a2c0ffee0d15ea5edfa4e0b1e2024 \\
    PUBLIC_URL=http://127.0.0.1:8000 REDIS_URL=redis://127.0.0.1:6379/0 \\
        gunicorn multiworker_backend:app_factory --pythonpath examples --bind 127.0.0.1:8000 \\
        --workers 4 --worker-class aiohttp.GunicornWebWorker
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import attrs
from aiohttp import web

import shortwan.redis
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


async def make_app(
    *,
    public_url: str,
    redis_url: str,
    namespace: str = "shortwan-example",
    api_key: str | None = None,
    base_url: str | None = None,
    poll: PollPolicy = DEFAULT_POLL,
) -> web.Application:
    """Build one worker's application; it connects to Redis in the worker's own event loop."""
    shared = await shortwan.redis.connect(redis_url, namespace=namespace)
    receiver = CallbackReceiver(public_url, shared=shared)
    app = web.Application()
    pid = os.getpid()  # in every answer, to show which worker gave it

    async def client_context(app: web.Application) -> AsyncIterator[None]:
        try:
            async with AsyncShortWan(
                api_key, base_url=base_url, poll=poll, callbacks=receiver, shared=shared
            ) as client:
                app[CLIENT] = client
                yield
        finally:
            # Closed last: once its heartbeat is gone, other workers take its callbacks over.
            await shared.aclose()

    async def submit(request: web.Request) -> web.Response:
        try:
            video_request = ImageToVideo(**await request.json())
        except (ValueError, TypeError, InvalidRequestError) as exc:
            return web.json_response({"error": str(exc), "worker": pid}, status=400)
        try:
            job = await request.app[CLIENT].submit(video_request)
        except ShortWanError as exc:
            return web.json_response(
                {"error": type(exc).__name__, "detail": str(exc), "worker": pid}, status=502
            )
        body = {"job_id": job.id, "amount": str(job.amount), "worker": pid}
        return web.json_response(body, status=202)

    async def report(request: web.Request) -> web.Response:
        client = request.app[CLIENT]
        try:
            # Any worker may be asked about any job: one created elsewhere is attached by id.
            job = client.attach(request.match_info["job_id"])
            wait = float(request.query.get("wait", "0"))
        except (ValueError, InvalidRequestError) as exc:
            return web.json_response({"error": str(exc), "worker": pid}, status=400)
        try:
            video = await job.result(timeout=min(max(wait, 0.001), 60))
        except JobTimeoutError:
            return web.json_response({"status": job.status.name.lower(), "worker": pid})
        except ShortWanError as exc:
            return web.json_response({"status": "failed", "error": str(exc), "worker": pid})
        return web.json_response({"status": "succeeded", "url": video.url, "worker": pid})

    async def stats(_request: web.Request) -> web.Response:
        # This worker's figures: callbacks it took, forwarded to their worker, or took over.
        figures = attrs.asdict(receiver.statistics())
        return web.json_response({"worker": pid, "callbacks": figures})

    app.cleanup_ctx.append(client_context)
    app.router.add_post("/videos", submit)
    app.router.add_get("/videos/{job_id}", report)
    app.router.add_get("/stats", stats)
    app.add_subapp(receiver.path_prefix, receiver.aiohttp_app())
    return app


async def app_factory() -> web.Application:
    """Build the application from the environment (gunicorn's entry point)."""
    return await make_app(
        public_url=os.environ.get("PUBLIC_URL", "http://127.0.0.1:8000"),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        namespace=os.environ.get("SHORTWAN_NAMESPACE", "shortwan-example"),
    )
