"""Waiting that nothing cuts short: for work whose end must be known (a paid create, a write)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import anyio

__all__ = ["wait_through_cancellation"]


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
