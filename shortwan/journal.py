"""A durable record of a batch, so a rerun after a crash never pays twice and loses nothing.

One row per logical request, keyed by a caller-given key or a stable hash of the request, moving
through ``intent → submitted → finished → downloaded`` (or ``uncertain`` when a create's outcome
is unknown). The intent is on disk before the create is sent and the job id as soon as the create
answer is read, so a process killed at any moment leaves a journal that says, for every request,
whether it was never sent, maybe sent, created (and which job), or done.

SQLite in WAL mode, written by one thread of its own: every write waiting at the same moment is
committed together (one fsync for many jobs), and the event loop never blocks on the disk.

A write that cannot be recorded raises :class:`JournalError` (a :class:`~shortwan.ShortWanError`);
the journal keeps working for the writes after it.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import anyio
import attrs

from ._aio import ClosedOnExit
from ._convert import request_args
from ._errors import JobFailedError, JournalError, ShortWanError
from ._journal_writer import SCHEMA_VERSION, Writer, settled
from ._models import ImageToVideo, Video

__all__ = ["SCHEMA_VERSION", "Entry", "EntryState", "Journal", "JournalError", "request_key"]

_T = TypeVar("_T")

# SQLite INTEGER is a signed 64-bit number; a larger Python int raises OverflowError when bound.
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

_SELECT: Final = (
    "SELECT key, state, model, estimate, attempts, job_id, amount, video_url, error_type, "
    "error_message, refunded, raw_status, path, updated FROM requests"
)
_SELECT_KEY: Final = _SELECT + " WHERE key = ?"
_SELECT_ALL: Final = _SELECT + " ORDER BY updated, key"


class EntryState(str, enum.Enum):
    """Where a journaled request stands."""

    INTENT = "intent"
    """About to be sent: the create may or may not have reached the service."""
    UNCERTAIN = "uncertain"
    """Sent, but its answer was lost: the job may exist and may be charged."""
    SUBMITTED = "submitted"
    """Created: the job id and amount are known; it can be collected by id."""
    FINISHED = "finished"
    """The job ended: a video URL or a failure."""
    DOWNLOADED = "downloaded"
    """The video is on disk."""


@attrs.frozen(kw_only=True)
class Entry:
    """One journaled request.

    Attributes:
        key: the request's key.
        state: where it stands.
        model: the model id.
        estimate: the cost expected before the create.
        attempts: how many times a create was started for it.
        job_id: the job, once created.
        amount: what the create charged.
        video_url: the result URL, on success.
        error_type: the class name of the failure, when the job failed.
        error_message: its text.
        refunded: whether a failed job's charge was returned.
        raw_status: the job's final status number.
        path: where the video was saved.
        updated: when the row last changed (seconds since the epoch).
    """

    key: str
    state: EntryState
    model: str
    estimate: Decimal
    attempts: int = 1
    job_id: str | None = None
    amount: Decimal | None = None
    video_url: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    refunded: bool | None = None
    raw_status: int | None = None
    path: Path | None = None
    updated: float = 0.0

    @property
    def is_done(self) -> bool:
        """Whether the job ended (its outcome can be replayed without asking the service)."""
        return self.state in (EntryState.FINISHED, EntryState.DOWNLOADED)

    @property
    def video(self) -> Video | None:
        """The video, when the job succeeded."""
        if self.job_id is None or self.video_url is None:
            return None
        return Video(job_id=self.job_id, url=self.video_url, urls=(self.video_url,))

    @property
    def error(self) -> ShortWanError | None:
        """The failure, rebuilt as a :class:`JobFailedError`, when the job failed."""
        if not self.is_done or self.video_url is not None:
            return None
        return JobFailedError(
            self.job_id or "(unknown)",
            self.error_message,
            refunded=self.refunded,
            status=self.raw_status,
        )


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _entry(row: tuple[Any, ...]) -> Entry:
    (key, state, model, estimate, attempts, job_id, amount, url) = row[:8]
    (error_type, error_message, refunded, raw_status, path, updated) = row[8:]
    return Entry(
        key=key,
        state=EntryState(state),
        model=model,
        estimate=_decimal(estimate) or Decimal(0),
        attempts=attempts,
        job_id=job_id,
        amount=_decimal(amount),
        video_url=url,
        error_type=error_type,
        error_message=error_message,
        refunded=None if refunded is None else bool(refunded),
        raw_status=raw_status,
        path=None if path is None else Path(path),
        updated=updated,
    )


def request_key(request: ImageToVideo) -> str:
    """Return a stable key for ``request``: a hash of its model and arguments.

    Equal requests get equal keys in every process and on every machine; a batch that asks for the
    same request twice tells the copies apart by their order (see ``generate_many``).
    """
    body = json.dumps(
        {"model": request.model, "args": request_args(request)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()[:40]


def _int64(value: int | None) -> int | None:
    """Clamp ``value`` into SQLite's INTEGER range, so a number from the service cannot overflow."""
    if value is None:
        return None
    return min(max(value, _INT64_MIN), _INT64_MAX)


