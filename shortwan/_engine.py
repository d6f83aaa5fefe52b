"""The engine: the job table, the poller and the task group that owns all background work.

The task group lives in one background task started on first use, so a client works the same
whether it is used with ``async with`` or closed by hand; ``aclose`` cancels that task group and
leaves no task behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from ._adoption import Adoptions
from ._aio import wait_through_cancellation
from ._config import PollPolicy
from ._convert import snapshot_from_data
from ._creating import Creator
from ._errors import JobDetachedError, JobTimeoutError, MalformedResponseError, ShortWanError
from ._http import Transport
from ._models import ImageToVideo, Job, JobSnapshot, JobStatus, Video
from ._poller import Poller
from ._rate import QueryBudget, RateLimiter
from ._shared import JobEnd, SharedStore
from ._sharing import Sharing
from ._table import JobRecord, JobState, JobTable, state_for

if TYPE_CHECKING:
    from .callbacks import CallbackReceiver

__all__ = ["Engine"]

logger = logging.getLogger("shortwan")


class Engine:
    """Creates, tracks and waits for jobs. One per client."""

    def __init__(
        self,
        transport: Transport,
        *,
        poll: PollPolicy,
        max_finished: int | None,
        query_budget: QueryBudget | None = None,
        callbacks: CallbackReceiver | None = None,
        max_in_flight: int | None = None,
        shared: SharedStore | None = None,
    ) -> None:
        self.transport = transport
        self.callbacks = callbacks
        self.poll = poll
        self.table = JobTable(max_finished=max_finished)
        if query_budget is None and shared is not None:
            # One rate, one pause and one slot queue for every process sharing the store.
            query_budget = shared.query_budget(poll.max_queries_per_second)
        # Every query of the client, polls and get_job alike, retries included, is paced by this
        # one budget, which hears every answer (see _rate).
        self.query_budget: QueryBudget = query_budget or RateLimiter(poll.max_queries_per_second)
        transport.query_budget = self.query_budget
        # Built here, not on first use: it needs no running loop until run() starts it.
        self._poller = Poller(table=self.table, query=self.query, policy=poll)
        self.sharing: Sharing | None = None
        if shared is not None:
            self.sharing = Sharing(
                shared, table=self.table, poller=self._poller, apply_end=self.apply_end
            )
            self._poller.on_track = self.sharing.created
            self._poller.on_end = self.sharing.ended
        self._creator = Creator(
            transport=transport,
            table=self.table,
            poller=self._poller,
            callbacks=callbacks,
            target=self,
            max_in_flight=max_in_flight,
            ensure_running=self._ensure_running,
            claimed=None if self.sharing is None else self.sharing.claimed,
        )
        # Creating is the creator's: a job in the table before anything else can fail.
        self.create = self._creator.create
        self._adoptions = Adoptions(
            table=self.table,
            poller=self._poller,
            query=self.query,
            callbacks=callbacks,
            start_soon=self._start_soon,
        )
        self._task_group: TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._started: asyncio.Event | None = None
        if callbacks is not None:
            callbacks.add_target(self)  # it may confirm callbacks of workers that are gone

    @property
    def poller(self) -> Poller:
        """The shared poller of every job of the client."""
        return self._poller

    def _ensure_running(self) -> None:
        if self._runner is None:
            self.transport.session()  # refuses a closed client or a foreign loop, before any task
            self._started = asyncio.Event()
            self._runner = asyncio.get_running_loop().create_task(
                self._run(), name="shortwan-engine"
            )

    async def _run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            assert self._started is not None  # noqa: S101 - set with the runner
            self._started.set()
            tg.start_soon(self.poller.run, tg, name="shortwan-poller")
            if self.sharing is not None:
                tg.start_soon(self.sharing.run, name="shortwan-sharing")
            await anyio.sleep_forever()

    async def spawn(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``func(*args)`` in the engine's task group; it ends when the client closes."""
        self._ensure_running()
        assert self._started is not None  # noqa: S101 - set with the runner
        await self._started.wait()
        assert self._task_group is not None  # noqa: S101 - set before _started
        self._task_group.start_soon(func)

    def _start_soon(self, func: Callable[..., Coroutine[Any, Any, object]], *args: object) -> None:
        # Work that comes in while the client is closing (or before it ran) is not started.
        if self._task_group is not None:
            self._task_group.start_soon(func, *args)

    async def aclose(self) -> None:
        """Stop all background work; jobs still running are detached and listed in the log.

        A create under way may have made a paid job, so close first lets every one of them land
        in the table (each is bounded by its own timeouts), even through a native cancellation,
        which is raised once everything is shut down.
        """
        cancelled = await self._creator.close()
        if self.callbacks is not None:
            self.callbacks.forget_engine(self)
        if self.sharing is not None:
            # Ends seen last go out before the task that publishes them stops.
            await self.sharing.drain(timeout=2.0)
            self.sharing.close()
        self._adoptions.clear()
        # Detached before the task group stops, so a batch still running reports these jobs
        # (JobDetachedError) to its consumer instead of ending without a word about them.
        self._detach_pending()
        runner, self._runner = self._runner, None
        if runner is not None:
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
            else:
                runner.cancel()
            cancelled = await wait_through_cancellation({runner}) or cancelled
            if not runner.cancelled() and runner.exception() is not None:
                logger.error("the engine stopped with an error", exc_info=runner.exception())
            self._task_group = None
        self._detach_pending()  # anything a stopping batch attached meanwhile
        self.table.close()
        if cancelled is not None:
            raise cancelled

    def _detach_pending(self) -> None:
        pending = self.table.pending()
        if pending:
            ids = ", ".join(r.id for r in pending[:20])
            more = f" and {len(pending) - 20} more" if len(pending) > 20 else ""
            logger.warning(
                "closing with %d jobs not finished; they go on remotely, collect them with "
                "attach(): %s%s",
                len(pending),
                ids,
                more,
                extra={"job_ids": [r.id for r in pending]},
            )
            for record in pending:
                self.table.detach(record)

    async def look_up(self, job_id: str) -> JobSnapshot:
        """Return an end another process published for ``job_id``, else the answer to a query.

        A job's end never changes, so a published one answers as well as a query would (less
        the fields an end does not keep). An end a query reports is published.
        """
        sharing = self.sharing
        if sharing is None:
            return await self.query(job_id)
        end = await sharing.find(job_id)
        if end is not None:
            return end.snapshot()
        snapshot = await self.query(job_id)
        if snapshot.is_terminal:
            sharing.saw(snapshot)
        return snapshot

    def apply_end(self, record: JobRecord, end: JobEnd) -> None:
        """End ``record`` as another process saw it end (no query is made for it here)."""
        self.poller.apply(record, end.snapshot(), answered=False)

    async def query(self, job_id: str) -> JobSnapshot:
        """Send one query and read the answer into a snapshot of ``job_id``."""
        data = await self.transport.query(job_id)
        try:
            snapshot = snapshot_from_data(data, job_id=job_id)
        except MalformedResponseError as exc:
            exc.job_id = job_id
            raise
        if snapshot.id != job_id:
            # Never let an answer about another job stand in for this one.
            raise MalformedResponseError(
                f"asked for job {job_id}, the answer is about job {snapshot.id}",
                job_id=job_id,
                paths=["data.id"],
            )
        if snapshot.status is JobStatus.UNKNOWN:
            logger.warning(
                "job %s reports unknown status %d",
                job_id,
                snapshot.raw_status,
                extra={"job_id": job_id, "raw_status": snapshot.raw_status},
            )
        return snapshot

    @property
    def create_room(self) -> int | None:
        """How many creates a batch should have on the wire at once (``None``: no limit).

        What the connection pool leaves beside the poller's queries, and at least half of the
        pool: each of a batch's senders has one request out at a time, and a request past the
        pool only waits inside aiohttp for a connection (and costs CPU while it does).
        """
        connections = self.transport.connection_limit
        if connections is None:
            return None
        beside_queries = connections - self.poll.max_concurrent_queries
        return max(beside_queries, connections // 2, 1)

    def query_if_due(self, record: JobRecord) -> Coroutine[Any, Any, None]:
        """Ask about a job just created in this task, if its first query is due at once.

        Returns the poller's coroutine, to await: no layer of its own on the hot path.
        """
        return self._poller.query_if_due(record)

    # --- what the callback receiver asks of the engine (callbacks.CallbackTarget) -------------

    def confirm(self, record: JobRecord) -> None:
        """Ask about ``record`` now (a callback said it ended); duplicates fold into one query."""
        if record.is_live:
            self.poller.schedule(record, 0.0)

    def apply(self, record: JobRecord, snapshot: JobSnapshot) -> None:
        """Take ``snapshot`` (a trusted callback's body) as the latest answer about ``record``."""
        self.poller.apply(record, snapshot)

    def adopt(self, job_id: str, request: ImageToVideo, token: str) -> None:
        """Take over the job a lost create made, once a query confirms it exists."""
        self._adoptions.adopt(job_id, request, token)

    def on_adoption(self, token: str, hook: Callable[[JobRecord], Awaitable[None]]) -> None:
        """Run ``hook(record)`` once the lost create behind ``token`` is adopted (or now)."""
        self._adoptions.on_adoption(token, hook)

    def attach(self, job_id: str) -> JobRecord:
        """Track a job created elsewhere; it is asked about at once."""
        self._ensure_running()
        record = self.table.get(job_id)
        if record is None:
            record = self.table.add(
                JobRecord(id=job_id, request=None, amount=None, state=JobState.QUEUED)
            )
        elif record.state is JobState.DETACHED:
            self.table.resume(record, JobState.QUEUED)
        else:
            return record
        if self.sharing is not None:
            self.sharing.watch(record)  # another process may have seen its end, or poll it
        else:
            self.poller.track(record)
        return record

    def job(self, record: JobRecord) -> Job:
        """Return the public handle of ``record``."""
        return Job(id=record.id, amount=record.amount, request=record.request, tracker=self)

    def status_of(self, job_id: str) -> JobStatus:
        """Return the last status seen for ``job_id`` (``UNKNOWN`` once it is no longer kept)."""
        record = self.table.get(job_id)
        if record is None:
            return JobStatus.UNKNOWN  # dropped from the table (max_finished_jobs): ask get_job
        if not record.queries:
            return JobStatus.QUEUED
        return JobStatus.from_raw(record.raw_status)

    async def wait_for(self, job_id: str, timeout: float | None) -> Video:
        """Wait for ``job_id`` and return its video (or raise why there is none)."""
        record = self.table.get(job_id)
        if record is None or record.state is JobState.DETACHED:
            record = self.attach(job_id)
        return await self.wait(record, timeout)

    async def wait(self, record: JobRecord, timeout: float | None) -> Video:
        """Wait for ``record`` to end; a timeout leaves it tracked and collectable."""
        if record.state is JobState.TIMED_OUT:
            back = state_for(record.raw_status) if record.queries else JobState.QUEUED
            self.table.resume(record, back)
        try:
            with anyio.fail_after(timeout):
                await record.wait_done()
        except TimeoutError:
            if not record.is_terminal:
                raise self.time_out(record, timeout) from None
        return self.result_of(record)

    def time_out(self, record: JobRecord, timeout: float | None) -> JobTimeoutError:
        """Mark a wait on ``record`` as timed out locally and return the error that says so."""
        self.table.transition(record, JobState.TIMED_OUT)
        last = JobStatus.from_raw(record.raw_status).name.lower() if record.queries else None
        return JobTimeoutError(
            f"job {record.id} did not finish within {timeout} s (last status: "
            f"{last or 'not yet queried'}); it goes on remotely: await it again or attach it",
            job_id=record.id,
            last_status=last,
        )

    def result_of(self, record: JobRecord) -> Video:
        """Return the video of a finished record, or raise why there is none."""
        if record.state is JobState.DETACHED:
            raise JobDetachedError(
                f"the client was closed before job {record.id} ended; attach it to collect it",
                job_id=record.id,
            )
        if record.video is not None:
            return record.video
        error = record.error or ShortWanError(f"job {record.id} ended without a video")
        error.job_id = error.job_id or record.id
        raise error
