"""The operations of a shared spend counter on their way to the server, applied once each.

Draws (settles and room given back, by pool), settles of reservations no pool holds, and refunds
wait here, in order, and go to the server together in the background, with the next round trip
that something else starts (or after a moment). Each is applied once: the server remembers its
id, so one sent again after a lost reply changes nothing. While Redis cannot be reached they are
kept, and the counter grants nothing new (it is stalled) until they are applied.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Final, Literal

import anyio
import attrs
from redis.typing import EncodableT

from .._errors import SharedStateError
from ._books import APPLY
from ._core import Link, text
from ._pool import Pool

__all__ = ["Outbox", "Pending"]

logger = logging.getLogger("shortwan")

# Operations per call when applying those kept (one call stays short).
_APPLY_BATCH: Final = 256


@attrs.define(slots=True, eq=False)
class Pending:
    """A draw, settle or refund that has not reached the server yet."""

    what: Literal["draw", "settle", "refund"]
    window: str
    op: str
    micro: int
    charged: int | str
    pool: Pool | None = None
    sent: bool = False  # on its way once: its amounts no longer change


class Outbox:
    """The operations of one counter waiting for the server, in the order they were made.

    Args:
        link: the connection.
        prefix: the counter's key prefix.
        kind: its window kind.
        seen: reads the books in an answer line; returns its window.
        dropped: told of a pool whose lease the server has dropped.
    """

    def __init__(
        self,
        link: Link,
        *,
        prefix: str,
        kind: str,
        seen: Callable[[str], str],
        dropped: Callable[[Pool], None],
    ) -> None:
        self._link = link
        self._calls = link.grouped
        self._prefix = prefix
        self._kind = kind
        self._seen = seen
        self._dropped = dropped
        self.pending: deque[Pending] = deque()
        self.stalled = False  # some are kept from an outage: nothing new is granted
        # Taken without a trip through the event loop when it is free (the usual case).
        self.flushing = anyio.Lock(fast_acquire=True)
        self._sending = False  # a task is applying those waiting
        self._ops = 0  # operation ids: <pool id>:<n>

    def next_op(self, pool_id: str, kind: str = "") -> str:
        """Return a new operation id of pool ``pool_id`` (``kind`` marks grows)."""
        self._ops += 1
        return f"{pool_id}:{kind}{self._ops}"

    def add(self, op: Pending) -> None:
        """Queue ``op`` after those waiting."""
        self.pending.append(op)

    def draw(self, pool: Pool, micro: int, charge: int) -> None:
        """Take ``micro`` off the pool on the server (-1: drop its lease) and spend ``charge``,
        with the draws of the moment that have not left yet."""
        if micro > 0:
            pool.drawing += micro
        last = self.pending[-1] if self.pending else None
        if last is not None and last.pool is pool and not last.sent and min(last.micro, micro) >= 0:
            last.micro += micro
            last.charged = int(last.charged) + charge
        else:
            self.pending.append(
                Pending("draw", pool.window, self.next_op(pool.id), micro, charge, pool)
            )

    def apply_soon(self) -> None:
        """Apply those waiting, in the background, with the next round trip that something else
        starts (or after a moment).

        Until a settle is applied, its room is still held on the server, so the cap sees at
        least as much money as will be spent (only a charge above the reservation shows a moment
        later). One task sends all that wait, however many come meanwhile.
        """
        if not self._sending and not self.stalled:  # kept ones wait for Redis to be back
            self._link.spawn(self._apply)
            self._sending = True

    async def _apply(self) -> None:
        try:
            await self.apply_now()
        finally:
            self._sending = False

    async def apply_now(self) -> None:
        """Apply those waiting; if Redis cannot be reached, keep them and stall the counter."""
        try:
            await self.flush(lazy=True)
        except SharedStateError as exc:
            if not self.stalled:
                self.stalled = True
                logger.warning(
                    "Redis is unreachable: spend operations are kept until it is back, and "
                    "nothing new is reserved meanwhile (%s)",
                    exc,
                )

    async def flush(self, *, lazy: bool = False) -> None:
        """Apply every operation waiting, in order.

        Raises:
            SharedStateError: Redis could not be reached; those not applied are kept.
        """
        # In order, all those waiting in one call: each is applied once (the server remembers
        # its id), so a call refused or lost keeps all of its operations, and those it applied
        # are ignored when they are sent again.
        async with self.flushing:
            while self.pending:
                ops = [self.pending[i] for i in range(min(len(self.pending), _APPLY_BATCH))]
                args: list[EncodableT] = [self._prefix, "", self._kind]
                for op in ops:
                    op.sent = True
                    args += (op.what, op.window, op.op, op.micro, op.charged)
                lines = text(await self._calls.call(APPLY, args, lazy=lazy)).split("\n")
                for op, line in zip(ops, lines, strict=True):
                    op.window = self._seen(line)
                    pool = op.pool
                    if pool is not None:
                        if op.micro >= 0:
                            pool.drawing -= op.micro
                        else:
                            self._dropped(pool)
                    self.pending.popleft()
            self.stalled = False
