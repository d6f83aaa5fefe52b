"""The fake's jobs: how long each takes, how it ends, what it costs, and how a query shows it."""

from __future__ import annotations

import heapq
import itertools
import math
import random
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, Literal

import attrs

from ._rules import MODEL
from ._stats import FakeStats

__all__ = [
    "MODEL_JITTER",
    "PRICE",
    "QUEUE_SECONDS",
    "RUN_SECONDS_PER_VIDEO_SECOND",
    "FakeJob",
    "JobBook",
    "JobPlan",
    "ResultShape",
    "Timing",
    "describe",
    "duration_of",
    "resolution_of",
]

PRICE: Final = Decimal("0.085")
ResultShape = Literal["videos", "images", "url", "video_url"]
RESULT_SHAPES: Final = ("videos", "images", "url", "video_url")

# The timing model when no time is given (protocol.md §7, scaled down for tests): a short queue,
# then a run proportional to the video's length and longer at 1080p. A 5 s 1080p job takes about
# 0.1 + 5 × 0.08 = 0.5 s, a 15 s 1080p job 1.3 s, a 2 s 720p job 0.2 s, each within ±25 %.
QUEUE_SECONDS: Final = 0.1
RUN_SECONDS_PER_VIDEO_SECOND: Final = MappingProxyType({"720p": 0.05, "1080p": 0.08})
MODEL_JITTER: Final = 0.25


@attrs.frozen(kw_only=True)
class JobPlan:
    """How one job goes; ``None`` fields take the server's defaults.

    A plan that sets ``queue_time`` or ``run_time`` gives the job fixed times: on a server that
    follows the request's timing model, the time it leaves unset is then 0.

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

    @property
    def duration(self) -> int:
        """Return the video's length in seconds, as asked (5 when not given)."""
        return duration_of(self.args)

    @property
    def resolution(self) -> str:
        """Return the asked resolution, ``720p`` or ``1080p`` (the default)."""
        return resolution_of(self.args)


def duration_of(args: Mapping[str, Any]) -> int:
    """Return the ``duration`` of ``args``: the asked seconds, 5 when absent or unusable."""
    value = args.get("duration", 5)
    return value if type(value) is int and 2 <= value <= 15 else 5


def resolution_of(args: Mapping[str, Any]) -> str:
    """Return the ``resolution`` of ``args``: ``720p`` when asked, else ``1080p``."""
    return "720p" if args.get("resolution") == "720p" else "1080p"


def _check_seconds(name: str, value: float | None) -> None:
    if value is not None and not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")


