"""The job table: every job this client knows of, its state machine, spend, and an event feed."""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Final

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._errors import ShortWanError
from ._models import ImageToVideo, JobSnapshot, JobStatus, Video

__all__ = ["JobEvent", "JobRecord", "JobState", "JobTable", "JobTableStatistics"]

logger = logging.getLogger("shortwan")


class JobState(enum.Enum):
    """Where a job stands, as this client sees it."""

    SUBMITTING = "submitting"
    """The create was sent and has not been answered yet."""
    QUEUED = "queued"
    """The service holds the job and has not started it."""
    RUNNING = "running"
    """The service is making the video."""
    SUCCEEDED = "succeeded"
    """The video is ready."""
    FAILED = "failed"
    """The job ended without a video, or the client gave up on it after repeated refusals."""
    UNCERTAIN = "uncertain"
    """The create may have made a job, but its answer was lost: no id is known."""
    TIMED_OUT = "timed-out-locally"
    """A caller's deadline passed; the job is still tracked and can be awaited again."""
    DETACHED = "detached"
    """The client stopped tracking the job (it was closed); collect it by id with ``attach``."""

    # Members compare by identity, so they may hash by it: the counts and the terminal set are
    # looked up several times per job, and Enum's own hash is a Python call each time.
    __hash__ = object.__hash__

    @property
    def is_terminal(self) -> bool:
        """Whether the job has ended on the service."""
        return self in _TERMINAL


_TERMINAL: Final = frozenset({JobState.SUCCEEDED, JobState.FAILED})
_OVER: Final = _TERMINAL | {JobState.DETACHED}
_FROM_STATUS: Final[dict[int, JobState]] = {
    JobStatus.QUEUED: JobState.QUEUED,
    JobStatus.RUNNING: JobState.RUNNING,
    JobStatus.SUCCEEDED: JobState.SUCCEEDED,
}


@attrs.frozen(kw_only=True)
class JobEvent:
    """A change of a job's state, for progress bars, logs and metrics.

    Attributes:
        job_id: the job.
        state: the new state.
        previous: the state before, ``None`` for a job just added.
        raw_status: the last status number the service sent (-1 before any).
        at: ``time.time()`` of the change.
    """

    job_id: str
    state: JobState
    previous: JobState | None
    raw_status: int
    at: float


