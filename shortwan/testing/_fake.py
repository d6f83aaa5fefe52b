"""FakeShortAPI: the ShortAPI job protocol served on 127.0.0.1, with knobs for time and trouble."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import json
import logging
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from importlib import resources
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal

import aiohttp
import attrs
from aiohttp import web

from ._render import image_bytes_from_arg, render_clip
from ._rules import check_create

__all__ = ["DEFAULT_API_KEY", "FakeJob", "FakeShortAPI", "FakeStats", "Fault", "JobPlan"]

logger = logging.getLogger("shortwan.testing")

DEFAULT_API_KEY: Final = "ak-5e7a2c0ffee0d15ea5edfa4e0b1e2024"
PRICE: Final = Decimal("0.085")
ResultShape = Literal["videos", "images", "url", "video_url"]
Endpoint = Literal["create", "query", "download"]
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Fault(enum.Enum):
    """Trouble the fake can put in an answer."""

    RATE_LIMIT = "429 with Retry-After; nothing is created"
    UNAVAILABLE = "HTTP 503; nothing is created"
    CODE_3000 = "HTTP 200 with code 3000, model unavailable; nothing is created"
    RESET_BEFORE = "the connection is dropped before anything is created"
    RESET_AFTER = "the job is created, then the connection is dropped"
    SLOW_AFTER = "the job is created, then the answer waits slow_delay seconds"
    HTML_502 = "the job is created, then a proxy's HTML 502 page comes back"
    TRUNCATED_JSON = "the job is created, then the JSON answer is cut short"


_CREATES_FIRST: Final = frozenset(
    {Fault.RESET_AFTER, Fault.SLOW_AFTER, Fault.HTML_502, Fault.TRUNCATED_JSON}
)


@attrs.frozen(kw_only=True)
class JobPlan:
    """How one job goes; ``None`` fields take the server's defaults.

    Attributes:
        queue_time: seconds queued before running.
        run_time: seconds running.
        outcome: ``"succeed"``, ``"fail"``, or the raw terminal status number to end with.
        reason: the failure reason.
        result_shape: how the result URL is given.
    """

    queue_time: float | None = None
    run_time: float | None = None
    outcome: Literal["succeed", "fail"] | int | None = None
    reason: str | None = None
    result_shape: ResultShape | None = None


@attrs.define(kw_only=True, eq=False)
class FakeJob:
    """A job held by the fake. Times are ``time.monotonic()`` values."""

    id: str
    args: Mapping[str, Any]
    prompt: str
    callback_url: str | None
    amount: Decimal
    created_at: float
    created_wall: datetime
    queue_end: float
    run_end: float
    final_status: int
    reason: str
    result_shape: ResultShape
    terminal_answered: bool = False

    def status(self, now: float) -> int:
        """Return the status number at ``now``."""
        if now < self.queue_end:
            return 0
        if now < self.run_end:
            return 1
        return self.final_status


@attrs.define(kw_only=True)
class FakeStats:
    """What the fake saw. Read them; the fake updates them."""

    creates_received: int = 0
    jobs_created: int = 0
    jobs_by_prompt: Counter[str] = attrs.field(factory=Counter)
    creates_rejected: int = 0
    queries: int = 0
    queries_by_job: Counter[str] = attrs.field(factory=Counter)
    queries_after_terminal: Counter[str] = attrs.field(factory=Counter)
    faults: Counter[str] = attrs.field(factory=Counter)
    rate_limited: int = 0
    callbacks_sent: int = 0
    callbacks_failed: int = 0
    downloads: list[dict[str, str]] = attrs.field(factory=list)
    clips_rendered: int = 0


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


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


class FakeShortAPI:
    """A local stand-in for ShortAPI's job service, for tests and demos.

    Use it as an async context manager; it listens on ``host`` (127.0.0.1) and a free port, and
    serves create, query and result files (a real MP4, with Range support): the bundled sample,
    or with ``render`` a clip made from the job's image.

    Args:
        api_key: the key it accepts (``fake.api_key``).
        queue_time: seconds each job is queued.
        run_time: seconds each job runs.
        jitter: relative random spread of both times.
        speed: divides every duration, to run time faster.
        seed: seeds every random choice, so runs repeat.
        failure_rate: share of jobs that fail (and are refunded).
        failure_reason: their error text.
        unknown_status: when set, jobs end with this raw status number instead of 2.
        result_shape: how result URLs are given: ``videos``, ``images``, ``url``, ``video_url``.
        extra_fields: add unknown keys to every answer, to prove clients ignore them.
        balance: USD available; ``None`` is unlimited. A create it cannot pay gets HTTP 402.
        plan: per-job override, called with the args of each created job.
        fault_rates: random faults per endpoint, e.g. ``{"create": {Fault.HTML_502: 0.1}}``.
        retry_after: the Retry-After header sent with 429 answers.
        slow_delay: seconds a ``SLOW_AFTER`` answer waits.
        query_rate_limit: queries per second over all jobs; beyond it the fake answers 429.
        url_ttl: seconds a result URL stays valid after it was handed out (then HTTP 410).
        callback_drop: share of callbacks never sent.
        callback_duplicate: share of callbacks sent twice.
        callback_delay: seconds between a job's end and its callback.
        callback_shape: ``envelope`` (``{"code":0,"data":...}``) or ``bare`` (the data alone).
        render: serve each finished job a clip made from its ``first_frame_image`` data URI (a
            zoom or a pan, chosen by job id), rendered once on first download; needs Pillow and
            PyAV. URLs, unreadable images and missing extras get the bundled sample.
        host: the address to listen on.
        port: the port, 0 for a free one.
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        queue_time: float = 0.0,
        run_time: float = 0.0,
        jitter: float = 0.0,
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
        url_ttl: float | None = None,
        callback_drop: float = 0.0,
        callback_duplicate: float = 0.0,
        callback_delay: float = 0.0,
        callback_shape: Literal["envelope", "bare"] = "envelope",
        render: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.api_key = api_key
        self.queue_time = queue_time
        self.run_time = run_time
        self.jitter = jitter
        self.speed = speed
        self.failure_rate = failure_rate
        self.failure_reason = failure_reason
        self.unknown_status = unknown_status
        self.result_shape: ResultShape = result_shape
        self.extra_fields = extra_fields
        self._balance = balance
        # Jobs that will fail, by end time: their charge goes back to the balance when they end.
        self._refunds: list[tuple[float, int, Decimal]] = []
        self.plan = plan
        self.retry_after = retry_after
        self.slow_delay = slow_delay
        self.url_ttl = url_ttl
        self.callback_drop = callback_drop
        self.callback_duplicate = callback_duplicate
        self.callback_delay = callback_delay
        self.callback_shape = callback_shape
        self.render = render
        self.stats = FakeStats()
        self._host = host
        self._port = port
        self._rng = random.Random(seed)  # noqa: S311 - test data, not secrets
        self._jobs: dict[str, FakeJob] = {}
        self._scripts: dict[str, list[Fault | None]] = {"create": [], "query": [], "download": []}
        self._rates: dict[str, dict[Fault, float]] = {
            k: dict(v) for k, v in (fault_rates or {}).items()
        }
        self._rate = query_rate_limit
        self._tokens = max(1.0, (query_rate_limit or 0) / 10)
        self._refilled = time.monotonic()
        self._video = resources.files("shortwan.testing").joinpath("data/sample.mp4").read_bytes()
        # One task per job: requests that race for a new clip all await the same render, and
        # every request gets the same bytes (two renders can differ), so resumed downloads fit.
        self._clips: dict[str, asyncio.Task[bytes | None]] = {}
        self._callbacks: list[tuple[float, int, str, bool]] = []
        self._callback_seq = itertools.count()
        self._callback_wake: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Request handlers still running: a slow answer whose client has gone away keeps running
        # after aiohttp's shutdown gives up on it, so close ends them itself.
        self._handlers: set[asyncio.Task[Any]] = set()
        self.url = ""

    @property
    def balance(self) -> Decimal | None:
        """USD left (``None``: unlimited); failed jobs' charges are back once they have ended."""
        if self._balance is not None:
            now = time.monotonic()
            while self._refunds and self._refunds[0][0] <= now:
                self._balance += heapq.heappop(self._refunds)[2]
        return self._balance

    @balance.setter
    def balance(self, value: Decimal | None) -> None:
        self._balance = value

    @property
    def jobs(self) -> Mapping[str, FakeJob]:
        """Every job created, by id (read-only)."""
        return MappingProxyType(self._jobs)

    def __repr__(self) -> str:
        return f"<FakeShortAPI {self.url or 'not started'} jobs={len(self._jobs)}>"

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> FakeShortAPI:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._track_handler])
        app.router.add_post("/api/v1/job/create", self._create)
        app.router.add_get("/api/v1/job/query", self._query)
        app.router.add_get("/files/{name}", self._file)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = self._port
        for address in self._runner.addresses:
            port = address[1]
        self.url = f"http://{self._host}:{port}"
        self._callback_wake = asyncio.Event()
        self._spawn(self._deliver_callbacks())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop serving and end every background task."""
        for task in [*self._tasks, *self._clips.values()]:
            task.cancel()
        if self._tasks or self._clips:
            await asyncio.gather(*self._tasks, *self._clips.values(), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for handler in self._handlers:
            handler.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

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

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- knobs ---------------------------------------------------------------------------------

    def add_jobs(
        self, count: int, *, args: Mapping[str, Any] | None = None, prefix: str = "seeded"
    ) -> list[str]:
        """Create ``count`` jobs directly, as if another client had made them; return their ids.

        For tests and benchmarks of :meth:`AsyncShortWan.attach` at scale: no HTTP, no stats
        for creates. Each job's prompt is ``"{prefix} {n}"``; timing follows the fake's knobs.
        """
        base: dict[str, Any] = {"first_frame_image": "https://example.com/s.png", "duration": 5}
        base.update(args or {})
        amount = Decimal("0.085") * int(base["duration"])
        ids = []
        for n in range(count):
            job_args = {**base, "prompt": f"{prefix} {n}"}
            ids.append(self._make_job(job_args, None, amount).id)
        return ids

    def script(self, endpoint: Endpoint, faults: list[Fault | None]) -> None:
        """Queue faults for the next requests to ``endpoint``, in order (``None``: answer well)."""
        self._scripts[endpoint].extend(faults)

    def set_fault_rates(self, endpoint: Endpoint, rates: Mapping[Fault, float]) -> None:
        """Replace the random fault rates of ``endpoint``."""
        self._rates[endpoint] = dict(rates)

    def _fault(self, endpoint: Endpoint) -> Fault | None:
        script = self._scripts[endpoint]
        if script:
            fault = script.pop(0)
        else:
            fault = None
            draw = self._rng.random()
            for kind, rate in self._rates.get(endpoint, {}).items():
                draw -= rate
                if draw < 0:
                    fault = kind
                    break
        if fault is not None:
            self.stats.faults[f"{endpoint}:{fault.name}"] += 1
        return fault

    # --- answers -------------------------------------------------------------------------------

    def _envelope(self, code: int, data: Any = None, message: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"code": code}
        if data is not None:
            body["data"] = data
        if message is not None:
            body["message"] = message
        if self.extra_fields:
            body["trace_id"] = secrets.token_hex(8)
        return body

    def _json(self, body: Mapping[str, Any], status: int = 200) -> web.Response:
        return web.json_response(body, status=status)

    def _authorized(self, request: web.Request) -> bool:
        expected = f"Bearer {self.api_key}"
        return secrets.compare_digest(request.headers.get("Authorization", ""), expected)

    async def _faulty(
        self, request: web.Request, fault: Fault, answer: Callable[[], web.Response] | None
    ) -> web.StreamResponse:
        """Answer with ``fault``; ``answer`` makes the good answer the fault spoils."""
        if fault is Fault.RATE_LIMIT:
            return web.json_response(
                self._envelope(429, message="too many requests"),
                status=429,
                headers={"Retry-After": self.retry_after},
            )
        if fault is Fault.UNAVAILABLE:
            return self._json(self._envelope(503, message="service unavailable"), status=503)
        if fault is Fault.CODE_3000:
            return self._json(
                self._envelope(3000, message="upstream model temporarily unavailable")
            )
        if fault in (Fault.RESET_BEFORE, Fault.RESET_AFTER):
            transport = request.transport
            if transport is not None:
                transport.abort()
            return web.Response()
        good = answer() if answer is not None else self._json(self._envelope(0, {}))
        if fault is Fault.SLOW_AFTER:
            await asyncio.sleep(self.slow_delay)
            return good
        if fault is Fault.HTML_502:
            page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
            return web.Response(status=502, text=page, content_type="text/html")
        raw = good.body if isinstance(good.body, bytes) else b"{}"
        return web.Response(body=raw[: max(1, len(raw) // 2)], content_type="application/json")

    # --- create --------------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.StreamResponse:
        self.stats.creates_received += 1
        if not self._authorized(request):
            return self._json(self._envelope(401, message="invalid api key"), status=401)
        fault = self._fault("create")
        if fault is not None and fault not in _CREATES_FIRST:
            return await self._faulty(request, fault, None)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            self.stats.creates_rejected += 1
            return self._json(self._envelope(400, message="the body is not JSON"), status=400)
        problems, args = check_create(body)
        if problems:
            self.stats.creates_rejected += 1
            return self._json(self._envelope(400, message="; ".join(problems)), status=400)
        amount = PRICE * int(args.get("duration", 5))
        balance = self.balance
        if balance is not None:
            if amount > balance:
                return self._json(self._envelope(402, message="insufficient balance"), status=402)
            self._balance = balance - amount
        job = self._make_job(args, body.get("callback_url"), amount)

        def answer() -> web.Response:
            return self._json(self._envelope(0, {"job_id": job.id, "amount": str(amount)}))

        if fault is not None:
            return await self._faulty(request, fault, answer)
        return answer()

    def _spread(self, value: float) -> float:
        if self.jitter:
            value *= max(0.0, 1.0 + self.jitter * (2 * self._rng.random() - 1))
        return value / self.speed

    def _make_job(self, args: Mapping[str, Any], callback: str | None, amount: Decimal) -> FakeJob:
        plan = (self.plan(args) if self.plan is not None else None) or JobPlan()
        queue = self._spread(self.queue_time) if plan.queue_time is None else plan.queue_time
        run = self._spread(self.run_time) if plan.run_time is None else plan.run_time
        if plan.outcome is None:
            failed = self._rng.random() < self.failure_rate
            final = 3 if failed else (self.unknown_status or 2)
        elif plan.outcome == "succeed":
            final = 2
        elif plan.outcome == "fail":
            final = 3
        else:
            final = int(plan.outcome)
        now = time.monotonic()
        job = FakeJob(
            id=secrets.token_hex(12),
            args=dict(args),
            prompt=str(args.get("prompt", "")),
            callback_url=callback,
            amount=amount,
            created_at=now,
            created_wall=datetime.now(timezone.utc),
            queue_end=now + queue,
            run_end=now + queue + run,
            final_status=final,
            reason=plan.reason or self.failure_reason,
            result_shape=plan.result_shape or self.result_shape,
        )
        self._jobs[job.id] = job
        if final >= 3 and self._balance is not None:
            # Failed jobs are refunded (protocol, section 7), when they end.
            heapq.heappush(self._refunds, (job.run_end, next(self._callback_seq), amount))
        self.stats.jobs_created += 1
        self.stats.jobs_by_prompt[job.prompt] += 1
        if callback:
            self._schedule_callback(job.id, job.run_end + self.callback_delay)
        return job

    # --- query ---------------------------------------------------------------------------------

    def _rate_ok(self) -> bool:
        if self._rate is None:
            return True
        now = time.monotonic()
        burst = max(1.0, self._rate / 10)
        self._tokens = min(burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    async def _query(self, request: web.Request) -> web.StreamResponse:
        self.stats.queries += 1
        if not self._authorized(request):
            return self._json(self._envelope(401, message="invalid api key"), status=401)
        if not self._rate_ok():
            self.stats.rate_limited += 1
            wait = f"{1.0 / (self._rate or 1.0):.3f}"
            return web.json_response(
                self._envelope(429, message="rate limited"),
                status=429,
                headers={"Retry-After": wait},
            )
        fault = self._fault("query")
        job_id = request.query.get("id", "")
        job = self._jobs.get(job_id)

        def answer() -> web.Response:
            if job is None:
                return self._json(self._envelope(1, message=f"job {job_id!r} not found"))
            return self._json(self._envelope(0, self.job_data(job)))

        if fault is not None:
            if fault in (Fault.RESET_AFTER, Fault.SLOW_AFTER, Fault.HTML_502, Fault.TRUNCATED_JSON):
                return await self._faulty(request, fault, answer)
            return await self._faulty(request, fault, None)
        if job is not None:
            self.stats.queries_by_job[job.id] += 1
            if job.terminal_answered:
                self.stats.queries_after_terminal[job.id] += 1
            if job.status(time.monotonic()) >= 2:
                job.terminal_answered = True
        return answer()

    def result_url(self, job: FakeJob) -> str:
        """Return a fresh result URL for ``job`` (its validity starts now)."""
        return f"{self.url}/files/{job.id}.mp4?issued={time.monotonic():.6f}"

    def job_data(self, job: FakeJob, now: float | None = None) -> dict[str, Any]:
        """Return the ``data`` of a query answer about ``job``."""
        now = time.monotonic() if now is None else now
        status = job.status(now)
        created = job.created_wall
        data: dict[str, Any] = {
            "id": job.id,
            "model": "alibaba/wan-2.7/image-to-video",
            "args": dict(job.args),
            "key_name": "default",
            "status": status,
            "credit": str(job.amount),
            "created_at": _iso(created),
            "updated_at": _iso(created + timedelta(seconds=min(now, job.run_end) - job.created_at)),
        }
        if status >= 2:
            data["finished_at"] = _iso(created + timedelta(seconds=job.run_end - job.created_at))
        if status == 2:
            url = self.result_url(job)
            shape = job.result_shape
            if shape in ("videos", "images"):
                item: dict[str, Any] = {"url": url}
                if self.extra_fields:
                    item["width"] = 1920
                data["result"] = {shape: [item]}
            else:
                data["result"] = {shape: url}
            if self.extra_fields:
                data["result"]["seed"] = 42
        elif status >= 3:
            data["error"] = job.reason
            data["refunded"] = True
        if self.extra_fields:
            data["progress_hint"] = None
            data["region"] = "test"
        return data

    # --- files ---------------------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self.stats.downloads.append(dict(request.headers))
        fault = self._fault("download")
        job = self._jobs.get(request.match_info["name"].removesuffix(".mp4"))
        if job is not None and job.status(time.monotonic()) != 2:
            job = None  # only a finished job has a file
        if fault is not None:
            # Faults that send video send the job's own bytes, so a download resumed after one
            # of them still assembles one whole file.
            sends_video = fault in (Fault.TRUNCATED_JSON, Fault.SLOW_AFTER)
            video = await self._video_for(job) if sends_video and job is not None else self._video
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
            return await self._faulty(request, fault, lambda: web.Response(body=video))
        if job is None:
            return web.Response(status=404, text="no such file")
        if self.url_ttl is not None:
            try:
                issued = float(request.query.get("issued", "0"))
            except ValueError:
                issued = 0.0
            if time.monotonic() - issued > self.url_ttl:
                return web.Response(status=410, text="this link has expired")
        return _ranged(request, await self._video_for(job))

    async def _video_for(self, job: FakeJob) -> bytes:
        """Return the bytes served for ``job``: its rendered clip, else the bundled sample."""
        if not self.render:
            return self._video
        task = self._clips.get(job.id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._render_clip(job))
            self._clips[job.id] = task
        # Shielded: a client hanging up must not cancel a render other requests wait for.
        clip = await asyncio.shield(task)
        return self._video if clip is None else clip

    async def _render_clip(self, job: FakeJob) -> bytes | None:
        arg = job.args.get("first_frame_image")
        image = image_bytes_from_arg(arg) if isinstance(arg, str) else None
        if image is None:
            return None
        # Alternate the two motions by id, so a batch shows both and a job always gets the same.
        motion = "zoom" if int(job.id[-1], 16) % 2 == 0 else "pan"
        clip = await asyncio.to_thread(render_clip, image, motion=motion)
        if clip is None:
            logger.warning("cannot render a clip; serving the sample", extra={"job_id": job.id})
        else:
            self.stats.clips_rendered += 1
        return clip

    # --- callbacks -----------------------------------------------------------------------------

    def _schedule_callback(self, job_id: str, due: float, *, duplicate: bool = False) -> None:
        heapq.heappush(self._callbacks, (due, next(self._callback_seq), job_id, duplicate))
        if self._callback_wake is not None:
            self._callback_wake.set()

    async def _deliver_callbacks(self) -> None:
        assert self._callback_wake is not None  # noqa: S101 - set before the task starts
        while True:
            if not self._callbacks:
                self._callback_wake.clear()
                await self._callback_wake.wait()
                continue
            due, _seq, job_id, duplicate = self._callbacks[0]
            wait = due - time.monotonic()
            if wait > 0:
                self._callback_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._callback_wake.wait(), wait)
                continue
            heapq.heappop(self._callbacks)
            job = self._jobs[job_id]
            if not duplicate:
                if self._rng.random() < self.callback_drop:
                    continue
                if self._rng.random() < self.callback_duplicate:
                    self._schedule_callback(job_id, time.monotonic() + 0.01, duplicate=True)
            self._spawn(self._send_callback(job))

    async def _send_callback(self, job: FakeJob) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        data = self.job_data(job)
        body = data if self.callback_shape == "bare" else self._envelope(0, data)
        assert job.callback_url is not None  # noqa: S101 - only scheduled with one
        try:
            async with self._session.post(
                job.callback_url,
                data=json.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response:
                await response.read()
                ok = response.status < 400
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            self.stats.callbacks_sent += 1
        else:
            self.stats.callbacks_failed += 1
