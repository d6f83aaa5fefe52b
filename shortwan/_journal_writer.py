"""The journal's writer: one thread that owns the SQLite file and commits writes in groups.

Every write waiting at the same moment goes in one transaction (one fsync for many jobs), and the
event loop never blocks on the disk. An advisory lock beside the file keeps a second run of the
same batch out: two runs writing one journal would each pay for its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

if sys.platform != "win32":
    import fcntl

from ._aio import wait_through_cancellation
from ._errors import JournalError

__all__ = ["SCHEMA_VERSION", "Writer", "settled"]

SCHEMA_VERSION: Final = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    model TEXT NOT NULL,
    estimate TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    job_id TEXT,
    amount TEXT,
    video_url TEXT,
    error_type TEXT,
    error_message TEXT,
    refunded INTEGER,
    raw_status INTEGER,
    path TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_job_id ON requests (job_id);
"""


async def settled(future: asyncio.Future[Any]) -> None:
    """Wait until the writer thread settled ``future``, even through a native cancellation.

    An anyio shield does not stop ``task.cancel()``; a cancellation that arrives meanwhile is
    re-raised once the thread is done with the write, so a cancelled caller never leaves before
    its write is on disk.
    """
    cancelled = await wait_through_cancellation((future,))
    if cancelled is not None:
        if not future.cancelled():
            future.exception()  # Nobody will read it now: mark it retrieved.
        raise cancelled


_Item = tuple[Callable[[sqlite3.Connection], Any], bool, asyncio.Future[Any]]
_Done = tuple[asyncio.Future[Any], Any, BaseException | None]


class Writer(threading.Thread):
    """Owns the SQLite connection; runs every operation in order, committing them in groups.

    The thread lives as long as the journal is open: whatever an operation or a transaction raises
    becomes a :class:`JournalError` for the operations it concerns, never the end of the thread.
    """

    def __init__(self, path: Path, synchronous: str, busy_timeout: float) -> None:
        super().__init__(name=f"shortwan-journal {path.name}", daemon=True)
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.jobs: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.stopped: asyncio.Future[None] = self.loop.create_future()

    def _settle(
        self, future: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        def settle() -> None:
            # A future that is already done (cancelled by a caller that left) has nobody waiting.
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        # A closed loop raises RuntimeError: then nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(settle)

    def _error(self, exc: BaseException, what: str = "") -> JournalError:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
            text += (
                f" (another connection held the write lock for more than "
                f"busy_timeout={self.busy_timeout:g} s)"
            )
        error = JournalError(f"journal {self.path}: {what}{text}")
        error.__cause__ = exc
        return error

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA busy_timeout={round(self.busy_timeout * 1000)}")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
        except BaseException:
            conn.close()
            raise
        if row is not None and row[0] != str(SCHEMA_VERSION):
            conn.close()
            raise JournalError(
                f"{self.path} is a shortwan journal of schema {row[0]}; this version reads "
                f"schema {SCHEMA_VERSION}"
            )
        return conn

    def _lock(self) -> int | None:
        """Take the journal's run lock: two runs writing one journal would each pay for its
        requests. Released by the system when the file is closed or the process dies."""
        if sys.platform == "win32":  # pragma: no cover - no advisory locks there
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalError(
                f"journal {self.path} is in use by another run (in this process or another); "
                "two runs of one batch would both pay for its requests"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def run(self) -> None:
        lock = None
        try:
            lock = self._lock()
            conn = self._open()
        except Exception as exc:  # Every failure to open is reported to the caller.
            if lock is not None:
                os.close(lock)
            error = exc if isinstance(exc, JournalError) else self._error(exc, "cannot open it: ")
            self._settle(self.ready, None, error)
            self._settle(self.stopped, None, None)
            return
        self._settle(self.ready, None, None)
        try:
            self._serve(conn)
        finally:
            conn.close()
            if lock is not None:
                os.close(lock)
            # Nothing is served any more: whatever is still queued fails instead of hanging.
            while True:
                try:
                    item = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    self._settle(item[2], None, JournalError(f"journal {self.path} is closed"))
            self._settle(self.stopped, None, None)

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            batch = [self.jobs.get()]
            # Take everything already waiting: one transaction (and one fsync) for all of it.
            while True:
                try:
                    batch.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            items = [item for item in batch if item is not None]
            try:
                done = self._group(conn, items)
            except Exception as exc:  # Not expected; still, the thread must outlive it.
                done = [(future, None, self._error(exc)) for *_, future in items]
            for future, result, error in done:
                self._settle(future, result, error)
            if len(items) < len(batch):
                return

    def _group(self, conn: sqlite3.Connection, items: list[_Item]) -> list[_Done]:
        """Run ``items`` in order, the writes in one transaction; return how each one ended.

        Failures are handled at two levels. An operation that raises is rolled back to a savepoint
        taken just before it, alone: its neighbours in the group are not its business and are
        committed, and its caller gets the error knowing nothing of it was recorded. A failure of
        the transaction itself (``BEGIN`` kept out by a lock past the busy timeout, ``COMMIT``, an
        error after which SQLite dropped the transaction) fails every operation of the group the
        same way, after a rollback: no caller is told "done" for a write that is not on disk, and
        none is told "failed" for one that is. Retrying them one by one is not worth it there: the
        cause (a lock, a full disk) is shared, and a retry would wait out the busy timeout again.
        """
        if not any(write for _func, write, _future in items):
            return [self._one(conn, item) for item in items]
        try:
            conn.execute("BEGIN IMMEDIATE")
            done = [self._one(conn, item, savepoint=True) for item in items]
            conn.execute("COMMIT")
        except Exception as exc:  # Reported to every caller of the group.
            if conn.in_transaction:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
            return [
                (future, None, self._error(exc, "not recorded: " if write else ""))
                for _func, write, future in items
            ]
        return done

    def _one(self, conn: sqlite3.Connection, item: _Item, *, savepoint: bool = False) -> _Done:
        func, _write, future = item
        if savepoint:
            conn.execute("SAVEPOINT operation")
        try:
            result = func(conn)
        except Exception as exc:  # Any failure of one operation is its caller's.
            if savepoint:
                if not conn.in_transaction:
                    raise  # SQLite rolled the whole transaction back: the group failed.
                conn.execute("ROLLBACK TO operation")
                conn.execute("RELEASE operation")
            return (future, None, self._error(exc))
        if savepoint:
            conn.execute("RELEASE operation")
        return (future, result, None)
