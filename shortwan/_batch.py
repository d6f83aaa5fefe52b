"""Bulk generation: the core of a batch, a bounded window of items, their outcomes, stopping.

Senders (one per slot, up to the room the connection pool leaves for creates) pull a request
from the input only when a slot of the window is free and hand it to
:class:`~shortwan._admission.Admission`; every job then waits as a record in the table (no task
per job) and in the batch's :class:`~shortwan._waiters.Waiters`; its outcome is pushed to the
consumer by a done-callback, through the ledger and the download folder when the batch has them.
One failure never stops the others. Stopping (the consumer broke out or was cancelled) ends
admission; jobs already created stay in the table, logged by id.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import TypeAlias

import anyio
import attrs
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._admission import Admission, BatchEngine, Item, RequestItem
from ._errors import (
    InvalidRequestError,
    JobDetachedError,
    JobFailedError,
    ShortWanError,
    as_shortwan,
)
from ._ledger import Ledger
from ._models import BatchItem, ImageToVideo, Outcome
from ._options import BatchOptions
from ._outputs import Outputs
from ._spend import SpendCounter
from ._table import JobRecord, JobState
from ._waiters import Waiters

__all__ = ["Batch", "RequestSource", "sender_count"]

logger = logging.getLogger("shortwan")

RequestSource: TypeAlias = "Iterable[RequestItem] | AsyncIterable[RequestItem]"

# One sender per slot of the window, but no more than the connection pool has room for beside
# the poller's queries (the engine's create_room): each sender has at most one request on the
# wire (its create, or the first query it asks itself), and more senders would only wait inside
# aiohttp for a connection. This bounds the tasks when the pool has no limit: one task per
# sender, never one per job.
_MAX_SENDERS = 1024


def sender_count(concurrency: int, room: int | None) -> int:
    """Return how many senders a batch of ``concurrency`` runs with ``room`` for creates."""
    count = min(concurrency, _MAX_SENDERS)
    return count if room is None else max(1, min(count, room))


class Batch:
    """One ``generate_many`` run. :meth:`run` goes in the engine's task group.

    Args:
        engine: the client's engine.
        source: the requests.
        options: the batch's options (the ledger, budget and outputs are made from them).
        ledger: where each item's steps are written.
        budget: the spend cap.
        outputs: the download folder.
        sink: takes every outcome at once (``gather``); without it they go through
            :attr:`receive`.
    """

    def __init__(
        self,
        engine: BatchEngine,
        source: RequestSource,
        *,
        options: BatchOptions,
        ledger: Ledger,
        budget: SpendCounter,
        outputs: Outputs,
        sink: Callable[[Outcome], None] | None = None,
    ) -> None:
        if isinstance(source, (ImageToVideo, BatchItem, str, bytes, Mapping)) or not isinstance(
            source, (Iterable, AsyncIterable)
        ):
            raise InvalidRequestError(
                [f"requests must be an iterable of requests, got {type(source).__name__}"]
            )
        self._engine = engine
        self._concurrency = concurrency = options.concurrency
        self._timeout = options.timeout
        # With a sink (gather), outcomes are handed over at once and their slot freed: nobody
        # has to be woken to take them. Without one they go through the stream below.
        self._sink = sink
        self.finished = anyio.Event()
        self._slots = anyio.Semaphore(concurrency, fast_acquire=True)
        self._sync_items: Iterator[RequestItem] | None = None
        self._async_items: AsyncIterator[RequestItem] | None = None
        if isinstance(source, AsyncIterable):
            self._async_items = aiter(source)
        else:
            self._sync_items = iter(source)
        self._pull_lock = anyio.Lock(fast_acquire=True)
        self._exhausted = False
        self._next_index = 0
        # Every admitted item holds a slot until the consumer takes its outcome, so the buffer
        # can never be full when an outcome is pushed.
        self._send: MemoryObjectSendStream[Outcome]
        self.receive: MemoryObjectReceiveStream[Outcome]
        self._send, self.receive = anyio.create_memory_object_stream[Outcome](concurrency)
        # Set when an outcome lands in the stream or the stream ends (see wait_for_outcome).
        self._outcome_ready: anyio.Event | None = None
        self._cancel = anyio.CancelScope()
        self._stopped = False
        self._outstanding = 0
        self._feeding = True
        self._budget = budget
        self._outputs = outputs
        # Only a journal or downloads need more than the position per job: the item itself.
        self._waiters: Waiters[Item] = Waiters(
            timeout=options.timeout,
            keep_items=ledger.remembers or outputs.downloads,
            on_end=self._job_ended,
        )
        self._admission = Admission(
            engine=engine,
            ledger=ledger,
            budget=budget,
            outputs=outputs,
            resubmit_uncertain=options.resubmit_uncertain,
            waiters=self._waiters,
            emit=self._emit,
        )
        self._task_group: TaskGroup | None = None
        self.error: BaseException | None = None

    @property
    def in_flight(self) -> list[str]:
        """The ids of this batch's jobs whose outcome has not been delivered."""
        return self._waiters.job_ids

    async def wait_for_outcome(self) -> None:
        """Return once :attr:`receive` holds an outcome or has ended.

        The consumer calls this when the stream is empty, instead of the stream's own
        ``receive()``, which first takes a trip through the event loop before it waits: an
        outcome then costs one wake-up of the consumer, not two.
        """
        self._outcome_ready = ready = anyio.Event()
        await ready.wait()

    def _wake_consumer(self) -> None:
        ready, self._outcome_ready = self._outcome_ready, None
        if ready is not None:
            ready.set()

    def release_slot(self) -> None:
        """Free one admission slot; the consumer calls it for every outcome it takes."""
        self._slots.release()

    def stop(self) -> None:
        """Stop admitting requests; created jobs stay tracked by the client."""
        if self._stopped:
            return
        self._stopped = True
        self._cancel.cancel()
        pending = self.in_flight
        if pending:
            logger.warning(
                "generate_many stopped with %d jobs in flight; they stay tracked: %s",
                len(pending),
                _some(pending),
                extra={"job_ids": pending},
            )
        # Outcomes that were ready but never taken: their jobs are paid for, so name them.
        untaken: list[str] = []
        while True:
            try:
                outcome = self.receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            if outcome.job_id is not None and not outcome.replayed:
                untaken.append(outcome.job_id)
        if untaken:
            logger.warning(
                "generate_many stopped before %d finished outcomes were taken; their jobs stay "
                "in client.jobs: %s",
                len(untaken),
                _some(untaken),
                extra={"job_ids": untaken},
            )
        self._waiters.clear()
        self._send.close()
        self.receive.close()

    async def run(self) -> None:
        """Admit, send and time out requests until every outcome is delivered or :meth:`stop`."""
        try:
            with self._cancel:
                async with anyio.create_task_group() as tg:
                    self._task_group = tg
                    tg.start_soon(self._waiters.watch_deadlines, self._timed_out)
                    count = sender_count(self._concurrency, self._engine.create_room)
                    async with anyio.create_task_group() as senders:
                        for _ in range(count):
                            senders.start_soon(self._sender)
                    self._feeding = False
                    self._maybe_finish()
        except Exception as exc:
            # A fault of the batch itself must not take the client's engine (and every other
            # job's polling) down with it: the consumer gets the error instead of a hang.
            logger.exception("generate_many stopped by an internal error")
            if self.error is None:
                self.error = as_shortwan(exc, "generate_many stopped by an internal error")
        finally:
            if self.error is None and not self._stopped and (self._outstanding or self._feeding):
                # The client closed under the batch: outcomes already delivered (detached jobs
                # included) stand, and the consumer is told the rest never came.
                self.error = JobDetachedError(
                    "the client was closed before generate_many finished; jobs still running "
                    "go on remotely (see client.jobs and the log), requests not yet sent were "
                    "not sent"
                )
            self._send.close()
            self._wake_consumer()
            self.finished.set()
            if self._async_items is not None:
                aclose = getattr(self._async_items, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()

    async def _sender(self) -> None:
        # Each sender pulls the next request only once a slot is free, so the input is never
        # read further ahead than the window allows.
        while not self._exhausted:
            await self._slots.acquire()
            pulled = await self._next()
            if pulled is None:
                self._slots.release()
                return
            await self._admission.admit(*pulled)

    async def _next(self) -> tuple[int, RequestItem] | None:
        try:
            if self._sync_items is not None:
                item = next(self._sync_items)
            else:
                assert self._async_items is not None  # noqa: S101 - one of the two is set
                async with self._pull_lock:
                    if self._exhausted:
                        return None
                    item = await self._async_items.__anext__()
        except (StopIteration, StopAsyncIteration):
            self._exhausted = True
            return None
        except Exception as exc:
            # The input itself failed (a bad line in the caller's generator): requests already
            # admitted still get their outcomes, then the consumer sees this error.
            self._exhausted = True
            self.error = exc
            return None
        index = self._next_index
        self._next_index += 1
        self._outstanding += 1
        return index, item

    # --- the end of a job ------------------------------------------------------------------

    def _job_ended(self, record: JobRecord) -> None:
        for index, item in self._waiters.take_ended(record):
            self._report_end(index, record, item)

    def _report_end(self, index: int, record: JobRecord, item: Item | None) -> None:
        if (
            self._task_group is not None
            and record.state is JobState.FAILED
            and record.snapshot is not None
            and record.snapshot.refunded
            and record.amount is not None
        ):
            self._task_group.start_soon(self._budget.refund, record.amount)
        error: ShortWanError | None = None
        if record.video is None:
            error = record.error or ShortWanError(f"job {record.id} ended without a video")
            if record.state is JobState.DETACHED:
                error = JobDetachedError(
                    f"the client was closed before job {record.id} ended", job_id=record.id
                )
        outcome = Outcome(
            index=index,
            request=record.request,
            job_id=record.id,
            video=record.video,
            error=error,
            amount=record.amount,
        )
        if item is not None:  # a journal or downloads: the end is written, the video fetched
            outcome = attrs.evolve(outcome, key=item.key)
            if self._task_group is not None and (
                record.video is not None or isinstance(error, JobFailedError)
            ):
                self._task_group.start_soon(self._complete, outcome, item)
                return
        self._emit(outcome)

    async def _complete(self, outcome: Outcome, item: Item) -> None:
        """Journal how a job ended and download its video, then report it."""
        journal_error: ShortWanError | None = None
        try:
            await item.page.finished(outcome)
        except Exception as exc:
            # Reported with the outcome; the video is still downloaded.
            logger.exception("the end of job %s could not be journaled", outcome.job_id)
            journal_error = as_shortwan(exc, f"the end of job {outcome.job_id} was not journaled")
            journal_error.job_id = journal_error.job_id or outcome.job_id
        outcome = await self._outputs.save(outcome, item.output, item.page)
        if journal_error is not None and outcome.error is None:
            outcome = attrs.evolve(outcome, error=journal_error)
        self._emit(outcome)

    def _timed_out(self, index: int, record: JobRecord, item: Item | None) -> None:
        self._emit(
            Outcome(
                index=index,
                request=record.request,
                job_id=record.id,
                error=self._engine.time_out(record, self._timeout),
                amount=record.amount,
                key=None if item is None else item.key,
            )
        )

    # --- outcomes --------------------------------------------------------------------------

    def _emit(self, outcome: Outcome) -> None:
        self._outstanding -= 1
        if self._sink is not None:
            if not self._stopped:
                self._sink(outcome)
                self._slots.release()
        else:
            try:
                self._send.send_nowait(outcome)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return  # the consumer is gone; the job stays in the table
            self._wake_consumer()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self._feeding and self._outstanding == 0:
            self._send.close()
            self._wake_consumer()
            self._cancel.cancel()


def _some(ids: list[str]) -> str:
    """The first twenty ids, for a log line."""
    return ", ".join(ids[:20]) + (" …" if len(ids) > 20 else "")
