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
from anyio.lowlevel import checkpoint_if_cancelled

from ._aio import wait_through_cancellation
from ._config import PollPolicy
from ._convert import request_args, snapshot_from_data
from ._errors import (
    JobDetachedError,
    JobTimeoutError,
    MalformedResponseError,
    ShortWanError,
    SubmissionUncertainError,
)
from ._http import Transport
from ._models import ImageToVideo, Job, JobSnapshot, JobStatus, Video
from ._poller import Poller, QueryBudget
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
    ) -> None:
        self.transport = transport
        self.callbacks = callbacks
        self._adoption_hooks: dict[str, Callable[[JobRecord], Awaitable[None]]] = {}
        # Adoptions that came before anyone asked to hear of them (see on_adoption).
        self._adopted_early: dict[str, JobRecord] = {}
        self.max_in_flight = max_in_flight
        self._slots: anyio.Semaphore | None = None
        self.poll = poll
        self.table = JobTable(max_finished=max_finished)
        # Built here, not on first use: it needs no running loop until run() starts it, and
        # every 429 of the client slows its query budget from the start.
        self._poller = Poller(table=self.table, query=self.query, policy=poll, budget=query_budget)
        transport.on_rate_limit = self._poller.budget.slow_down
        self._task_group: TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._started: asyncio.Event | None = None
        # Creates under way in tasks of their own (see create); close waits for them.
        self._creating: set[asyncio.Task[JobRecord]] = set()
        self._closing = False

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
            await anyio.sleep_forever()

    async def spawn(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``func(*args)`` in the engine's task group; it ends when the client closes."""
        self._ensure_running()
        assert self._started is not None  # noqa: S101 - set with the runner
        await self._started.wait()
        assert self._task_group is not None  # noqa: S101 - set before _started
        self._task_group.start_soon(func)

    async def aclose(self) -> None:
        """Stop all background work; jobs still running are detached and listed in the log.

        A create under way may have made a paid job, so close first lets every one of them land
        in the table (each is bounded by its own timeouts), even through a native cancellation,
        which is raised once everything is shut down.
        """
        self._closing = True  # no create leaves from here on, not even one waiting for a slot
        cancelled = await wait_through_cancellation(self._creating)
        if self.callbacks is not None:
            self.callbacks.forget_engine(self)
        self._adoption_hooks.clear()
        self._adopted_early.clear()
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

    async def create(
        self,
        request: ImageToVideo,
        *,
        on_created: Callable[[JobRecord], Awaitable[None]] | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
        inline: bool = False,
    ) -> JobRecord:
        """Create a job and put it in the table before anything else can fail.

        The create runs in a task of its own, awaited through both an anyio shield and
        :func:`asyncio.shield`: a caller cancelled by anyio gets the record and then its
        cancellation; a caller cancelled natively (``asyncio.timeout``, ``Task.cancel``, a web
        framework dropping a request) is released at once while the create goes on, so a job
        that is paid for always reaches the table. Its own timeouts still bound it.
        ``before_send`` runs once a ``max_in_flight`` slot is held, just before the create
        leaves (a journal writes its intent there); ``on_created`` runs in the create's task as
        soon as the job is in the table (a journal records the id there); if it fails, the job
        is still tracked and its error is raised.

        ``inline=True`` runs the create in the calling task, under the anyio shield alone: for
        callers that only anyio can cancel (the engine's own tasks, such as a batch's senders),
        it saves a task per create.
        """
        self._ensure_running()
        self._refuse_if_closing()
        slots = self._slots
        if slots is None and self.max_in_flight is not None:
            slots = self._slots = anyio.Semaphore(self.max_in_flight)
        if slots is not None:
            # Waiting for a slot is cancellable: nothing has been sent yet.
            await slots.acquire()
            try:
                self._refuse_if_closing()  # the slot may have come free because of the close
            except RuntimeError:
                slots.release()
                raise
        token = callback_url = None
        receiver = self.callbacks
        try:
            # Everything that can refuse the create runs before before_send, so a refusal never
            # leaves a journal saying "maybe sent".
            if receiver is not None:
                token, callback_url = receiver.register(self, request)
            if before_send is not None:
                await before_send()
            # Last chance to back out: from here the create leaves with no await in between.
            await checkpoint_if_cancelled()
            sending = self._create(
                request,
                on_created=on_created,
                slots=slots,
                token=token,
                callback_url=callback_url,
            )
        except BaseException:
            if receiver is not None and token is not None:
                receiver.forget(token)
            if slots is not None:
                slots.release()
            raise
        # From here _create owns the slot and the token, and lets go of them if it fails.
        if inline:
            with anyio.CancelScope(shield=True):
                record = await sending
        else:
            task = asyncio.get_running_loop().create_task(sending)
            self._creating.add(task)
            task.add_done_callback(self._created)
            with anyio.CancelScope(shield=True):
                record = await asyncio.shield(task)
        # A caller cancelled during the shielded create learns of it now; the job stays tracked.
        await checkpoint_if_cancelled()
        return record

    def _refuse_if_closing(self) -> None:
        if self._closing:
            raise RuntimeError("the client was closed; nothing was sent")

    def _created(self, task: asyncio.Task[JobRecord]) -> None:
        self._creating.discard(task)
        if not task.cancelled():
            task.exception()  # seen here, so a caller that left does not leave it unretrieved

    async def _create(
        self,
        request: ImageToVideo,
        *,
        on_created: Callable[[JobRecord], Awaitable[None]] | None,
        slots: anyio.Semaphore | None,
        token: str | None,
        callback_url: str | None,
    ) -> JobRecord:
        receiver = self.callbacks
        try:
            created = await self.transport.create(
                request.model, request_args(request), callback_url=callback_url
            )
        except BaseException as exc:
            if slots is not None:
                slots.release()
            if isinstance(exc, SubmissionUncertainError):
                exc.request = request
                self.table.note_uncertain()
                if receiver is not None and token is not None:
                    # The job may exist: if the service calls back on this token, adopt it.
                    exc.callback_token = token
                    receiver.keep_uncertain(token)
                logger.warning("create outcome unknown, not resubmitted: %s", exc)
            elif receiver is not None and token is not None:
                receiver.forget(token)
            raise
        record = self.table.add(
            JobRecord(
                id=created.job_id,
                request=request,
                amount=created.amount,
                state=JobState.QUEUED,
                callback=token is not None,
            ),
            created=True,
        )
        if slots is not None:
            # The slot is the job's until it ends (or the client lets go of it).
            record.add_done_callback(lambda _record: slots.release())
        logger.info(
            "job %s created, charged %s",
            record.id,
            record.amount,
            extra={"job_id": record.id, "amount": str(record.amount)},
        )
        try:
            if on_created is not None:
                await on_created(record)
        finally:
            self.poller.track(record)
            if receiver is not None and token is not None:
                receiver.bind(token, record)
        return record

    # --- what the callback receiver asks of the engine (callbacks.CallbackTarget) -------------

    def confirm(self, record: JobRecord) -> None:
        """Ask about ``record`` now (a callback said it ended); duplicates fold into one query."""
        if not record.is_terminal and record.state is not JobState.DETACHED:
            self.poller.schedule(record, 0.0)

    def apply(self, record: JobRecord, snapshot: JobSnapshot) -> None:
        """Take ``snapshot`` (a trusted callback's body) as the latest answer about ``record``."""
        self.poller.apply(record, snapshot)

    def adopt(self, job_id: str, request: ImageToVideo, token: str) -> None:
        """Take over the job a lost create made, once a query confirms it exists."""
        if self._task_group is None:
            return
        self._task_group.start_soon(self._adopt, job_id, request, token)

    async def _adopt(self, job_id: str, request: ImageToVideo, token: str) -> None:
        receiver = self.callbacks
        assert receiver is not None  # noqa: S101 - only reached through a receiver
        try:
            snapshot = await self.query(job_id)
        except ShortWanError as exc:
            logger.warning(
                "a callback named job %s for a lost create, but it could not be confirmed: %s",
                job_id,
                exc,
                extra={"job_id": job_id},
            )
            receiver.keep_uncertain(token)
            return
        if job_id in self.table:
            # Already known: a forged callback cannot hand us another caller's job. The token
            # keeps listening, in case the real callback of the lost create is still to come.
            receiver.keep_uncertain(token)
            return
        record = self.table.add(
            JobRecord(
                id=job_id,
                request=request,
                amount=snapshot.credit,
                state=JobState.QUEUED,
                callback=True,
            ),
            created=True,
        )
        self.table.note_adopted()
        logger.warning(
            "adopted job %s: its create's answer was lost, its callback found it",
            job_id,
            extra={"job_id": job_id},
        )
        receiver.bind(token, record)
        self.poller.apply(record, snapshot)
        hook = self._adoption_hooks.pop(token, None)
        if hook is not None:
            await hook(record)
        else:
            self._adopted_early[token] = record
            if len(self._adopted_early) > 1024:  # callers that never ask must not grow it
                del self._adopted_early[next(iter(self._adopted_early))]

    def on_adoption(self, token: str, hook: Callable[[JobRecord], Awaitable[None]]) -> None:
        """Run ``hook(record)`` once the lost create behind ``token`` is adopted (or now)."""
        record = self._adopted_early.pop(token, None)
        if record is None:
            self._adoption_hooks[token] = hook
        elif self._task_group is not None:
            adopted = record

            async def run_hook() -> None:
                await hook(adopted)

            self._task_group.start_soon(run_hook)

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
