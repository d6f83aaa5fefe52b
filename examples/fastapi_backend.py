"""A FastAPI backend that submits videos and receives their callbacks.

    POST /videos            {"prompt": "...", "first_frame_image": "https://...", "duration": 5}
                            → 202 {"job_id": "...", "amount": "0.425"}
    GET  /videos/{job_id}?wait=30   → {"status": "succeeded", "url": "..."} or the current status
    POST /shortwan/callbacks/{token}   the service's callbacks (CallbackReceiver mounted as ASGI)

Run it against the local fake (no key, no network):

    shortwan fake-server --port 8080 &
    SHORTWAN_BASE_URL=http://127.0.0.1:8080 SHORTAPI_KEY=ak-5e7a2c0ffee0d15ea5edfa4e0b1e2024 \
        PUBLIC_URL=http://127.0.0.1:8000 uvicorn examples.fastapi_backend:app --port 8000
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request

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


def create_app(
    *,
    public_url: str,
    api_key: str | None = None,
    base_url: str | None = None,
    poll: PollPolicy = DEFAULT_POLL,
) -> FastAPI:
    """Build the application; the client lives as long as the app."""
    receiver = CallbackReceiver(public_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncShortWan(
            api_key, base_url=base_url, poll=poll, callbacks=receiver
        ) as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount(receiver.path_prefix, receiver.asgi)

    @app.post("/videos", status_code=202)
    async def submit(payload: dict[str, Any], request: Request) -> dict[str, str]:
        client: AsyncShortWan = request.app.state.client
        try:
            video_request = ImageToVideo(**payload)
        except (TypeError, InvalidRequestError) as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        try:
            job = await client.submit(video_request)
        except ShortWanError as exc:
            raise HTTPException(status_code=502, detail=f"{type(exc).__name__}: {exc}") from exc
        return {"job_id": job.id, "amount": str(job.amount)}

    @app.get("/videos/{job_id}")
    async def report(job_id: str, request: Request, wait: float = 0) -> dict[str, str]:
        client: AsyncShortWan = request.app.state.client
        try:
            # Known jobs are looked up; a job another worker created is attached by its id.
            job = client.attach(job_id)
        except InvalidRequestError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        try:
            video = await job.result(timeout=min(max(wait, 0.001), 60))
        except JobTimeoutError:
            return {"status": job.status.name.lower()}
        except ShortWanError as exc:
            return {"status": "failed", "error": str(exc)}
        return {"status": "succeeded", "url": video.url}

    return app


app = create_app(public_url=os.environ.get("PUBLIC_URL", "http://127.0.0.1:8000"))
