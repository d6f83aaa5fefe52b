"""The one stream reader of a process: job ends of the namespace and this worker's inbox.

One blocking ``XREAD`` on one pooled connection serves every waiter and the callback inbox of the
process, however many there are. Streams keep their entries, so a reader that lost the server for a
moment picks up where it stopped; after a longer outage (or a restart that emptied the server) it
starts again from the server's clock and tells the job view to look up every job it waits for.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio

from .._errors import SharedStateError
from ._core import Link, text

__all__ = ["StreamReader"]

logger = logging.getLogger("shortwan")

# Below the command timeout, so a quiet stream never looks like a dead server.
_BLOCK_MS: Final = 1000
_BATCH: Final = 256

Entry = tuple[str, dict[bytes, bytes]]
Handler = Callable[[list[Entry]], None]


class StreamReader:
    """Reads the streams the pieces of one :class:`Link` listen to, in one background task."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._handlers: dict[str, Handler] = {}
        self._armed: list[Callable[[], Awaitable[None]]] = []
        self._from_now: set[str] = set()
        # The last entry id read from each stream; a stream read "from now" gets one when armed.
        self._from: dict[str, str] = {}
        self._running = False
        self._unarmed = True
        self._ready = anyio.Event()

    def listen(
        self,
        stream: str,
        handler: Handler,
        *,
        from_now: bool,
        armed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Feed the entries of ``stream`` to ``handler``: those added from now on, or all.

        ``armed`` runs each time reading (re)starts from the server's clock: entries added while
        nobody read are not seen, so it must look up what it waits for directly.
        """
        self._handlers[stream] = handler
        if armed is not None:
            self._armed.append(armed)
        if from_now:
            self._from_now.add(stream)
            self._unarmed = True
        else:
            self._from.setdefault(stream, "0")
        if not self._running:
            self._running = True
            self._link.spawn(self._run)

    async def ready(self) -> None:
        """Return once every stream read "from now" is read, so a new entry will be seen."""
        await self._ready.wait()

    async def _arm(self, *, again: bool) -> None:
        seconds, micros = await self._link.call(self._link.redis.time)
        # One millisecond back: an entry of this very millisecond is read twice rather than
        # missed, and every handler takes duplicates.
        start = f"{max(0, seconds * 1000 + micros // 1000 - 1)}-0"
        for stream in self._from_now:
            if again or stream not in self._from:
                self._from[stream] = start
        self._unarmed = False
        self._ready.set()
        for armed in list(self._armed):
            await armed()

    async def _run(self) -> None:
        outage = False
        while True:
            try:
                if self._unarmed or outage:
                    await self._arm(again=outage)
                    outage = False
                streams: dict[Any, Any] = dict(self._from)
                read = functools.partial(
                    self._link.redis.xread, streams, count=_BATCH, block=_BLOCK_MS
                )
                reply: Any = await self._link.call(read)
            except SharedStateError:
                # Reading starts again from the server's clock once it answers; whatever was
                # published meanwhile is looked up by the armed steps.
                outage = True
                await self._link.wait_online()
                continue
            for raw_stream, entries in reply or ():
                stream = text(raw_stream)
                batch = [(text(entry_id), fields) for entry_id, fields in entries]
                if not batch:
                    continue
                self._from[stream] = batch[-1][0]
                try:
                    self._handlers[stream](batch)
                except Exception:
                    logger.exception("an entry of shared stream %s could not be handled", stream)
