"""Script calls made by many tasks of a process at once, sent to Redis together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, Protocol, TypeVar, cast

from redis.typing import EncodableT

from .._errors import SharedStateError
from ._lua import Call, Script

__all__ = ["Grouped", "Merged"]

logger = logging.getLogger("shortwan")

# How long a round waits after its first call for others to join it, while calls come in bursts.
_GATHER: Final = 0.001
# The longest a lazy call (work that can wait a moment, such as a settle) waits for a round trip
# that another call starts before it starts one of its own.
_LAZY: Final = 0.02


class MergedState(Protocol):
    """What the callers of one merged call share (see :meth:`Grouped.call_merged`).

    A state may also have ``answered(reply)``, called once with the reply (or the
    :class:`~shortwan.SharedStateError` of a call the server refused, which did not run) before
    any caller wakes, and ``lost(sent)``, called instead when the round failed: ``sent`` says the
    call may have run. They see the end of a call even when every caller was cancelled.
    """

    def args(self, items: list[Any]) -> Sequence[EncodableT]:
        """Return the call's arguments for the items of its callers, as it leaves."""


S = TypeVar("S", bound=MergedState)


class Sender(Protocol):
    """What a :class:`Grouped` needs of the link it sends through."""

    def spawn(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``func()`` in the background until the link closes."""

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Run ``calls`` in order, in one round trip; return each reply."""


class Grouped:
    """Script calls made by many tasks at once, sent together, in the order they were made.

    The first call starts a round trip; the calls made while it is on its way go together in the
    next one, so a burst of calls costs a few round trips, not one each. The server runs them in
    order. When the server cannot be reached, every call waiting at that moment fails too: none
    runs after one that was lost.
    """

    def __init__(self, link: Sender) -> None:
        self._link = link
        self._waiting: list[tuple[Call, asyncio.Future[Any]] | Merged] = []
        # The merged calls in _waiting, by key: a caller with the same key joins one of them.
        self._merging: dict[object, Merged] = {}
        self._callers = 0  # callers of the calls in _waiting
        # One task sends every round, started by the first call and woken by the next ones: a
        # wake-up costs less than a task.
        self._wake: asyncio.Event | None = None
        self._busy = False  # the last round served more than one caller
        # Wakes the task for calls that wait for a round (see call's ``lazy``).
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._due = False  # _waiting holds a call that is not lazy, or lazy ones waited enough

    async def call(
        self,
        script: Script,
        args: Sequence[EncodableT],
        *,
        keys: Sequence[str] = (),
        lazy: bool = False,
    ) -> Any:
        """Run ``script`` with ``keys`` and ``args`` along with the others; return its reply.

        A ``lazy`` call does not start a round trip of its own: it goes with the next one that
        another call starts, or after _LAZY at the latest (for work that can wait a moment).

        Raises:
            SharedStateError: the server could not be reached, or refused this call.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(((script, keys, args), future), lazy=lazy)
        try:
            reply = await future
        except BaseException:
            if not future.cancel() and not future.cancelled():
                future.exception()  # seen, so it is not reported as never retrieved
            raise
        if isinstance(reply, SharedStateError):
            raise reply
        return reply

    async def call_merged(
        self,
        key: object,
        script: Script,
        keys: Sequence[str],
        start: Callable[[], S],
        item: Any = None,
    ) -> tuple[Any, int, S]:
        """Join the call of ``key`` still waiting to go, or start one; return its reply, this
        caller's place in it and its state.

        Callers that ask for the same thing at once share one call, made when the round leaves.
        The first of them makes its state with ``start()``; ``state.args(items)`` then gives
        the call's arguments for the ``item`` of each caller that joined, in the order they
        joined, and its script serves them all (the first caller's place is 0). Every caller
        gets the same state, where what one of them reads of the reply can be kept for all.
        What they share costs one call, not one each.

        Raises:
            SharedStateError: as for :meth:`call`.
        """
        merged = self._merging.get(key)
        if merged is None:
            merged = Merged(script, keys, start())
            self._enqueue(merged)  # refused by a closed state before anything is kept
            self._merging[key] = merged
        else:
            self._callers += 1
        future: asyncio.Future[tuple[Any, int]] = asyncio.get_running_loop().create_future()
        merged.futures.append(future)
        merged.items.append(item)
        reply, place = await future
        if isinstance(reply, SharedStateError):
            # One error object each: raised in many tasks, a shared one would collect all their
            # tracebacks.
            raise type(reply)(*reply.args)
        # The state of a call of this key is the one its first caller's start() made.
        return reply, place, cast(S, merged.state)

    def _enqueue(
        self, entry: tuple[Call, asyncio.Future[Any]] | Merged, *, lazy: bool = False
    ) -> None:
        if self._wake is None:
            self._link.spawn(self._send)  # refused by a closed state, before anything is queued
            self._wake = asyncio.Event()
        self._waiting.append(entry)
        self._callers += 1
        if not lazy:
            self._due = True
            self._wake.set()
        elif self._lazy_timer is None:
            self._lazy_timer = asyncio.get_running_loop().call_later(_LAZY, self._lazy_due)

    def _lazy_due(self) -> None:
        self._lazy_timer = None
        self._due = True
        if self._wake is not None:
            self._wake.set()

    def _take_waiting(self) -> list[tuple[Call, asyncio.Future[Any]] | Merged]:
        batch, self._waiting = self._waiting, []
        self._merging.clear()  # those taken are on their way: nobody joins them any more
        self._busy = self._callers > 1
        self._callers = 0
        self._due = False
        if self._lazy_timer is not None:  # the lazy calls go with these
            self._lazy_timer.cancel()
            self._lazy_timer = None
        return batch

    async def _send(self) -> None:
        batch: list[tuple[Call, asyncio.Future[Any]] | Merged] = []
        try:
            while True:
                assert self._wake is not None  # noqa: S101 - set by the call that started this
                await self._wake.wait()
                if self._busy:
                    # Calls come many at a time lately: a moment for the others woken with the
                    # first one, so a burst costs one round trip, not one each. (A lone caller
                    # is not kept waiting.)
                    await asyncio.sleep(_GATHER)
                self._wake.clear()
                while self._waiting and self._due:
                    batch = self._take_waiting()
                    await self._round(batch)
                    batch = []
        finally:
            self._wake = None
            _fail_all(batch, "the shared state is closing", sent=True)
            _fail_all(self._take_waiting(), "the shared state is closing", sent=False)

    async def _round(self, batch: list[tuple[Call, asyncio.Future[Any]] | Merged]) -> None:
        calls = [entry.call() if isinstance(entry, Merged) else entry[0] for entry in batch]
        try:
            replies = await self._link.run_many(calls)
        except (SharedStateError, RuntimeError) as exc:  # unreachable, or closed
            _fail_all(batch, str(exc), sent=True)
            _fail_all(self._take_waiting(), str(exc), sent=False)
            return
        for entry, reply in zip(batch, replies, strict=True):
            if isinstance(entry, Merged):
                entry.answer(reply)
            elif not entry[1].done():  # else its caller was cancelled
                entry[1].set_result(reply)


class Merged:
    """One call that several callers share (see :meth:`Grouped.call_merged`)."""

    __slots__ = ("answered", "futures", "items", "keys", "lost", "script", "state")

    def __init__(self, script: Script, keys: Sequence[str], state: MergedState) -> None:
        self.script = script
        self.keys = keys
        self.state = state
        self.futures: list[asyncio.Future[tuple[Any, int]]] = []
        self.items: list[Any] = []
        self.answered: Callable[[Any], None] | None = getattr(state, "answered", None)
        self.lost: Callable[[bool], None] | None = getattr(state, "lost", None)

    def call(self) -> Call:
        """Return the call for every caller that joined."""
        return (self.script, self.keys, self.state.args(self.items))

    def answer(self, reply: Any) -> None:
        """Give each caller the reply and its place."""
        if self.answered is not None:
            try:
                self.answered(reply)
            except Exception:  # its callers still hear the reply; the round goes on
                logger.exception("reading a merged answer failed")
        for place, future in enumerate(self.futures):
            if not future.done():  # else its caller was cancelled
                future.set_result((reply, place))


def _fail_all(
    entries: list[tuple[Call, asyncio.Future[Any]] | Merged], why: str, *, sent: bool
) -> None:
    for entry in entries:
        if isinstance(entry, Merged) and entry.lost is not None:
            entry.lost(sent)
        _fail(entry, why)


def _fail(entry: tuple[Call, asyncio.Future[Any]] | Merged, why: str) -> None:
    futures = entry.futures if isinstance(entry, Merged) else [entry[1]]
    for future in futures:
        if not future.done():
            # One error object each: raised in many tasks, a shared one would collect all
            # their tracebacks.
            future.set_exception(SharedStateError(why))
