"""Bulk generation: admission in a bounded window, the spend cap, per-item outcomes, stopping.

A feeder pulls a request from the input only when a slot is free, a few workers send the creates,
and every job then waits as a record in the table (no task per job); its outcome is pushed to the
consumer by a done-callback. One failure never stops the others. Stopping (the consumer broke out
or was cancelled) ends admission; jobs already created stay in the table, logged by id.
"""

from __future__ import annotations

import filecmp
import functools
import logging
import time
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import anyio
import attrs
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint_if_cancelled
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._convert import request_from_args
from ._download import output_target, safe_name
from ._errors import (
    APIError,
    DownloadError,
    InvalidRequestError,
    JobDetachedError,
    JobFailedError,
    JobTimeoutError,
    ShortWanError,
    SpendLimitError,
    SubmissionUncertainError,
    TransportError,
)
from ._models import BatchItem, ImageToVideo, Outcome, Video, check_timeout
from ._table import JobRecord, JobState

if TYPE_CHECKING:
    from .journal import Entry, Journal

__all__ = ["Batch", "RequestSource", "SpendBudget", "SpendCounter"]

logger = logging.getLogger("shortwan")

RequestItem: TypeAlias = "ImageToVideo | BatchItem | Mapping[str, Any]"
RequestSource: TypeAlias = "Iterable[RequestItem] | AsyncIterable[RequestItem]"
Fetch: TypeAlias = "Callable[[Video, Path], Awaitable[Path]]"

# Creates are few and short next to the jobs themselves: a handful of senders keep the service
# busy without holding one task per job.
_MAX_SENDERS = 32


class SpendCounter(Protocol):
    """Keeps the money of a batch under its cap; one implementation can be shared by processes."""

    async def reserve(self, amount: Decimal) -> bool:
        """Set ``amount`` aside for a create, or return False if the cap would be crossed."""

    async def settle(self, reserved: Decimal, charged: Decimal | None) -> None:
        """Replace a reservation by what the create was charged (``None``: the estimate)."""

    async def release(self, reserved: Decimal) -> None:
        """Give back a reservation whose create surely made no job."""

    async def refund(self, amount: Decimal) -> None:
        """Take a refunded job's charge off the spend."""


class SpendBudget:
    """The in-memory :class:`SpendCounter`: spent + reserved never exceeds ``limit``."""

    def __init__(self, limit: Decimal) -> None:
        self.limit = limit
        self.spent = Decimal(0)
        self.reserved = Decimal(0)

    def __repr__(self) -> str:
        return f"<SpendBudget spent={self.spent} reserved={self.reserved} limit={self.limit}>"

    async def reserve(self, amount: Decimal) -> bool:
        if self.spent + self.reserved + amount > self.limit:
            return False
        self.reserved += amount
        return True

    async def settle(self, reserved: Decimal, charged: Decimal | None) -> None:
        self.reserved -= reserved
        self.spent += reserved if charged is None else charged

    async def release(self, reserved: Decimal) -> None:
        self.reserved -= reserved

    async def refund(self, amount: Decimal) -> None:
        self.spent -= amount


class _Engine(Protocol):
    async def create(
        self,
        request: ImageToVideo,
        *,
        track: bool = True,
        on_created: Callable[[JobRecord], Awaitable[None]] | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
        inline: bool = False,
    ) -> JobRecord: ...

    def attach(self, job_id: str) -> JobRecord: ...

    def on_adoption(self, token: str, hook: Callable[[JobRecord], Awaitable[None]]) -> None: ...

    def time_out(self, record: JobRecord, timeout: float | None) -> JobTimeoutError: ...


