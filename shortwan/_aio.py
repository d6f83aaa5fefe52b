"""Asyncio helpers: waiting that nothing cuts short, and ``async with`` for what has ``aclose``.

:func:`wait_through_cancellation` is for work whose end must be known (a paid create, a write).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from types import TracebackType
from typing import Any

import anyio

__all__ = ["ClosedOnExit", "wait_through_cancellation"]


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
