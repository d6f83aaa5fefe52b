"""The pools of one shared spend counter: which one new creates draw on, and what each holds.

See ``_pool`` for what a pool is. This keeps every pool of a counter still holding a lease on the
server, books the answers of grows and renewals, and retires a pool whose room is not known for
sure any more (its lease is then dropped once its last create has settled).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Final

import anyio
from redis.typing import EncodableT

from ._core import Link, text
from ._outbox import Outbox
from ._pool import Ask, Growing, Pool, Renewing, ahead_of

__all__ = ["Pools", "renews"]

logger = logging.getLogger("shortwan")

# Seconds without a reservation after which the room a pool holds unused goes back.
_QUIET: Final = 1.0


class Pools:
    """The pools of one counter (a :class:`~shortwan.redis._pool.PoolKeeper` for its calls).

    Args:
        link: the connection.
        outbox: where draws and dropped leases go.
        lease: seconds a lease lives.
        terms: returns the counter's key prefix, limit and window kind in micro-dollars, and the
            room left as last seen.
        held: returns how many reservations the counter holds.
        seen: reads the books of an answer (window, spent, reserved, limit); returns the window.
        asked: returns when the counter last had a reservation asked of it (monotonic).
    """

    def __init__(
        self,
        link: Link,
        outbox: Outbox,
        *,
        lease: float,
        terms: Callable[[], tuple[str, int, str, int]],
        held: Callable[[], int],
        seen: Callable[[list[str]], str],
        asked: Callable[[], float],
    ) -> None:
        self._link = link
        self._outbox = outbox
        self._lease = lease
        self._terms = terms
        self._held = held
        self._seen = seen
        self._asked = asked
        self._idling = False
        self.id = secrets.token_hex(12)  # new pools' id (a new one after a pool is distrusted)
        self.current: Pool | None = None  # the pool new creates take room from
        self.every: list[Pool] = []  # every pool whose lease is on the server

    def usable(self, pool: Pool, now: float) -> bool:
        """Whether room the pool holds may be handed out here now: its lease surely lives and
        its window lasts, Redis answers, and nothing is kept from an outage."""
        return now < pool.until and not self._outbox.stalled and self._link.online

    def start_growing(self) -> Growing:
        """Start a grow for the creates that ask at once (see Grouped.call_merged)."""
        return Growing(self)

    def grow_args(self, growing: Growing, asks: list[Ask]) -> list[EncodableT]:
        """Return the arguments of a grow for ``asks``, as it leaves (see GROW)."""
        pool = growing.pool
        growing.pool_id = self.id if pool is None else pool.id
        prefix, limit, kind, room = self._terms()
        ahead = ahead_of(self._held() + len(asks), growing.item, room)
        return [
            prefix,
            limit,
            kind,
            int(self._lease * 1000),
            growing.pool_id,
            self._outbox.next_op(growing.pool_id, "g"),
            "" if pool is None else pool.window,
            0 if pool is None else pool.base,
            growing.borrowed,
            ahead,
            *(ask.micro for ask in asks),
        ]

    def grown(self, growing: Growing, reply: object) -> None:
        """Book a grow's answer: the room granted to each create, and the room held ahead."""
        asking = growing.pool
        if asking is not None:
            asking.growing -= 1
            asking.borrowed -= growing.borrowed
        if isinstance(reply, BaseException):  # refused by the server: it did not run
            if asking is not None:
                self.unused(asking, growing.borrowed)
            self.drop_done()
            return
        flags, extra, lapsed, left, _, *books = text(reply).split()
        window = self._seen(books)
        pool = self.find(window, growing.pool_id)  # where the server put the room
        if asking is not None and asking is not pool:
            asking.retire()  # its window ended; what it lent stays there, dropped with it
        if lapsed == "1":
            # The lease had lapsed (base is held again, the free room was lost): what this
            # pool holds is not known for sure any more.
            self.distrust([pool])
        else:
            pool.leased(growing.sent_at, self._lease)
            pool.ends_in(int(left), growing.sent_at)
            self.unused(pool, int(extra))
        for ask, flag in zip(growing.asks, flags[1:], strict=True):
            ask.granted = flag == "1"
            if not ask.granted:
                continue
            if ask.cancelled:
                self.unused(pool, ask.micro)
            else:
                ask.pool = pool
                pool.allocated += ask.micro
        self.drop_done()

    def grow_lost(self, growing: Growing, *, sent: bool) -> None:
        """A grow's round failed: a pool it may have changed is not trusted any more."""
        for ask in growing.asks:
            ask.cancelled = True  # its caller hears the error: nobody waits for this room
        asking = growing.pool
        if asking is not None:
            asking.growing -= 1
            asking.borrowed -= growing.borrowed
            if sent:
                self.distrust([asking])
            else:
                self.unused(asking, growing.borrowed)
        elif sent and growing.pool_id == self.id:
            # It may have opened a pool nobody renews: it lapses; new room goes under a new id.
            self.id = secrets.token_hex(12)
        self.drop_done()

    def distrust(self, pools: list[Pool]) -> None:
        """Retire ``pools``, whose room on the server is not known for sure any more."""
        for pool in pools:
            pool.retire()
            if pool is self.current:
                self.current = None
                self.id = secrets.token_hex(12)
        self.drop_done()

    def find(self, window: str, pool_id: str) -> Pool:
        """Return the pool ``pool_id`` of ``window``; a new one is current if it is the newest."""
        for pool in self.every:
            if pool.id == pool_id and pool.window == window:
                return pool
        pool = Pool(pool_id, window)
        self.every.append(pool)
        current = self.current
        if pool_id == self.id and (current is None or window > current.window):
            if current is not None:
                current.retire()  # its window has ended
            self.current = pool
        else:
            pool.retire()  # room granted under an id or in a window no longer in use
        return pool

    def settled(self, pool: Pool, micro: int, charge: int) -> None:
        """Take a reservation of ``micro`` off ``pool`` on the server, spending ``charge`` (0:
        released); a retired pool whose last create this was has its lease dropped."""
        pool.allocated -= micro
        self._outbox.draw(pool, micro, charge)
        if pool.retired:
            self.drop_done()
        self._outbox.apply_soon()

    def unused(self, pool: Pool, micro: int) -> None:
        """Put ``micro`` back in the pool's free room (a retired pool forgets it)."""
        if pool.retired:
            self.drop_done()
        elif micro:
            pool.free += micro
            self.quiet_soon()

    def drop_done(self) -> None:
        """Drop the lease of every retired pool with nothing left to settle, whatever it holds
        on the server: both sides then agree that it holds nothing."""
        for pool in self.every:
            if pool.done:
                pool.dropped = True
                self._outbox.draw(pool, -1, 0)
                if not self._link.closed:
                    self._outbox.apply_soon()

    def dropped(self, pool: Pool) -> None:
        """Forget a pool whose lease the server has dropped."""
        if pool in self.every:  # nothing of it is left anywhere
            self.every.remove(pool)

    def renew_args(self, renewing: Renewing) -> list[EncodableT]:
        """Return the arguments of a renewal of every pool holding room, as it leaves."""
        renewing.pools = [pool for pool in self.every if renews(pool)]
        prefix, _, kind, _ = self._terms()
        args: list[EncodableT] = [prefix, int(self._lease * 1000), kind]
        for pool in renewing.pools:
            args += (pool.window, pool.id, pool.base)
        return args

    def renewed(self, renewing: Renewing, reply: object) -> None:
        """Book a renewal's answer, before anything else can change the pools."""
        if isinstance(reply, BaseException):
            return
        again = text(reply)
        lapsed = []
        for pool, flag in zip(renewing.pools, again, strict=True):
            if flag == "1":
                lapsed.append(pool)  # its free room is gone; its creates' room is held again
            else:
                pool.leased(renewing.sent_at, self._lease)
        if lapsed:
            self.distrust(lapsed)
            logger.warning(
                "room held for %d creates under way had lapsed on the server and is held "
                "again (their creates are still under way)",
                self._held(),
            )

    def quiet_soon(self) -> None:
        """Give the current pool's unused room back after a second without a reservation."""
        if not self._idling and not self._link.closed:
            self._idling = True
            self._link.spawn(self._idle)

    async def _idle(self) -> None:
        try:
            while True:
                quiet = time.monotonic() - self._asked()
                if quiet >= _QUIET:
                    break
                await anyio.sleep(_QUIET - quiet)  # a reservation came meanwhile
            self.give_back()
        finally:
            self._idling = False

    def give_back(self, *, send: bool = True) -> None:
        """Give the current pool's unused room back to the server (``send``: in the background;
        else with the next flush, as the state closes, with the leases of retired pools)."""
        pool = self.current
        if pool is not None and pool.free:
            self._outbox.draw(pool, pool.free, 0)
            pool.free = 0
            if send:
                self._outbox.apply_soon()
        if not send:
            self.drop_done()


def renews(pool: Pool) -> bool:
    """Whether a pool's lease is kept alive: it holds room, and is not being dropped."""
    return bool(pool.holds) and not pool.dropped
