"""The callback receiver's link to the registry: tokens mirrored in the background, callbacks
routed, and the ends of jobs taken over published.

A create never waits for Redis: the receiver only marks a token as changed, and one task writes
what each changed token stands for at the moment of writing (so a token registered and forgotten
between two writes costs nothing, and writes can never land out of order). While Redis is
unreachable the marks wait; once it answers again every live token is written anew, since a
restarted server without persistence has forgotten them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import anyio

from .._callback_shared import ForwardedCallback, Route, TokenSource
from .._errors import ConfigurationError, SharedStateError
from ._core import Link
from ._jobs import JobEnd, JobView
from ._tokens import TokenRegistry

if TYPE_CHECKING:
    from .._table import JobRecord

__all__ = ["CallbackTokens"]

logger = logging.getLogger("shortwan")

# Tokens written per round trip.
_BATCH: Final = 512
# After a failed write, before the next try (a refused call leaves the server "online").
_RETRY_PAUSE: Final = 0.25


class CallbackTokens:
    """What a :class:`~shortwan.callbacks.CallbackReceiver` shares through (one per state).

    Made by :meth:`SharedState.callback_tokens`; the receiver calls :meth:`start` when it is
    given the state.
    """

    def __init__(self, link: Link, registry: TokenRegistry, jobs: JobView) -> None:
        self._link = link
        self._registry = registry
        self._jobs = jobs
        self._source: TokenSource | None = None
        self._dirty: dict[bytes, None] = {}  # insertion-ordered set
        self._wake = anyio.Event()
        # Ends of jobs taken over that Redis did not take; published once it is back.
        self._unpublished: list[JobEnd] = []

    def __repr__(self) -> str:
        return f"<CallbackTokens worker={self._link.worker_id!r} unwritten={len(self._dirty)}>"

    @property
    def online(self) -> bool:
        """Whether Redis answered its last call."""
        return self._link.online

    @property
    def unwritten(self) -> int:
        """Tokens whose registration is still to be written."""
        return len(self._dirty)

    def start(self, source: TokenSource, on_forwarded: Callable[[ForwardedCallback], None]) -> None:
        """Mirror ``source``'s tokens and hand callbacks forwarded here to ``on_forwarded``.

        Raises:
            ConfigurationError: another receiver uses this shared state already.
        """
        if self._source is not None:
            raise ConfigurationError(
                "another callback receiver shares through this shared state; use one receiver "
                "per process (several clients may share it)"
            )
        self._source = source
        self._link.on_recovery(self._write_all_again)
        self._link.spawn(self._write_forever)
        self._registry.on_forwarded(on_forwarded)

    def changed(self, key: bytes) -> None:
        """Write what the token of digest ``key`` stands for now, soon."""
        self._dirty[key] = None
        self._wake.set()

    async def route(self, token: str, body: bytes | None, *, take_over: bool) -> Route:
        """Route a callback for a token this worker does not hold (see TokenRegistry.route)."""
        try:
            return await self._registry.route(token, body, take_over=take_over)
        except RuntimeError as exc:  # the shared state was closed
            raise SharedStateError(str(exc)) from exc

    def publish_end(self, record: JobRecord) -> None:
        """Publish the end of ``record`` for every worker, in the background."""
        end = JobEnd.from_record(record, seen_by=self._link.worker_id)
        try:
            self._link.spawn(lambda: self._publish(end))
        except RuntimeError:
            logger.warning("job %s ended after the shared state closed", end.job_id)

    async def _publish(self, end: JobEnd) -> None:
        try:
            await self._jobs.publish(end)
        except SharedStateError as exc:
            logger.warning("the end of job %s waits for Redis: %s", end.job_id, exc)
            self._unpublished.append(end)

    async def _write_all_again(self) -> None:
        if self._source is not None:
            for key in self._source.registrations():
                self._dirty[key] = None
        ends, self._unpublished = self._unpublished, []
        for end in ends:
            await self._publish(end)
        self._wake.set()

    async def _write_forever(self) -> None:
        source = self._source
        assert source is not None  # noqa: S101 - started with one
        while True:
            while not self._dirty:
                self._wake = anyio.Event()
                await self._wake.wait()
            await self._link.wait_online()
            keys = []
            for key in self._dirty:
                keys.append(key)
                if len(keys) >= _BATCH:
                    break
            for key in keys:
                del self._dirty[key]
            # What each token stands for now, not when it was marked: the latest state wins.
            entries = [(key, source.registration(key)) for key in keys]
            try:
                await self._registry.write(entries)
            except SharedStateError as exc:
                logger.debug("callback tokens wait for Redis: %s", exc)
                for key in keys:
                    self._dirty.setdefault(key, None)
                await anyio.sleep(_RETRY_PAUSE)
                await self._link.wait_online()