class Batch:
    """One ``generate_many`` run. :meth:`run` goes in the engine's task group."""

    def __init__(
        self,
        engine: _Engine,
        source: RequestSource,
        *,
        concurrency: int,
        budget: SpendCounter | None,
        timeout: float | None,
        sink: Callable[[Outcome], None] | None = None,
        journal: Journal | None = None,
        resubmit_uncertain: bool = False,
        download_to: Path | None = None,
        fetch: Fetch | None = None,
    ) -> None:
        value: object = concurrency
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequestError([f"concurrency must be an int >= 1, got {concurrency!r}"])
        timeout = check_timeout(timeout)
        if timeout == 0:
            raise InvalidRequestError(["timeout must be > 0 seconds or None, got 0"])
        if isinstance(source, (ImageToVideo, BatchItem, str, bytes, Mapping)) or not isinstance(
            source, (Iterable, AsyncIterable)
        ):
            raise InvalidRequestError(
                [f"requests must be an iterable of requests, got {type(source).__name__}"]
            )
        self._engine = engine
        self._source = source
        self._concurrency = concurrency
        # With a sink (gather), outcomes are handed over at once and their slot freed: nobody
        # has to be woken to take them. Without one they go through the stream below.
        self._sink = sink
        self.finished = anyio.Event()
        self._budget = budget
        self._timeout = timeout
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
        self._cancel = anyio.CancelScope()
        self._stopped = False
        self._outstanding = 0
        self._feeding = True
        self._cap_reached = False
        self._waiting: dict[int, JobRecord] = {}
        # Which input position waits on which job. Kept here, not on the shared record: two
        # batches of one client may wait on the same job (an attached id, a shared journal).
        self._index_of: dict[str, int] = {}
        self._more_indexes: dict[str, list[int]] = {}
        self._deadlines: deque[tuple[float, int, JobRecord]] = deque()
        self._on_done = self._finished
        self._deadline_wake = anyio.Event()
        self._task_group: TaskGroup | None = None
        self.error: BaseException | None = None
        self._journal = journal
        self._resubmit_uncertain = resubmit_uncertain
        self._download_to = download_to
        self._fetch = fetch
        # Only a journal or downloads need more than the index per job: key and file name.
        self._slow_finish = journal is not None or download_to is not None
        self._extras: dict[int, tuple[str | None, str | None]] = {}
        self._keys_seen: dict[str, int] = {}
        self._outputs_seen: set[Path] = set()

    @property
    def in_flight(self) -> list[str]:
        """The ids of this batch's jobs whose outcome has not been delivered."""
        return [record.id for record in self._waiting.values()]

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
        self._waiting.clear()
        self._index_of.clear()
        self._more_indexes.clear()
        self._send.close()
        self.receive.close()

    async def run(self) -> None:
        """Admit, send and time out requests until every outcome is delivered or :meth:`stop`."""
        try:
            with self._cancel:
                async with anyio.create_task_group() as tg:
                    self._task_group = tg
                    tg.start_soon(self._watch_deadlines)
                    async with anyio.create_task_group() as senders:
                        for _ in range(min(self._concurrency, _MAX_SENDERS)):
                            senders.start_soon(self._sender)
                    self._feeding = False
                    self._maybe_finish()
        except Exception as exc:
            # A fault of the batch itself must not take the client's engine (and every other
            # job's polling) down with it: the consumer gets the error instead of a hang.
            logger.exception("generate_many stopped by an internal error")
            if self.error is None:
                self.error = _as_shortwan(exc, "generate_many stopped by an internal error")
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
            await self._admit(*pulled)

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

    def _unpack(
        self, item: RequestItem, facts: dict[str, Any]
    ) -> tuple[ImageToVideo, str | None, str | None]:
        key = output = None
        if isinstance(item, BatchItem):
            key, output, item = item.key, item.output, item.request
        elif isinstance(item, Mapping) and ("key" in item or "output" in item):
            item = dict(item)
            key, output = item.pop("key", None), item.pop("output", None)
            BatchItem(request=item, key=key, output=output)  # checks the key and the output
        facts["key"] = key  # named in the outcome even if the request turns out invalid
        request = item if isinstance(item, ImageToVideo) else request_from_args(item)
        if output is not None and self._download_to is not None:
            # Refused before paying: a name that leaves the folder, or one taken in this batch.
            target = self._output_path(output)
            if target in self._outputs_seen:
                raise InvalidRequestError([f"output {output!r} appears twice in this batch"])
            self._outputs_seen.add(target)
        return request, key, output

    def _journal_key(self, request: ImageToVideo, key: str | None) -> str:
        from .journal import request_key  # noqa: PLC0415 - the journal is optional

        if key is not None:
            if key in self._keys_seen:
                raise InvalidRequestError([f"key {key!r} appears twice in this batch"])
            self._keys_seen[key] = 1
            return key
        # Equal requests are told apart by their order, so asking twice makes two videos.
        base = request_key(request)
        seen = self._keys_seen.get(base, 0) + 1
        self._keys_seen[base] = seen
        return base if seen == 1 else f"{base}#{seen}"

    async def _admit(self, index: int, item: RequestItem) -> None:
        # One item's trouble is that item's outcome; it never stops the batch or the engine.
        facts: dict[str, Any] = {}
        try:
            await self._admit_item(index, item, facts)
        except Exception as exc:
            if facts.get("tracked"):
                # Its outcome comes (or came) through the job's own end.
                logger.exception("a batch item failed after its job was tracked")
                return
            logger.exception("a batch item failed unexpectedly")
            error = _as_shortwan(exc, "this request failed unexpectedly")
            record: JobRecord | None = facts.get("record")
            if record is not None:
                error.job_id = error.job_id or record.id
            self._emit(
                Outcome(
                    index=index,
                    request=facts.get("request"),
                    key=facts.get("key"),
                    job_id=None if record is None else record.id,
                    amount=None if record is None else record.amount,
                    error=error,
                )
            )

    async def _admit_item(self, index: int, item: RequestItem, facts: dict[str, Any]) -> None:
        try:
            request, key, output = self._unpack(item, facts)
            if self._journal is not None:
                key = self._journal_key(request, key)
        except ShortWanError as exc:
            self._emit(Outcome(index=index, key=facts.get("key"), error=exc))
            return
        facts["request"], facts["key"] = request, key
        journal = self._journal
        entry = None if journal is None or key is None else await journal.get(key)
        if entry is not None:
            if entry.is_done:
                await self._replay(index, request, entry, output)
                return
            if entry.job_id is not None:
                # Created in an earlier run: collect it by id, never create it again.
                record = self._engine.attach(entry.job_id)
                if record.request is None:
                    record.request = request
                if record.amount is None:
                    record.amount = entry.amount
                facts["tracked"] = True
                self._wait_for(index, record, key, output)
                return
            if not self._resubmit_uncertain:
                self._emit(
                    Outcome(
                        index=index,
                        request=request,
                        key=key,
                        error=SubmissionUncertainError(
                            f"a create for {key!r} may have been sent by an earlier run and its "
                            "answer was lost; not sent again (pass resubmit_uncertain=True to "
                            "send it, at the risk of paying twice)",
                            request=request,
                        ),
                    )
                )
                return
        if self._cap_reached:
            self._emit(
                Outcome(index=index, request=request, key=key, error=self._cap_error(request))
            )
            return
        cost = request.estimated_cost
        if self._budget is not None and not await self._budget.reserve(cost):
            self._cap_reached = True
            self._emit(
                Outcome(index=index, request=request, key=key, error=self._cap_error(request))
            )
            return
        on_created = None

        async def before_send() -> None:
            if journal is not None and key is not None:
                # Durable before the create leaves (and only once a client-wide slot is held,
                # so a request still waiting for one is not taken for maybe-sent): a crash from
                # here on is never a silent double.
                await journal.intent(key, model=request.model, estimate=cost)
                try:
                    await checkpoint_if_cancelled()  # stopped meanwhile: it never leaves
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await journal.forget(key)
                    raise
            facts["sending"] = True

        if journal is not None and key is not None:
            journaled_key = key

            async def on_created(record: JobRecord) -> None:
                try:
                    await journal.submitted(journaled_key, job_id=record.id, amount=record.amount)
                except Exception:
                    # The job is tracked and reported all the same; a rerun finds only the
                    # intent and reports the request uncertain rather than paying again.
                    logger.exception("job %s could not be written to the journal", record.id)

        try:
            # The senders are the engine's own tasks, cancelled only through anyio, whose shield
            # keeps a create that has left from being abandoned: no task of its own is needed.
            record = await self._engine.create(
                request, on_created=on_created, before_send=before_send, inline=True
            )
        except SubmissionUncertainError as exc:
            # Maybe charged: the reservation stays, so the cap still counts it.
            if journal is not None and key is not None:
                if exc.callback_token is not None:
                    # Before the write below: an adoption may land while it is under way.
                    self._engine.on_adoption(exc.callback_token, self._journal_adopted(key))
                try:
                    await journal.uncertain(key)
                except Exception:
                    # The intent already says "maybe sent"; the outcome keeps saying so too.
                    logger.exception("the lost create of %r could not be journaled", key)
            self._emit(Outcome(index=index, request=request, key=key, error=exc))
            return
        except (APIError, TransportError) as exc:
            if journal is not None and key is not None:
                await journal.forget(key)  # refused: no job exists
            if self._budget is not None:
                await self._budget.release(cost)
            self._emit(Outcome(index=index, request=request, key=key, error=exc))
            return
        except BaseException:
            if not facts.get("sending") and self._budget is not None:
                # Refused before it could leave (a journal or callback fault, a cancellation):
                # nothing was spent.
                with anyio.CancelScope(shield=True):
                    await self._budget.release(cost)
            raise
        facts["record"], facts["tracked"] = record, True
        self._wait_for(index, record, key, output)
        if self._budget is not None:
            await self._budget.settle(cost, record.amount)

    def _journal_adopted(self, key: str) -> Callable[[JobRecord], Awaitable[None]]:
        journal = self._journal
        assert journal is not None  # noqa: S101 - only called with a journal

        async def record_job(record: JobRecord) -> None:
            # The lost create's job was found through its callback: a rerun must collect it by
            # id instead of calling it uncertain. The journal may be closed by now.
            try:
                await journal.submitted(key, job_id=record.id, amount=record.amount)
            except (RuntimeError, ShortWanError) as exc:
                logger.warning(
                    "adopted job %s could not be written to the journal: %s",
                    record.id,
                    exc,
                    extra={"job_id": record.id},
                )

        return record_job

    def _wait_for(self, index: int, record: JobRecord, key: str | None, output: str | None) -> None:
        self._waiting[index] = record
        if record.id in self._index_of:
            # The same job twice in one batch (two journal keys naming one job id).
            self._more_indexes.setdefault(record.id, []).append(index)
        else:
            self._index_of[record.id] = index
        if self._slow_finish:
            self._extras[index] = (key, output)
        if self._timeout is not None:
            # Every job gets the same timeout, so deadlines arrive in admission order.
            self._deadlines.append((time.monotonic() + self._timeout, index, record))
            if len(self._deadlines) == 1:
                self._deadline_wake.set()
        # One bound method for every job: no closure per job.
        record.add_done_callback(self._on_done)

    def _output_path(self, output: str | None, job_id: str | None = None) -> Path:
        assert self._download_to is not None  # noqa: S101 - only called when downloading
        name = output if output is not None else safe_name(job_id or "video")
        target, problem = output_target(self._download_to, name)
        if problem is not None:
            raise InvalidRequestError([problem])
        return target

    async def _replay(
        self, index: int, request: ImageToVideo, entry: Entry, output: str | None
    ) -> None:
        outcome = Outcome(
            index=index,
            request=request,
            job_id=entry.job_id,
            video=entry.video,
            error=entry.error,
            amount=entry.amount,
            key=entry.key,
            path=entry.path,
            replayed=True,
        )
        if (
            outcome.video is not None
            and self._download_to is not None
            and (entry.path is None or not await anyio.Path(entry.path).exists())
        ):
            outcome = await self._download(outcome, output)
        self._emit(outcome)

    async def _download(self, outcome: Outcome, output: str | None) -> Outcome:
        assert self._fetch is not None  # noqa: S101 - set with download_to
        assert outcome.video is not None  # noqa: S101 - only videos are downloaded
        try:
            dest = self._output_path(output, outcome.job_id)
            if self._journal is not None and await anyio.Path(dest).exists():
                path = await self._claim(outcome.video, dest)
            else:
                path = await self._fetch(outcome.video, dest)
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, ShortWanError)
                else DownloadError(f"download failed: {exc!r}", job_id=outcome.job_id)
            )
            if error is not exc:
                error.__cause__ = exc
            if error.job_id is None:
                error.job_id = outcome.job_id
            return attrs.evolve(outcome, error=error)
        if self._journal is not None and outcome.key is not None:
            try:
                await self._journal.downloaded(outcome.key, path)
            except Exception as exc:
                # The file is whole at its path; only the note of it is missing (a rerun
                # compares the file with the video before claiming it).
                logger.exception("the download of job %s could not be journaled", outcome.job_id)
                error = _as_shortwan(exc, "the download could not be journaled")
                error.job_id = error.job_id or outcome.job_id
                return attrs.evolve(outcome, path=path, error=error)
        return attrs.evolve(outcome, path=path)

    async def _claim(self, video: Video, dest: Path) -> Path:
        """Return ``dest`` if it already holds ``video``, else raise :class:`DownloadError`.

        A rerun finds the file of a crash that struck between its rename and the journal's
        note of it; but a file of the same name may be anything else too. The video is fetched
        beside it and compared, so the file is claimed only if it is this very video.
        """
        assert self._fetch is not None  # noqa: S101 - set with download_to
        check = dest.with_name(f".{dest.name}.check")
        forget_check = functools.partial(check.unlink, missing_ok=True)
        try:
            await anyio.to_thread.run_sync(forget_check)  # left by an earlier crash
            fetched = await self._fetch(video, check)
            same = await anyio.to_thread.run_sync(
                functools.partial(filecmp.cmp, dest, fetched, shallow=False)
            )
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(forget_check)
        if not same:
            raise DownloadError(
                f"{str(dest)!r} exists and holds something else; move it away to download "
                "this video",
                url=video.url,
            )
        return dest

    def _cap_error(self, request: ImageToVideo) -> SpendLimitError:
        budget = self._budget
        limit = getattr(budget, "limit", None)
        used = getattr(budget, "spent", Decimal(0)) + getattr(budget, "reserved", Decimal(0))
        return SpendLimitError(
            f"not sent: ${request.estimated_cost} more would cross the spend cap of ${limit} "
            f"(${used} spent or reserved)",
            limit=limit,
            committed=used,
            cost=request.estimated_cost,
        )

    def _finished(self, record: JobRecord) -> None:
        more = self._more_indexes.pop(record.id, None)
        if more is not None:
            for extra in more:
                self._finish_at(extra, record)
        index = self._index_of.pop(record.id, None)
        if index is not None:
            self._finish_at(index, record)

    def _finish_at(self, index: int, record: JobRecord) -> None:
        if self._waiting.get(index) is not record:
            return  # already reported (timed out) or the batch stopped
        del self._waiting[index]
        if (
            self._budget is not None
            and self._task_group is not None
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
        if self._slow_finish:
            key, output = self._extras.pop(index, (None, None))
            outcome = attrs.evolve(outcome, key=key)
            if self._task_group is not None and (
                record.video is not None or isinstance(error, JobFailedError)
            ):
                self._task_group.start_soon(self._complete, outcome, output)
                return
        self._emit(outcome)

    async def _complete(self, outcome: Outcome, output: str | None) -> None:
        """Journal how a job ended and download its video, then report it."""
        journal, key = self._journal, outcome.key
        journal_error: ShortWanError | None = None
        try:
            if journal is not None and key is not None:
                if outcome.video is not None:
                    await journal.finished(key, video=outcome.video)
                elif isinstance(outcome.error, JobFailedError):
                    await journal.finished(key, error=outcome.error)
        except Exception as exc:
            # Reported with the outcome; the video is still downloaded.
            logger.exception("the end of job %s could not be journaled", outcome.job_id)
            journal_error = _as_shortwan(exc, f"the end of job {outcome.job_id} was not journaled")
            journal_error.job_id = journal_error.job_id or outcome.job_id
        if outcome.video is not None and self._download_to is not None:
            outcome = await self._download(outcome, output)
        if journal_error is not None and outcome.error is None:
            outcome = attrs.evolve(outcome, error=journal_error)
        self._emit(outcome)

    async def _watch_deadlines(self) -> None:
        deadlines = self._deadlines
        while True:
            while deadlines and self._waiting.get(deadlines[0][1]) is not deadlines[0][2]:
                deadlines.popleft()  # reported already
            if not deadlines:
                self._deadline_wake = anyio.Event()
                await self._deadline_wake.wait()
                continue
            deadline, index, record = deadlines[0]
            wait = deadline - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            deadlines.popleft()
            # Its entry in _index_of goes when the job ends; _finish_at then finds it reported.
            del self._waiting[index]
            key, _output = self._extras.pop(index, (None, None))
            self._emit(
                Outcome(
                    index=index,
                    request=record.request,
                    job_id=record.id,
                    error=self._engine.time_out(record, self._timeout),
                    amount=record.amount,
                    key=key,
                )
            )

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
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self._feeding and self._outstanding == 0:
            self._send.close()
            self._cancel.cancel()


def _some(ids: list[str]) -> str:
    """The first twenty ids, for a log line."""
    return ", ".join(ids[:20]) + (" …" if len(ids) > 20 else "")


def _as_shortwan(exc: Exception, what: str) -> ShortWanError:
    """Return ``exc`` if it is a shortwan error, else a :class:`ShortWanError` caused by it."""
    if isinstance(exc, ShortWanError):
        return exc
    error = ShortWanError(f"{what}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error