class Journal(ClosedOnExit):
    """A SQLite file that records every request of a batch, for crash-safe resume.

    Pass it to :meth:`AsyncShortWan.generate_many` (or ``gather``) with ``journal=``. A rerun with
    the same journal and the same input skips requests that finished (replaying their outcome),
    re-attaches jobs that were created (no new create), and reports requests whose create may have
    been sent but whose answer was lost as :class:`SubmissionUncertainError`, unless the caller opts
    in to sending them again.

    Use it as an async context manager, or call :meth:`aclose`; it opens on first use.

    Args:
        path: the database file; its folder is created if needed.
        synchronous: ``"full"`` (default) survives a power cut; ``"normal"`` survives a crash of
            the process but may lose the last commits on power loss, and is faster.
        busy_timeout: how long, in seconds, a write waits for another connection (another
            process, the ``sqlite3`` shell) to release the file's write lock before it fails with
            :class:`JournalError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["full", "normal"] = "full",
        busy_timeout: float = 10.0,
    ) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        if not (math.isfinite(busy_timeout) and busy_timeout >= 0):
            raise ValueError(f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}")
        self.path = Path(path)
        self._synchronous = synchronous.upper()
        self._busy_timeout = float(busy_timeout)
        self._writer: Writer | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._writer else "unopened"
        return f"<Journal {str(self.path)!r} {state}>"

    async def __aenter__(self) -> Journal:
        await self._open()
        return self

    async def _open(self) -> Writer:
        if self._closed:
            raise RuntimeError("this journal is closed; open a new one")
        writer = self._writer
        if writer is None:
            writer = self._writer = Writer(self.path, self._synchronous, self._busy_timeout)
            writer.start()
        elif writer.loop is not asyncio.get_running_loop():
            raise RuntimeError("a journal is used from one event loop only")
        await asyncio.shield(writer.ready)
        return writer

    async def aclose(self) -> None:
        """Finish pending writes and close the file. Idempotent."""
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.jobs.put(None)
        with anyio.CancelScope(shield=True):
            try:
                await settled(writer.stopped)
            finally:
                await anyio.to_thread.run_sync(writer.join)

    async def _call(self, func: Callable[[sqlite3.Connection], _T], *, write: bool) -> _T:
        writer = await self._open()
        if self._writer is not writer:
            # Closed while it was opening: the writer may be gone, nobody would run this.
            raise RuntimeError("this journal is closed; open a new one")
        future: asyncio.Future[_T] = writer.loop.create_future()
        writer.jobs.put((func, write, future))
        if write:
            # A write that was handed over finishes; the caller must not believe it did not
            # happen, whatever cancels it meanwhile.
            await settled(future)
        else:
            # A read may be abandoned; shielding keeps the future uncancelled for the thread.
            await asyncio.shield(future)
        return future.result()

    # --- reads ---------------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        """Return the entry for ``key``, or ``None``."""

        def read(conn: sqlite3.Connection) -> Entry | None:
            row = conn.execute(_SELECT_KEY, (key,)).fetchone()
            return None if row is None else _entry(row)

        return await self._call(read, write=False)

    async def entries(self) -> list[Entry]:
        """Return every entry, oldest change first."""

        def read(conn: sqlite3.Connection) -> list[Entry]:
            rows = conn.execute(_SELECT_ALL)
            return [_entry(row) for row in rows]

        return await self._call(read, write=False)

    async def counts(self) -> Mapping[EntryState, int]:
        """Return how many entries are in each state."""

        def read(conn: sqlite3.Connection) -> dict[EntryState, int]:
            counts = dict.fromkeys(EntryState, 0)
            for state, count in conn.execute("SELECT state, COUNT(*) FROM requests GROUP BY 1"):
                counts[EntryState(state)] = count
            return counts

        return await self._call(read, write=False)

    async def spent(self) -> Decimal:
        """Return the money the journaled requests have committed.

        Created jobs count their charge (refunded failures count nothing); requests whose create
        may have been sent count their estimate, since they may have been charged.
        """

        def read(conn: sqlite3.Connection) -> Decimal:
            total = Decimal(0)
            rows = conn.execute("SELECT state, estimate, amount, refunded FROM requests")
            for state, estimate, amount, refunded in rows:
                if state in (EntryState.INTENT.value, EntryState.UNCERTAIN.value):
                    total += _decimal(estimate) or Decimal(0)
                elif not refunded:
                    total += _decimal(amount) or _decimal(estimate) or Decimal(0)
            return total

        return await self._call(read, write=False)

    # --- writes --------------------------------------------------------------------------------

    async def intent(self, key: str, *, model: str, estimate: Decimal) -> Entry:
        """Record that a create for ``key`` is about to be sent; durable when this returns.

        A second intent for the same key counts another attempt.
        """

        def write(conn: sqlite3.Connection) -> Entry:
            conn.execute(
                "INSERT INTO requests (key, state, model, estimate, updated) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET state = excluded.state, attempts = attempts + 1,"
                " job_id = NULL, amount = NULL, video_url = NULL, error_type = NULL,"
                " error_message = NULL, refunded = NULL, raw_status = NULL, path = NULL,"
                " updated = excluded.updated",
                (key, EntryState.INTENT.value, model, str(estimate), time.time()),
            )
            row = conn.execute(_SELECT_KEY, (key,)).fetchone()
            return _entry(row)

        return await self._call(write, write=True)

    async def submitted(self, key: str, *, job_id: str, amount: Decimal | None) -> None:
        """Record the job created for ``key``."""
        await self._update(
            key,
            state=EntryState.SUBMITTED.value,
            job_id=job_id,
            amount=None if amount is None else str(amount),
        )

    async def uncertain(self, key: str) -> None:
        """Record that the create for ``key`` was sent but its answer was lost."""
        await self._update(key, state=EntryState.UNCERTAIN.value)

    async def finished(
        self,
        key: str,
        *,
        video: Video | None = None,
        error: JobFailedError | None = None,
    ) -> None:
        """Record how the job of ``key`` ended: with ``video`` or with ``error``.

        A raw status outside SQLite's 64-bit range is stored clamped to that range.
        """
        if (video is None) == (error is None):
            raise ValueError("give either a video or an error")
        if video is not None:
            await self._update(key, state=EntryState.FINISHED.value, video_url=video.url)
        else:
            assert error is not None  # noqa: S101 - checked above
            await self._update(
                key,
                state=EntryState.FINISHED.value,
                error_type=type(error).__name__,
                error_message=error.reason,
                refunded=None if error.refunded is None else int(error.refunded),
                raw_status=_int64(error.status),
            )

    async def downloaded(self, key: str, path: str | os.PathLike[str]) -> None:
        """Record that the video of ``key`` was saved at ``path``."""
        await self._update(key, state=EntryState.DOWNLOADED.value, path=os.fspath(path))

    async def forget(self, key: str) -> None:
        """Drop ``key``: its create was refused, so no job exists and a rerun may send it again."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM requests WHERE key = ?", (key,))

        await self._call(write, write=True)

    async def _update(self, key: str, **values: str | int | None) -> None:
        names = ", ".join(f"{name} = ?" for name in values)
        params = (*values.values(), time.time(), key)

        def write(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(f"UPDATE requests SET {names}, updated = ? WHERE key = ?", params)  # noqa: S608 - names are ours
            if cursor.rowcount == 0:
                raise ValueError(f"no journal entry for key {key!r}")

        await self._call(write, write=True)