@attrs.frozen(kw_only=True)
class Timing:
    """When jobs run: fixed times, or the timing model that follows each request.

    With neither ``queue_time`` nor ``run_time`` given, a job waits about ``QUEUE_SECONDS``, then
    runs ``RUN_SECONDS_PER_VIDEO_SECOND[resolution] × duration``, each spread by ``jitter``
    (default ``MODEL_JITTER``). Giving either time fixes both (the other is 0) and makes the
    default jitter 0. ``speed`` divides the server's times, not a plan's.
    """

    queue_time: float | None = None
    run_time: float | None = None
    jitter: float | None = None
    speed: float = 1.0

    def __attrs_post_init__(self) -> None:
        _check_seconds("queue_time", self.queue_time)
        _check_seconds("run_time", self.run_time)
        if self.jitter is not None and not (self.jitter >= 0 and math.isfinite(self.jitter)):
            raise ValueError(f"jitter must be a share >= 0, not {self.jitter!r}")
        if not (self.speed > 0 and math.isfinite(self.speed)):
            raise ValueError("speed must be > 0")

    @property
    def fixed(self) -> bool:
        """Whether a time was given, so the request's shape does not matter."""
        return self.queue_time is not None or self.run_time is not None

    def times(
        self, args: Mapping[str, Any], plan: JobPlan, rng: random.Random
    ) -> tuple[float, float]:
        """Return ``(queue, run)`` seconds for a job of ``args`` under ``plan``."""
        planned = plan.queue_time is not None or plan.run_time is not None
        if planned and not self.fixed:
            return plan.queue_time or 0.0, plan.run_time or 0.0
        if self.fixed:
            jitter = self.jitter or 0.0
            base_queue, base_run = self.queue_time or 0.0, self.run_time or 0.0
        else:
            jitter = MODEL_JITTER if self.jitter is None else self.jitter
            base_queue = QUEUE_SECONDS
            base_run = RUN_SECONDS_PER_VIDEO_SECOND[resolution_of(args)] * duration_of(args)
        queue, run = plan.queue_time, plan.run_time
        if queue is None:
            queue = self._spread(base_queue, jitter, rng)
        if run is None:
            run = self._spread(base_run, jitter, rng)
        return queue, run

    def _spread(self, value: float, jitter: float, rng: random.Random) -> float:
        if jitter and value:
            value *= max(0.0, 1.0 + jitter * (2 * rng.random() - 1))
        return value / self.speed


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@attrs.define(kw_only=True, eq=False)
class JobBook:
    """Every job of the fake, with the balance that pays for them.

    Args:
        stats: the fake's counters.
        rng: the seeded source of outcomes (shared with faults and callbacks).
        timing_rng: the seeded source of jitter, apart so timing knobs never change outcomes.
        timing: how long jobs take.
        failure_rate: share of jobs that fail (and are refunded).
        failure_reason: their error text.
        unknown_status: when set, jobs end with this raw status number instead of 2.
        result_shape: how result URLs are given.
        plan: per-job override, called with the args of each created job.
        balance: USD available; ``None`` is unlimited.
    """

    _stats: FakeStats
    _rng: random.Random
    _timing_rng: random.Random
    timing: Timing
    failure_rate: float
    failure_reason: str
    unknown_status: int | None
    result_shape: ResultShape
    plan: Callable[[Mapping[str, Any]], JobPlan | None] | None
    _balance: Decimal | None
    jobs: dict[str, FakeJob] = attrs.field(init=False, factory=dict)
    # Jobs that will fail, by end time: their charge goes back to the balance when they end.
    _refunds: list[tuple[float, int, Decimal]] = attrs.field(init=False, factory=list)
    _order: Iterator[int] = attrs.field(init=False, factory=itertools.count)

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.failure_rate <= 1:
            raise ValueError(f"failure_rate must be a share from 0 to 1, not {self.failure_rate!r}")
        if self.result_shape not in RESULT_SHAPES:
            raise ValueError(f"result_shape must be one of {', '.join(RESULT_SHAPES)}")

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

    def charge(self, amount: Decimal) -> bool:
        """Take ``amount`` from the balance; return False (taking nothing) when it cannot pay."""
        balance = self.balance
        if balance is None:
            return True
        if amount > balance:
            return False
        self._balance = balance - amount
        return True

    def make(self, args: Mapping[str, Any], callback: str | None, amount: Decimal) -> FakeJob:
        """Create a job for ``args`` (already checked and paid for) and return it."""
        plan = (self.plan(args) if self.plan is not None else None) or JobPlan()
        queue, run = self.timing.times(args, plan, self._timing_rng)
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
        self.jobs[job.id] = job
        if final >= 3 and self._balance is not None:
            # Failed jobs are refunded (protocol, section 7), when they end.
            heapq.heappush(self._refunds, (job.run_end, next(self._order), amount))
        self._stats.jobs_created += 1
        self._stats.jobs_by_prompt[job.prompt] += 1
        return job

    def add(self, count: int, args: Mapping[str, Any] | None, prefix: str) -> list[str]:
        """Create ``count`` jobs directly, prompts ``"{prefix} {n}"``; return their ids."""
        base: dict[str, Any] = {"first_frame_image": "https://example.com/s.png", "duration": 5}
        base.update(args or {})
        amount = PRICE * duration_of(base)
        return [
            self.make({**base, "prompt": f"{prefix} {n}"}, None, amount).id for n in range(count)
        ]


def describe(job: FakeJob, *, now: float, url: str, extra_fields: bool) -> dict[str, Any]:
    """Return the ``data`` of a query answer about ``job`` at ``now``, its result at ``url``."""
    status = job.status(now)
    created = job.created_wall
    data: dict[str, Any] = {
        "id": job.id,
        "model": MODEL,
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
        shape = job.result_shape
        if shape in ("videos", "images"):
            item: dict[str, Any] = {"url": url}
            if extra_fields:
                item["width"] = 1920
            data["result"] = {shape: [item]}
        else:
            data["result"] = {shape: url}
        if extra_fields:
            data["result"]["seed"] = 42
    elif status >= 3:
        data["error"] = job.reason
        data["refunded"] = True
    if extra_fields:
        data["progress_hint"] = None
        data["region"] = "test"
    return data