@attrs.define(slots=True, eq=False, kw_only=True)
class JobRecord:
    """What the client knows of one job. Mutated only by the engine."""

    id: str
    request: ImageToVideo | None
    amount: Decimal | None
    state: JobState
    callback: bool = False
    # Another live worker polls it (a shared store said so): polled here only as a safety net.
    elsewhere: bool = False
    # What of its charge the table's spend counts: set only for this client's own creates (the
    # estimate until the charge is known), never for attached jobs.
    counted: Decimal | None = None
    raw_status: int = -1
    submitted_at: float = attrs.field(factory=time.monotonic)
    last_query_at: float | None = None
    last_pending_query_at: float | None = None
    finished_at: float | None = None
    queries: int = 0
    final_errors: int = 0
    snapshot: JobSnapshot | None = None
    video: Video | None = None
    error: ShortWanError | None = None
    # The poller's bookkeeping: when the job is next due and whether a query for it is in flight.
    due: float = math.inf
    querying: bool = False
    # Someone asked for an immediate query while one was in flight (a callback said the job
    # ended, but the query under way may have left before that): ask again when it returns.
    recheck: bool = False
    done_event: anyio.Event | None = None
    on_done: Callable[[JobRecord], None] | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the job has ended on the service."""
        return self.state in _TERMINAL

    @property
    def is_live(self) -> bool:
        """Whether the job is still followed here: not ended, and not detached."""
        return self.state not in _OVER

    def add_done_callback(self, callback: Callable[[JobRecord], None]) -> None:
        """Call ``callback(record)`` once the job ends or is detached (at once if it has)."""
        if not self.is_live:
            callback(self)
            return
        first = self.on_done
        if first is None:
            self.on_done = callback  # the common case: one listener, no list
            return

        def both(record: JobRecord) -> None:
            first(record)
            callback(record)

        self.on_done = both

    async def wait_done(self) -> None:
        """Return once the job has ended or was detached."""
        if not self.is_live:
            return
        if self.done_event is None:
            self.done_event = anyio.Event()
        await self.done_event.wait()


@attrs.frozen(kw_only=True)
class JobTableStatistics:
    """A snapshot of a :class:`JobTable`'s figures (see :meth:`JobTable.statistics`).

    Attributes:
        jobs: the jobs tracked now.
        counts: how many tracked jobs are in each state (states with none left out).
        committed: what this client's creates were charged (estimates until a charge is known).
        refunded: what the service gave back for failed jobs among them.
        spent: ``committed - refunded``.
        uncertain: creates whose outcome is unknown and whose job was not found.
        adopted: lost creates whose job a callback found.
        events_dropped: state changes a slow subscriber did not get.
    """

    jobs: int
    counts: Mapping[JobState, int]
    committed: Decimal
    refunded: Decimal
    spent: Decimal
    uncertain: int
    adopted: int
    events_dropped: int


def state_for(raw_status: int) -> JobState:
    """Map a status number to a state: 3 and up are failures, unknown lower numbers keep waiting."""
    if raw_status >= JobStatus.FAILED:
        return JobState.FAILED
    # IntEnum members hash as their numbers: no enum lookup on the poller's path.
    return _FROM_STATUS.get(raw_status, JobState.RUNNING)


class JobTable:
    """Every job this client created or attached, by id, with counts and spend.

    Finished records beyond ``max_finished`` are dropped, oldest first, so a long-running backend
    does not grow without bound; jobs that have not finished are never dropped.
    """

    def __init__(self, *, max_finished: int | None = 10_000) -> None:
        self._records: dict[str, JobRecord] = {}
        self._finished: deque[str] = deque()
        self._max_finished = max_finished
        self._counts: Counter[JobState] = Counter()
        self._subscribers: list[MemoryObjectSendStream[JobEvent]] = []
        self._committed = Decimal(0)
        self._refunded = Decimal(0)
        self._uncertain = 0
        self._adopted = 0
        self._events_dropped = 0

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._records

    def __iter__(self) -> Iterator[JobRecord]:
        return iter(list(self._records.values()))

    def __repr__(self) -> str:
        counts = ", ".join(f"{s.value}={n}" for s, n in self._counts.items() if n)
        return f"<JobTable {len(self._records)} jobs: {counts or 'empty'}; spent {self.spent}>"

    def get(self, job_id: str) -> JobRecord | None:
        """Return the record of ``job_id``, or None."""
        return self._records.get(job_id)

    @property
    def counts(self) -> dict[JobState, int]:
        """How many tracked jobs are in each state."""
        return {state: n for state, n in self._counts.items() if n}

    @property
    def spent(self) -> Decimal:
        """What the jobs this client created were charged, refunds taken off."""
        return self._committed - self._refunded

    @property
    def committed(self) -> Decimal:
        """What the jobs this client created were charged (the estimate until it is known)."""
        return self._committed

    @property
    def refunded(self) -> Decimal:
        """What the service gave back for failed jobs this client created."""
        return self._refunded

    @property
    def uncertain(self) -> int:
        """Creates whose outcome is unknown and whose job has not been found."""
        return self._uncertain

    @property
    def adopted(self) -> int:
        """Lost creates whose job a callback found (now in the table)."""
        return self._adopted

    @property
    def events_dropped(self) -> int:
        """State changes a subscriber too slow to keep up did not get."""
        return self._events_dropped

    def statistics(self) -> JobTableStatistics:
        """Return a snapshot of the table's figures; later changes do not touch it."""
        return JobTableStatistics(
            jobs=len(self._records),
            counts=MappingProxyType(self.counts),
            committed=self._committed,
            refunded=self._refunded,
            spent=self.spent,
            uncertain=self._uncertain,
            adopted=self._adopted,
            events_dropped=self._events_dropped,
        )

    def pending(self) -> list[JobRecord]:
        """Return the jobs that have not ended (they may still be charged or deliver a video)."""
        return [r for r in self._records.values() if not r.is_terminal]

    def add(self, record: JobRecord, *, created: bool = False) -> JobRecord:
        """Track ``record``; an id already tracked keeps its record (which is returned).

        ``created``: this client's own create made the job, so its charge counts in the spend.
        """
        existing = self._records.get(record.id)
        if existing is not None:
            return existing
        self._records[record.id] = record
        self._counts[record.state] += 1
        if created:
            # A charge that could not be read counts as the estimate until a query says more.
            charge = record.amount
            if charge is None and record.request is not None:
                charge = record.request.estimated_cost
            if charge is not None:
                record.counted = charge
                self._committed += charge
        if self._subscribers:
            self._emit(record, None)
        if record.is_terminal:
            self._remember_finished(record)
        return record

    def set_amount(self, record: JobRecord, amount: Decimal) -> None:
        """Learn what ``record`` was charged, when its create's answer did not say."""
        if record.amount is not None:
            return
        record.amount = amount
        if record.counted is not None:
            self._committed += amount - record.counted
            record.counted = amount

    def note_uncertain(self) -> None:
        """Count a create whose outcome is unknown."""
        self._uncertain += 1

    def note_adopted(self) -> None:
        """Count an uncertain create as resolved: its job was found (and is now in the table)."""
        self._uncertain = max(0, self._uncertain - 1)
        self._adopted += 1

    def transition(self, record: JobRecord, state: JobState) -> None:
        """Move ``record`` to ``state``; a finished or detached job never moves."""
        previous = record.state
        if previous is state or previous in _TERMINAL or previous is JobState.DETACHED:
            return
        self._move(record, state)
        if state in _TERMINAL:
            record.finished_at = time.monotonic()
            snapshot = record.snapshot
            refunded = state is JobState.FAILED and snapshot is not None and snapshot.refunded
            if refunded and record.counted:
                # Only a charge counted here is taken off (a finished job never moves again).
                self._refunded += record.counted
            self._remember_finished(record)
            self._wake(record)
        if self._subscribers:
            self._emit(record, previous)

    def detach(self, record: JobRecord) -> None:
        """Stop tracking an unfinished job (the client is closing) and wake its waiters."""
        previous = record.state
        if previous in _TERMINAL or previous is JobState.DETACHED:
            return
        self._move(record, JobState.DETACHED)
        self._wake(record)
        self._emit(record, previous)

    def resume(self, record: JobRecord, state: JobState) -> None:
        """Bring a detached or locally timed-out job back to a waiting ``state``."""
        previous = record.state
        if previous not in (JobState.DETACHED, JobState.TIMED_OUT) or state in _TERMINAL:
            return
        self._move(record, state)
        self._emit(record, previous)

    def _move(self, record: JobRecord, state: JobState) -> None:
        self._counts[record.state] -= 1
        self._counts[state] += 1
        record.state = state

    def _wake(self, record: JobRecord) -> None:
        event, record.done_event = record.done_event, None
        callback, record.on_done = record.on_done, None
        if event is not None:
            event.set()
        if callback is not None:
            try:
                callback(record)
            except Exception:
                logger.exception("a job-done callback failed", extra={"job_id": record.id})

    def _remember_finished(self, record: JobRecord) -> None:
        if self._max_finished is None:
            return
        self._finished.append(record.id)
        while len(self._finished) > self._max_finished:
            old = self._records.pop(self._finished.popleft(), None)
            if old is not None:
                self._counts[old.state] -= 1

    def subscribe(self, max_buffer: int = 1024) -> MemoryObjectReceiveStream[JobEvent]:
        """Return a stream of every state change from now on.

        The engine never waits for a slow reader: when ``max_buffer`` events are waiting, newer
        ones are dropped for that reader and counted in ``events_dropped``. Close the stream (or
        use it in ``async with``) to stop the feed.
        """
        send, receive = anyio.create_memory_object_stream[JobEvent](max_buffer)
        self._subscribers.append(send)
        return receive

    def _emit(self, record: JobRecord, previous: JobState | None) -> None:
        if not self._subscribers:
            return
        event = JobEvent(
            job_id=record.id,
            state=record.state,
            previous=previous,
            raw_status=record.raw_status,
            at=time.time(),
        )
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except anyio.WouldBlock:
                self._events_dropped += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove(send)
                send.close()

    def close(self) -> None:
        """End every event feed."""
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()
