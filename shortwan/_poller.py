"""The shared poller: one loop per client for every job, a heap of due times, a global query rate.

Each job is first asked about when it is expected to be done (learned from the jobs seen finishing),
then at gaps that grow with its age. The loop never sleeps per job: memory per waiting job is its
record and one heap entry.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable

import attrs
from anyio.abc import TaskGroup

from ._config import PollPolicy
from ._errors import (
    APIError,
    JobFailedError,
    MalformedResponseError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    ShortWanError,
)
from ._models import ImageToVideo, JobSnapshot
from ._table import JobRecord, JobState, JobTable, state_for

__all__ = ["DurationModel", "Poller", "PollerStatistics", "QueryWorkers"]

logger = logging.getLogger("shortwan")

# Jobs due this close together are asked about in one go: one wake-up for a burst.
_SLACK = 0.005
# The ``due`` of a job that is due now and not yet handed to anyone: the task that created it may
# still take it (see :meth:`Poller.query_if_due`); otherwise the burst's flush hands it out.
_DUE_NOW = -math.inf
# A job refused this many times in a row (unknown id, bad key) is failed instead of asked forever.
_MAX_FINAL_ERRORS = 3


@attrs.frozen(kw_only=True)
class PollerStatistics:
    """A snapshot of the shared poller's figures (see :meth:`Poller.statistics`).

    Attributes:
        queries_sent: status queries the poller sent and the service answered (one that
            failed after its retries is not counted).
        jobs_learned_from: finished jobs the running-time estimate was learned from.
        seconds_per_video_second: the estimate now: seconds of running time per second of
            720p video (1080p takes ``PollPolicy.resolution_factor`` times more).
    """

    queries_sent: int
    jobs_learned_from: int
    seconds_per_video_second: float


class DurationModel:
    """Learns how long jobs run: seconds per "unit", a unit being one second of 720p video.

    The estimate is a moving average in log space, fed by every finished job: the service's own
    timestamps when it gives ISO-8601 ones, else the middle of the last gap between queries.
    """

    def __init__(self, policy: PollPolicy) -> None:
        self._policy = policy
        self._log_estimate = math.log(policy.prior_seconds_per_video_second)
        self.samples = 0

    @property
    def seconds_per_unit(self) -> float:
        """The estimate now: seconds of running time per second of 720p video."""
        return math.exp(self._log_estimate)

    def units(self, request: ImageToVideo | None) -> float:
        if request is None:
            return 0.0
        factor = self._policy.resolution_factor if request.resolution == "1080p" else 1.0
        return request.duration * factor

    def expected(self, request: ImageToVideo | None) -> float:
        """Return the expected running time of a job, in seconds (0 when nothing is known)."""
        return self.seconds_per_unit * self.units(request)

    def observe(self, record: JobRecord, now: float, asked_at: float | None = None) -> None:
        """Learn from ``record``, which ended (``now``: when its end was heard).

        The service's own timing is taken when it is plausible; else what the queries tell,
        counted up to ``asked_at``, when the query that found it done was asked for: the way
        back of its answer is no part of the job.
        """
        units = self.units(record.request)
        if units <= 0:
            return
        took = _server_duration(record.snapshot)
        if took is None or not 0 < took <= now - record.submitted_at + 1.0:
            seen = now if asked_at is None else asked_at
            if record.last_pending_query_at is not None:
                took = (record.last_pending_query_at + seen) / 2 - record.submitted_at
            else:
                # Done at its first query: it ran for less than we waited. Lean early, so the next
                # first queries come sooner and see jobs still running.
                took = (seen - record.submitted_at) * 0.6
        if took <= 0:
            return
        weight = 0.5 if self.samples < 4 else 0.1
        self._log_estimate += weight * (math.log(took / units) - self._log_estimate)
        self.samples += 1


def _server_duration(snapshot: JobSnapshot | None) -> float | None:
    if snapshot is None:
        return None
    created, finished = snapshot.created, snapshot.finished
    if created is None or finished is None:
        return None
    if (created.tzinfo is None) != (finished.tzinfo is None):
        return None
    return (finished - created).total_seconds()


Query = Callable[[str], Awaitable[JobSnapshot]]


class QueryWorkers:
    """The queries of one poller in flight: at most ``limit`` at once, counted together whether a
    worker sends them or a task that asks for itself (:meth:`Poller.query_if_due`).

    A job handed over is marked ``querying`` and is then in exactly one place: an idle worker's
    hand-off, the ``ready`` queue, or a query under way. A busy worker takes the next ready job
    itself; an idle one is handed a job directly, so no worker wakes for nothing and no task is
    created per query.

    Args:
        limit: queries in flight at most (``PollPolicy.max_concurrent_queries``).
        ask: sends one query and applies its answer.
    """

    def __init__(self, *, limit: int, ask: Callable[[JobRecord], Awaitable[None]]) -> None:
        self._limit = limit
        self._ask = ask
        self._ready: deque[JobRecord] = deque()
        self._idle: deque[asyncio.Future[JobRecord]] = deque()
        self._in_flight = 0

    @property
    def has_room(self) -> bool:
        """Whether a query may start now without passing a job already waiting."""
        return not self._ready and self._in_flight < self._limit

    def start(self, task_group: TaskGroup) -> None:
        """Start the workers in ``task_group``; they run until it is cancelled."""
        for _ in range(self._limit):
            task_group.start_soon(self._worker, name="shortwan-query")

    def dispatch(self, record: JobRecord) -> None:
        """Have ``record`` asked about by a worker, as soon as one and a slot are free."""
        record.querying = True
        self._ready.append(record)
        self._hand_on()

    async def ask_here(self, record: JobRecord) -> None:
        """Ask about ``record`` in the calling task, in one of the slots (see :attr:`has_room`)."""
        record.querying = True
        self._in_flight += 1
        try:
            await self._ask(record)
        finally:
            self._in_flight -= 1
            self._hand_on()

    def _hand_on(self) -> None:
        """Give waiting jobs to idle workers, now that a slot is free."""
        ready, idle = self._ready, self._idle
        while ready and idle and self._in_flight < self._limit:
            handoff = idle.popleft()
            if not handoff.done():  # a worker cancelled while idle leaves a dead handoff
                self._in_flight += 1
                handoff.set_result(ready.popleft())

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        ready, idle = self._ready, self._idle
        while True:
            if ready and self._in_flight < self._limit:
                record = ready.popleft()
                self._in_flight += 1
            else:
                handoff: asyncio.Future[JobRecord] = loop.create_future()
                idle.append(handoff)
                record = await handoff  # counted in flight by whoever handed it over
            try:
                # The transport paces every query attempt through the client's query budget.
                await self._ask(record)
            finally:
                self._in_flight -= 1


class Poller:
    """Asks the service about every tracked job that is not finished, on one shared schedule."""

    def __init__(
        self,
        *,
        table: JobTable,
        query: Query,
        policy: PollPolicy,
        rng: random.Random | None = None,
    ) -> None:
        self.table = table
        self.policy = policy
        self.model = DurationModel(policy)
        self._query = query
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._heap: list[tuple[float, int, JobRecord]] = []
        self._seq = itertools.count()
        self._workers = QueryWorkers(limit=policy.max_concurrent_queries, ask=self._ask)
        # Jobs due now, not yet handed out; one flush per burst of them (see _hold).
        self._due_now: list[JobRecord] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        # Created inside the loop by run(); schedule() before then only fills the heap.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._queries_sent = 0
        # Told of every job it starts polling, and of every end the service reports (a shared
        # store claims the one and publishes the other).
        self.on_track: Callable[[JobRecord], None] | None = None
        self.on_end: Callable[[JobRecord], None] | None = None

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def queries_sent(self) -> int:
        """Status queries this poller sent and the service answered."""
        return self._queries_sent

    def statistics(self) -> PollerStatistics:
        """Return a snapshot of the poller's figures; later changes do not touch it."""
        return PollerStatistics(
            queries_sent=self._queries_sent,
            jobs_learned_from=self.model.samples,
            seconds_per_video_second=self.model.seconds_per_unit,
        )

    def schedule(self, record: JobRecord, delay: float) -> None:
        """Ask about ``record`` in ``delay`` seconds (sooner than already planned, never later)."""
        if record.querying:
            if delay <= _SLACK:
                record.recheck = True
            return
        if delay <= _SLACK and self._loop is not None:
            # Due now: for the task that made it to take, else for the workers within _SLACK.
            self._hold(record)
            return
        due = time.monotonic() + max(delay, 0.0)
        if due >= record.due:
            return
        record.due = due
        heapq.heappush(self._heap, (due, next(self._seq), record))
        if self._heap[0][2] is record and self._wake is not None:
            self._wake.set()

    def defer(self, record: JobRecord, delay: float) -> None:
        """Ask about ``record`` in ``delay`` seconds and not before, whatever was planned."""
        record.due = math.inf  # the heap's earlier entry for it is skipped when it comes up
        self.schedule(record, delay)

    def track(self, record: JobRecord) -> None:
        """Start polling a new job: first when it is expected to be done."""
        if self.on_track is not None:
            self.on_track(record)
        if record.callback:
            # The callback should come at the job's end; the safety net looks a while after.
            delay = self.model.expected(record.request) + self.policy.callback_interval
        elif record.request is None:
            delay = 0.0  # attached by id: we know nothing, ask now
        else:
            expected = self.model.expected(record.request)
            delay = max(self.policy.min_interval, self.policy.first_query_fraction * expected)
            delay = self._jittered(delay)
        self.schedule(record, delay)

    def _jittered(self, delay: float) -> float:
        # Jobs submitted together must not all be asked about in the same instant.
        jitter = self.policy.jitter
        if jitter:
            delay *= 1.0 + jitter * (2.0 * self._rng.random() - 1.0)
        return max(delay, 0.0)

    def _next_gap(self, record: JobRecord, now: float) -> float:
        policy = self.policy
        if record.callback or record.elsewhere:
            return policy.callback_interval
        age = now - record.submitted_at
        return self._jittered(
            min(policy.max_interval, max(policy.min_interval, policy.growth * age))
        )

    async def run(self, task_group: TaskGroup) -> None:
        """Send queries as they fall due, until cancelled.

        One loop sleeps until the earliest due time (or until an earlier one is scheduled) and
        takes every job due by then, give or take ``_SLACK``, so a burst of jobs costs one wake-up.
        ``max_concurrent_queries`` workers send the queries (see :class:`QueryWorkers`).
        """
        loop = self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._workers.start(task_group)
        heap = self._heap
        while True:
            horizon = time.monotonic() + _SLACK
            while heap and heap[0][0] <= horizon:
                due, _seq, record = heapq.heappop(heap)
                if due != record.due or not record.is_live:
                    continue  # superseded by an earlier entry, or nothing left to ask
                record.due = math.inf
                self._dispatch(record)
            self._wake.clear()
            if not heap:
                await self._wake.wait()
                continue
            timer = loop.call_later(heap[0][0] - time.monotonic(), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    def _hold(self, record: JobRecord) -> None:
        """Mark ``record`` due now, to be asked about within ``_SLACK``.

        The task that made the job may take it at once (:meth:`query_if_due`); whatever is
        left is handed to the workers by one timer for the whole burst. A timer, not a callback
        for the next loop iteration: a burst whose jobs are all taken costs no extra iteration.
        """
        if record.due == _DUE_NOW:
            return
        record.due = _DUE_NOW
        self._due_now.append(record)
        loop = self._loop
        assert loop is not None  # noqa: S101 - only called once run() started
        if self._flush_timer is None and not loop.is_closed():
            self._flush_timer = loop.call_later(_SLACK, self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        due_now, self._due_now = self._due_now, []
        for record in due_now:
            if record.due != _DUE_NOW:
                continue  # taken by its own task meanwhile, or planned again
            record.due = math.inf
            if record.is_live:
                self._dispatch(record)

    def _dispatch(self, record: JobRecord) -> None:
        self._workers.dispatch(record)

    async def query_if_due(self, record: JobRecord) -> None:
        """Ask about ``record`` in the calling task if it is due now and a query slot is free.

        A batch's sender calls this right after it created the job: a job done at once (or whose
        first query is due at once) is then asked about with no hand-off to a worker and back.
        It takes the job under the same bookkeeping as a worker (``querying``, the slots of
        ``max_concurrent_queries``), so a job never has two queries in flight. A job that is not
        due now, or is already being asked about, is left to the poller; one that finds every
        slot taken (or the workers behind on their queue) joins the workers' queue at once.
        """
        if record.due != _DUE_NOW or record.querying:
            return  # not due now, or a worker has it
        record.due = math.inf
        if not record.is_live:
            return
        if not self._workers.has_room:
            self._dispatch(record)  # the workers' queue, at once rather than at the flush
            return
        try:
            await self._workers.ask_here(record)
        except BaseException:
            # Cancelled while waiting for the answer (the batch stopped; nothing else leaves
            # _ask with an exception): the job is still tracked, so a worker asks again.
            record.querying = False
            self.schedule(record, 0.0)
            raise

    async def _ask(self, record: JobRecord) -> None:
        asked_at = time.monotonic()
        try:
            snapshot = await self._query(record.id)
        except ShortWanError as exc:
            self._failed_query(record, exc)
            return
        except Exception:  # a bug must not stop the poller for every other job
            logger.exception("query of job %s crashed", record.id, extra={"job_id": record.id})
            record.querying = False
            self.schedule(record, self.policy.max_interval)
            return
        self._queries_sent += 1
        self.apply(record, snapshot, asked_at=asked_at)

    def _failed_query(self, record: JobRecord, exc: ShortWanError) -> None:
        record.querying = False
        now = time.monotonic()
        # Too many requests, an overloaded service or a lost connection say nothing about the
        # job: ask again later, however often. Only refusals count toward giving up.
        final = isinstance(exc, APIError | MalformedResponseError) and not isinstance(
            exc, RateLimitError | ServiceUnavailableError | ServerError
        )
        record.final_errors = record.final_errors + 1 if final else 0
        if final and record.final_errors >= _MAX_FINAL_ERRORS:
            logger.error(
                "job %s: giving up after %d refused queries: %s",
                record.id,
                record.final_errors,
                exc,
                extra={"job_id": record.id},
            )
            record.error = exc
            self.table.transition(record, JobState.FAILED)
            return
        # Throttling and outages are routine here (the transport already retried): INFO, with
        # WARNING kept for refusals that may end in giving up on the job.
        logger.log(
            logging.WARNING if final else logging.INFO,
            "query of job %s failed, will ask again: %s",
            record.id,
            exc,
            extra={"job_id": record.id},
        )
        gap = self._next_gap(record, now)
        if isinstance(exc, RateLimitError) and exc.retry_after is not None:
            # Asked to wait: never sooner than that (the transport pauses every call as well).
            gap = max(gap, min(exc.retry_after, self.policy.max_interval))
        self.schedule(record, gap)

    def _next_gap_or_recheck(self, record: JobRecord, now: float) -> float:
        if record.recheck:
            record.recheck = False
            return 0.0
        return self._next_gap(record, now)

    def apply(
        self,
        record: JobRecord,
        snapshot: JobSnapshot,
        *,
        answered: bool = True,
        asked_at: float | None = None,
    ) -> None:
        """Record what the service said about ``record`` and plan the next query if needed.

        ``answered=False``: the snapshot is an end another process saw (no query was made
        here), so it teaches nothing about running times and is not announced again.
        ``asked_at``: when the query that brought it was sent (default: now). A job found done
        ended before then: the answer's way back says nothing of how long it ran.
        """
        if record.is_terminal:
            return  # a late answer never moves a finished job backwards
        now = time.monotonic()
        record.querying = False
        record.queries += 1
        record.final_errors = 0
        record.last_query_at = now
        record.raw_status = snapshot.raw_status
        if snapshot.credit is not None and record.amount is None:
            self.table.set_amount(record, snapshot.credit)
        state = state_for(snapshot.raw_status)
        if state.is_terminal:
            # Kept for the end only: a waiting job's answers (with the echoed args) would cost
            # more memory than the rest of its record.
            record.snapshot = snapshot
        if state is JobState.SUCCEEDED:
            video = snapshot.video
            if video is None:
                record.error = MalformedResponseError(
                    "the job succeeded but its answer carries no video URL", job_id=record.id
                )
                state = JobState.FAILED
            else:
                record.video = video
        elif state is JobState.FAILED:
            record.error = JobFailedError(
                record.id,
                snapshot.error,
                refunded=snapshot.refunded,
                status=snapshot.raw_status,
            )
        if state.is_terminal:
            if answered:
                self.model.observe(record, now, asked_at)
            self.table.transition(record, state)
            if answered and self.on_end is not None:
                try:
                    self.on_end(record)
                except Exception:  # sharing an end must never hurt the job or the poller
                    logger.exception("job %s: its end could not be shared", record.id)
            return
        record.last_pending_query_at = now
        if record.state is not JobState.TIMED_OUT:
            self.table.transition(record, state)
        self.schedule(record, self._next_gap_or_recheck(record, now))
