"""Which positions of a batch's input wait on which jobs, and until when.

Kept per batch, not on the shared job records: two batches of one client may wait on one job (an
attached id, a shared journal), and one batch may wait on a job twice (two journal keys naming it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio

from ._table import JobRecord

__all__ = ["Waiters"]

_I = TypeVar("_I")


class Waiters(Generic[_I]):
    """The waiting positions of one batch, each with its job, its deadline and its item.

    Invariant: a position is waiting from :meth:`add` until one of :meth:`take_ended`,
    :meth:`watch_deadlines` or :meth:`clear` hands it out, and only one of them ever does. While
    it waits it is found from its job (so the job's end reaches it) and, under a timeout, from the
    queue of deadlines (so its time-out does). An item is kept only when ``keep_items`` is set:
    the fast path holds no more than the position and the record per job.

    Args:
        timeout: seconds each position may wait (``None``: no limit).
        keep_items: keep each position's item, to hand out with it.
        on_end: registered as the done-callback of every job waited on (one bound method for
            all jobs: no closure per job); it calls :meth:`take_ended`.
    """

    def __init__(
        self, *, timeout: float | None, keep_items: bool, on_end: Callable[[JobRecord], None]
    ) -> None:
        self._timeout = timeout
        self._keep_items = keep_items
        self._on_end = on_end
        self._waiting: dict[int, JobRecord] = {}
        # The first position waiting on each job, and the others, rarer, kept apart.
        self._index_of: dict[str, int] = {}
        self._more_indexes: dict[str, list[int]] = {}
        self._items: dict[int, _I] = {}
        # Every position gets the same timeout, so deadlines arrive in admission order.
        self._deadlines: deque[tuple[float, int, JobRecord]] = deque()
        self._deadline_wake = anyio.Event()

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def job_ids(self) -> list[str]:
        """The jobs waited on, one entry per waiting position."""
        return [record.id for record in self._waiting.values()]

    def add(self, index: int, record: JobRecord, item: _I) -> None:
        """Wait at ``index`` for ``record`` to end (or for the timeout)."""
        self._waiting[index] = record
        if record.id in self._index_of:
            self._more_indexes.setdefault(record.id, []).append(index)
        else:
            self._index_of[record.id] = index
            # One callback per job: at its end, take_ended hands out every position at once.
            record.add_done_callback(self._on_end)
        if self._keep_items:
            self._items[index] = item
        if self._timeout is not None:
            self._deadlines.append((time.monotonic() + self._timeout, index, record))
            if len(self._deadlines) == 1:
                self._deadline_wake.set()

    def take_ended(self, record: JobRecord) -> list[tuple[int, _I | None]]:
        """Hand out the positions still waiting on ``record``, which has ended."""
        indexes = self._more_indexes.pop(record.id, [])
        first = self._index_of.pop(record.id, None)
        if first is not None:
            indexes.append(first)
        taken = []
        for index in indexes:
            if self._waiting.get(index) is record:  # else timed out already, or cleared
                del self._waiting[index]
                taken.append((index, self._items.pop(index, None)))
        return taken

    async def watch_deadlines(self, expire: Callable[[int, JobRecord, _I | None], None]) -> None:
        """Hand each position whose deadline passes while it waits to ``expire``; run until
        cancelled."""
        deadlines = self._deadlines
        while True:
            while deadlines and self._waiting.get(deadlines[0][1]) is not deadlines[0][2]:
                deadlines.popleft()  # handed out already
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
            # Its entry by job id goes when the job ends; take_ended then finds it handed out.
            del self._waiting[index]
            expire(index, record, self._items.pop(index, None))

    def clear(self) -> None:
        """Stop waiting anywhere: the batch stopped, and the jobs stay with the client."""
        self._waiting.clear()
        self._index_of.clear()
        self._more_indexes.clear()
        self._items.clear()
        self._deadlines.clear()
