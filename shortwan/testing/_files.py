"""Result files: the MP4 each finished job serves, with Range support, link expiry and faults."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from importlib import resources
from typing import Final

from aiohttp import web

from ._answers import Answers
from ._faults import Fault, FaultPlan
from ._jobs import FakeJob
from ._render import FPS, FRAME_SIZES, image_bytes_from_arg, plain_clip, render_clip
from ._stats import FakeStats

__all__ = ["ResultFiles", "Videos"]

logger = logging.getLogger("shortwan.testing")

_RANGE: Final = re.compile(r"bytes=(\d*)-(\d*)")


def _ranged(request: web.Request, video: bytes) -> web.Response:
    """Answer ``request`` with ``video``: whole, or the one byte range its Range header asks for."""
    size = len(video)
    headers = {"Accept-Ranges": "bytes", "Content-Type": "video/mp4"}
    match = _RANGE.fullmatch(request.headers.get("Range", "").strip())
    if match is None or not (match[1] or match[2]):
        return web.Response(body=video, headers=headers)
    if match[1]:
        start = int(match[1])
        end = min(int(match[2]), size - 1) if match[2] else size - 1
    else:
        start, end = max(0, size - int(match[2])), size - 1
    if start >= size or start > end:
        headers["Content-Range"] = f"bytes */{size}"
        return web.Response(status=416, headers=headers)
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return web.Response(status=206, body=video[start : end + 1], headers=headers)


class Videos:
    """The bytes each job serves, made once and kept, so resumed downloads fit together.

    A job gets a clip of its own duration, in a 16:9 frame a quarter of its resolution's sides,
    at ``FPS`` frames a second: with ``render``, a pan or zoom over its first-frame image (Pillow
    and PyAV); otherwise, or for an image given as a URL, a plain clip (PyAV only), one per
    duration and resolution. Without PyAV every job serves the bundled two-second sample.

    Args:
        render: make each job's clip from its own image.
        stats: counts clips rendered from images.
    """

    def __init__(self, *, render: bool, stats: FakeStats) -> None:
        self.render = render
        self.sample = resources.files("shortwan.testing").joinpath("data/sample.mp4").read_bytes()
        self._stats = stats
        # One task per clip: requests that race for a new clip all await the same encode, and
        # every request gets the same bytes (two encodes can differ).
        self._clips: dict[str, asyncio.Task[bytes | None]] = {}

    async def for_job(self, job: FakeJob) -> bytes:
        """Return the bytes served for ``job``."""
        key = job.id if self.render else f"{job.duration}s@{job.resolution}"
        task = self._clips.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._make(job))
            self._clips[key] = task
        # Shielded: a client hanging up must not cancel an encode other requests wait for.
        clip = await asyncio.shield(task)
        return self.sample if clip is None else clip

    async def _make(self, job: FakeJob) -> bytes | None:
        width, height = FRAME_SIZES[job.resolution]
        arg = job.args.get("first_frame_image")
        image = image_bytes_from_arg(arg) if self.render and isinstance(arg, str) else None
        if image is not None:
            # Alternate the two motions by id, so a batch shows both and a job always gets one.
            motion = "zoom" if int(job.id[-1], 16) % 2 == 0 else "pan"
            clip = await asyncio.to_thread(
                render_clip,
                image,
                seconds=job.duration,
                width=width,
                height=height,
                fps=FPS,
                motion=motion,
            )
            if clip is not None:
                self._stats.clips_rendered += 1
                return clip
            logger.warning("cannot render a clip; serving a plain one", extra={"job_id": job.id})
        return await asyncio.to_thread(plain_clip, job.duration, width, height, FPS)

    async def aclose(self) -> None:
        """End encodes still under way."""
        tasks = list(self._clips.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class ResultFiles:
    """Serve ``/files/<job id>.mp4`` like a storage host: plain HTTP statuses, no envelope.

    Args:
        jobs: every job, by id.
        videos: the bytes of each job's file.
        answers: builds fault answers.
        faults: scripted and random download faults.
        stats: records each request's headers.
        url_ttl: seconds a link stays valid after it was handed out (then HTTP 410).
    """

    def __init__(
        self,
        *,
        jobs: Mapping[str, FakeJob],
        videos: Videos,
        answers: Answers,
        faults: FaultPlan,
        stats: FakeStats,
        url_ttl: float | None,
    ) -> None:
        self.url_ttl = url_ttl
        self.base = ""
        self._jobs = jobs
        self._videos = videos
        self._answers = answers
        self._faults = faults
        self._stats = stats

    def url(self, job: FakeJob) -> str:
        """Return a fresh result URL for ``job`` (its validity starts now)."""
        return f"{self.base}/files/{job.id}.mp4?issued={time.monotonic():.6f}"

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """Answer a download of a result file."""
        self._stats.downloads.append(dict(request.headers))
        fault = self._faults.draw("download")
        job = self._jobs.get(request.match_info["name"].removesuffix(".mp4"))
        if job is not None and job.status(time.monotonic()) != 2:
            job = None  # only a finished job has a file
        if fault is not None:
            return await self._faulty(request, fault, job)
        if job is None:
            return web.Response(status=404, text="no such file")
        if self.url_ttl is not None:
            try:
                issued = float(request.query.get("issued", "0"))
            except ValueError:
                issued = 0.0
            if time.monotonic() - issued > self.url_ttl:
                return web.Response(status=410, text="this link has expired")
        return _ranged(request, await self._videos.for_job(job))

    async def _faulty(
        self, request: web.Request, fault: Fault, job: FakeJob | None
    ) -> web.StreamResponse:
        # Faults that send video send the job's own bytes, so a download resumed after one of
        # them still assembles one whole file.
        video = self._videos.sample
        if job is not None and fault in (Fault.TRUNCATED_JSON, Fault.SLOW_AFTER):
            video = await self._videos.for_job(job)
        if fault is Fault.TRUNCATED_JSON:
            # For a file, "cut short" means: the full length announced, half of it sent.
            response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
            response.content_length = len(video)
            await response.prepare(request)
            await response.write(video[: len(video) // 2])
            await asyncio.sleep(0.05)  # a stall, then the reset: what arrived can be kept
            if request.transport is not None:
                request.transport.abort()
            return response
        return await self._answers.faulty(
            request, fault, "download", lambda: web.Response(body=video)
        )
