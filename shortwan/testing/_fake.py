"""FakeShortAPI: the ShortAPI job protocol served on 127.0.0.1, with knobs for time and trouble.

The facade wires the rooms together: ``_jobs`` (jobs, timing, balance), ``_faults`` (faults and
the rate limiter), ``_answers`` (envelopes and the error transport), ``_api`` (create and query),
``_files`` (result files and their videos) and ``_callbacks`` (callback delivery).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

from aiohttp import web

from shortwan._aio import ClosedOnExit

from ._answers import Answers, ErrorCodes, ErrorText, ErrorTransport
from ._api import JobAPI
from ._callbacks import Callbacks, CallbackShape
from ._faults import (
    RETRY_AFTER_STYLES,
    Endpoint,
    Fault,
    FaultPlan,
    RetryAfterStyle,
    TokenBucket,
)
from ._files import ResultFiles, Videos
from ._jobs import FakeJob, JobBook, JobPlan, ResultShape, Timing
from ._stats import FakeStats

__all__ = ["DEFAULT_API_KEY", "FakeShortAPI"]

DEFAULT_API_KEY: Final = "ak-5e7a2c0ffee0d15ea5edfa4e0b1e2024"


class FakeShortAPI(ClosedOnExit):
    """A local stand-in for ShortAPI's job service, for tests and demos.

    Use it as an async context manager; it listens on ``host`` (127.0.0.1) and a free port, and
    serves create, query and result files (a real MP4 of the asked duration, with Range support).

    Args:
        api_key: the key it accepts (``fake.api_key``).
        queue_time: seconds each job is queued. With neither this nor ``run_time``, timing
            follows each request (see :class:`Timing`: about 0.1 s queued, then 0.05 s per
            second of video at 720p or 0.08 s at 1080p, ±25 %); giving either fixes both.
        run_time: seconds each job runs.
        jitter: relative random spread of both times; default 0.25 for the request-following
            timing, 0 for fixed times.
        speed: divides every duration, to run time faster.
        seed: seeds every random choice, so runs repeat; jitter draws from a stream of its own,
            so timing knobs never change which jobs fail or which requests get faults.
        failure_rate: share of jobs that fail (and are refunded).
        failure_reason: their error text.
        unknown_status: when set, jobs end with this raw status number instead of 2.
        result_shape: how result URLs are given: ``videos``, ``images``, ``url``, ``video_url``.
        extra_fields: add unknown keys to every answer, to prove clients ignore them.
        balance: USD available; ``None`` is unlimited. A create it cannot pay is refused.
        plan: per-job override, called with the args of each created job.
        fault_rates: random faults per endpoint, e.g. ``{"create": {Fault.HTML_502: 0.1}}``.
        retry_after: the Retry-After header sent with ``RATE_LIMIT`` faults.
        slow_delay: seconds a ``SLOW_AFTER`` answer waits.
        query_rate_limit: queries per second over all jobs (a token bucket); beyond it the fake
            answers 429 with the wait for its next token as Retry-After.
        query_burst: the bucket's size in queries; default a tenth of a second's worth, at
            least 1.
        rate_limit_retry_after: that wait as ``exact`` fractional seconds (rounded up to the
            microsecond) or as whole ``seconds`` (rounded up).
        url_ttl: seconds a result URL stays valid after it was handed out (then HTTP 410).
        callback_drop: share of callbacks never sent.
        callback_duplicate: share of callbacks sent twice.
        callback_delay: seconds between a job's end and its callback.
        callback_shape: ``envelope`` (``{"code":0,"data":...}``) or ``bare`` (the data alone).
        error_transport: ``envelope``: refusals of a request (bad key, low balance, invalid
            body or content type, unknown job, unknown path or method) are HTTP 200 with a
            non-zero ``code``, as the service sends them; ``http``: they carry an HTTP status
            too (401, 402, 400, 415, 404, 405). Throttling is HTTP 429 and overload HTTP 503
            in both.
        error_codes: the ``code`` of each kind of refusal.
        error_text: the text field of a refusal: ``message``, ``info`` or ``both``.
        render: serve each finished job a clip made from its ``first_frame_image`` data URI (a
            zoom or a pan, chosen by job id), rendered once on first download; needs Pillow and
            PyAV. Otherwise each job gets a plain clip of its duration (PyAV), or without PyAV
            the bundled two-second sample.
        host: the address to listen on.
        port: the port, 0 for a free one.
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        queue_time: float | None = None,
        run_time: float | None = None,
        jitter: float | None = None,
        speed: float = 1.0,
        seed: int = 0,
        failure_rate: float = 0.0,
        failure_reason: str = "the model could not generate this video",
        unknown_status: int | None = None,
        result_shape: ResultShape = "videos",
        extra_fields: bool = False,
        balance: Decimal | None = None,
        plan: Callable[[Mapping[str, Any]], JobPlan | None] | None = None,
        fault_rates: Mapping[Endpoint, Mapping[Fault, float]] | None = None,
        retry_after: str = "0",
        slow_delay: float = 30.0,
        query_rate_limit: float | None = None,
        query_burst: float | None = None,
        rate_limit_retry_after: RetryAfterStyle = "exact",
        url_ttl: float | None = None,
        callback_drop: float = 0.0,
        callback_duplicate: float = 0.0,
        callback_delay: float = 0.0,
        callback_shape: CallbackShape = "envelope",
        error_transport: ErrorTransport = "envelope",
        error_codes: ErrorCodes | None = None,
        error_text: ErrorText = "message",
        render: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if rate_limit_retry_after not in RETRY_AFTER_STYLES:
            raise ValueError("rate_limit_retry_after must be exact or seconds")
        self.api_key = api_key
        self.stats = FakeStats()
        self.url = ""
        self._host = host
        self._port = port
        rng = random.Random(seed)  # noqa: S311 - test data, not secrets
        self._book = JobBook(
            stats=self.stats,
            rng=rng,
            timing_rng=random.Random(f"timing:{seed}"),  # noqa: S311 - test data
            timing=Timing(queue_time=queue_time, run_time=run_time, jitter=jitter, speed=speed),
            failure_rate=failure_rate,
            failure_reason=failure_reason,
            unknown_status=unknown_status,
            result_shape=result_shape,
            plan=plan,
            balance=balance,
        )
        self._faults = FaultPlan(rng, self.stats, fault_rates)
        self._answers = Answers(
            stats=self.stats,
            error_transport=error_transport,
            error_codes=error_codes or ErrorCodes(),
            error_text=error_text,
            extra_fields=extra_fields,
            retry_after=retry_after,
            slow_delay=slow_delay,
        )
        self._videos = Videos(render=render, stats=self.stats)
        self._files = ResultFiles(
            jobs=self._book.jobs,
            videos=self._videos,
            answers=self._answers,
            faults=self._faults,
            stats=self.stats,
            url_ttl=url_ttl,
        )
        self._callbacks = Callbacks(
            jobs=self._book.jobs,
            stats=self.stats,
            rng=rng,
            describe=self.job_data,
            envelope=self._answers.envelope,
            spawn=self._spawn,
            drop=callback_drop,
            duplicate=callback_duplicate,
            delay=callback_delay,
            shape=callback_shape,
        )
        bucket = None
        if query_rate_limit is not None:
            bucket = TokenBucket(query_rate_limit, query_burst, time.monotonic())
        self._api = JobAPI(
            api_key=api_key,
            book=self._book,
            answers=self._answers,
            faults=self._faults,
            stats=self.stats,
            bucket=bucket,
            rate_limit_retry_after=rate_limit_retry_after,
            result_url=self._files.url,
            on_created=self._callbacks.job_created,
            extra_fields=extra_fields,
        )
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Request handlers still running: a slow answer whose client has gone away keeps running
        # after aiohttp's shutdown gives up on it, so close ends them itself.
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def balance(self) -> Decimal | None:
        """USD left (``None``: unlimited); failed jobs' charges are back once they have ended."""
        return self._book.balance

    @balance.setter
    def balance(self, value: Decimal | None) -> None:
        self._book.balance = value

    @property
    def jobs(self) -> Mapping[str, FakeJob]:
        """Every job created, by id (read-only)."""
        return MappingProxyType(self._book.jobs)

    def __repr__(self) -> str:
        return f"<FakeShortAPI {self.url or 'not started'} jobs={len(self._book.jobs)}>"

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> FakeShortAPI:
        app = web.Application(
            client_max_size=64 * 1024 * 1024,
            middlewares=[self._track_handler, self._answers.envelope_errors],
        )
        app.router.add_post("/api/v1/job/create", self._api.create)
        app.router.add_get("/api/v1/job/query", self._api.query)
        app.router.add_get("/files/{name}", self._files.serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = self._port
        for address in self._runner.addresses:
            port = address[1]
        self.url = self._files.base = f"http://{self._host}:{port}"
        self._spawn(self._callbacks.run())
        return self

    async def aclose(self) -> None:
        """Stop serving and end every background task."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._videos.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for handler in self._handlers:
            handler.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._callbacks.aclose()

    @web.middleware
    async def _track_handler(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - aiohttp always runs handlers in a task
            return await handler(request)
        self._handlers.add(task)
        try:
            return await handler(request)
        finally:
            self._handlers.discard(task)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- knobs and views ---------------------------------------------------------------------

    def add_jobs(
        self, count: int, *, args: Mapping[str, Any] | None = None, prefix: str = "seeded"
    ) -> list[str]:
        """Create ``count`` jobs directly, as if another client had made them; return their ids.

        For tests and benchmarks of :meth:`AsyncShortWan.attach` at scale: no HTTP, no stats
        for creates. Each job's prompt is ``"{prefix} {n}"``; timing follows the fake's knobs.
        """
        return self._book.add(count, args, prefix)

    def script(self, endpoint: Endpoint, faults: list[Fault | None]) -> None:
        """Queue faults for the next requests to ``endpoint``, in order (``None``: answer well)."""
        self._faults.script(endpoint, faults)

    def set_fault_rates(self, endpoint: Endpoint, rates: Mapping[Fault, float]) -> None:
        """Replace the random fault rates of ``endpoint``."""
        self._faults.set_rates(endpoint, rates)

    def result_url(self, job: FakeJob) -> str:
        """Return a fresh result URL for ``job`` (its validity starts now)."""
        return self._files.url(job)

    def job_data(self, job: FakeJob, now: float | None = None) -> dict[str, Any]:
        """Return the ``data`` of a query answer about ``job``."""
        return self._api.data(job, now)

    async def result_video(self, job_id: str) -> bytes:
        """Return the MP4 bytes the fake serves for the job ``job_id``, making them if needed.

        Raises:
            KeyError: no such job.
        """
        return await self._videos.for_job(self._book.jobs[job_id])
