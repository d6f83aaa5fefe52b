"""Asyncio helpers: waiting that nothing cuts short, deadlines that share one timer, and
``async with`` for what has ``aclose``.

:func:`wait_through_cancellation` is for work whose end must be known (a paid create, a write).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Collection
from types import TracebackType
from typing import Any

import anyio

__all__ = ["ClosedOnExit", "DeadlineWatch", "wait_through_cancellation"]


async def wait_through_cancellation(
    live: Collection[asyncio.Future[Any]],
) -> asyncio.CancelledError | None:
    """Wait until every future of ``live`` (which may grow meanwhile) is done.

    Neither an anyio cancel scope nor a native ``Task.cancel`` (``asyncio.wait_for``,
    ``asyncio.timeout``, a web framework) cuts the wait short, and the futures themselves are never
    cancelled by it. A native cancellation that arrived meanwhile is returned, for the caller to
    raise once it is done.
    """
    cancelled: asyncio.CancelledError | None = None
    while pending := {future for future in live if not future.done()}:
        try:
            with anyio.CancelScope(shield=True):
                await asyncio.shield(asyncio.wait(pending))
        except asyncio.CancelledError as exc:
            cancelled = exc
    return cancelled


class DeadlineWatch:
    """Cancel each watched task at its deadline, with one timer for all of them.

    A deadline per timer handle costs every request a handle made, pushed on the loop's heap and
    cancelled; here a watch is a dict entry. It serves deadlines that come in the order they are
    set (each a fixed time after it is set): then the oldest watch is the next to pass, and the one
    timer is armed for it. :meth:`watch` refuses a deadline earlier than one already watched, for
    the caller to time some other way.

    A task is cancelled as ``asyncio.timeout`` does it, with ``Task.cancel``. :meth:`leave` says
    whether the ``CancelledError`` that came out is the watch's alone, to turn into a timeout
    (anything else is to propagate).
    """

    def __init__(self) -> None:
        # Insertion order is deadline order: see watch().
        self._live: dict[int, tuple[asyncio.Task[Any], float, int]] = {}
        self._passed: dict[int, tuple[asyncio.Task[Any], int]] = {}
        self._tokens = itertools.count()
        self._latest = -float("inf")
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, when: float) -> int | None:
        """Watch the current task until ``when`` (the loop's clock); ``None``: not watched."""
        if when < self._latest:
            return None
        task = asyncio.current_task()
        if task is None:
            return None
        self._latest = when
        token = next(self._tokens)
        self._live[token] = (task, when, _cancelling(task))
        if self._timer is None:
            self._timer = task.get_loop().call_at(when, self._passing, when)
        return token

    def leave(self, token: int, error: BaseException | None = None) -> bool:
        """Stop watching; return whether ``error`` (what ended the wait, if anything) is the
        watch's own cancellation alone, for the caller to turn into a timeout.

        After a deadline passed, the watch's cancellation is taken back (``Task.uncancel``)
        whatever came of it, so only a cancellation from elsewhere is left to propagate.
        """
        if self._live.pop(token, None) is not None:
            return False  # ended before its deadline
        task, cancelling = self._passed.pop(token)
        left = _uncancel(task)
        return isinstance(error, asyncio.CancelledError) and left <= cancelling

    def close(self) -> None:
        """Disarm the timer, once nothing is watched: a wait still under way keeps its deadline
        (the timer then lapses after the last one)."""
        if not self._live and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _passing(self, due: float) -> None:
        self._timer = None
        live = self._live
        now = due
        while live:
            token = next(iter(live))
            task, when, cancelling = live[token]
            if when > now:
                # A timer that fired late ends every deadline already past, not one per turn.
                now = max(now, task.get_loop().time())
                if when > now:
                    self._timer = task.get_loop().call_at(when, self._passing, when)
                    return
            del live[token]
            self._passed[token] = (task, cancelling)
            task.cancel()


if sys.version_info >= (3, 11):

    def _cancelling(task: asyncio.Task[Any]) -> int:
        return task.cancelling()

    def _uncancel(task: asyncio.Task[Any]) -> int:
        return task.uncancel()

else:  # Python 3.10 keeps no count of cancellations: the deadline is the best account of one

    def _cancelling(task: asyncio.Task[Any]) -> int:
        return 0

    def _uncancel(task: asyncio.Task[Any]) -> int:
        return 0


class ClosedOnExit:
    """Leaving an ``async with`` block calls :meth:`aclose`, however the block ended.

    Each subclass says how it opens (``__aenter__``) and how it closes (``aclose``).
    """

    async def aclose(self) -> None:
        """Release what the object holds."""
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
