"""The room a process holds on a shared spend cap for its creates: its pool.

A process does not reserve on the server once per create. It holds one lease of its own per
window, its pool, topped up by a grow call for the creates that find too little room in it, and
a little more while creates come fast; the creates take their room from it without a round trip.
The server counts the whole pool as reserved, so the cap is never crossed by what the pool hands
out; what it holds unused goes back after a moment of quiet, at once when a create is refused,
and when the process closes.

A pool whose books this process cannot be sure of any more (its lease lapsed and was held again,
an answer about it was lost, Redis came back from an outage, its window ended) is retired: it
hands out nothing more, forgets its free room, and once its last create has settled its lease
is dropped on the server whatever it holds, so both sides agree again. New creates take their
room from a new pool, under a new id.
"""

from __future__ import annotations

import math
import time
from typing import Final, Protocol

from redis.typing import EncodableT

__all__ = ["Ask", "Growing", "Pool", "PoolKeeper", "Renewing", "ahead_of"]

# A lease is trusted for this share of its length after the call that set it left: the server's
# expiry is later than that, whatever the round trip took.
_TRUSTED: Final = 0.9
# Room handed out from a pool stops this long before its window ends by the server's clock.
_WINDOW_MARGIN: Final = 0.05
# Creates held ahead at most; and at most this share of the room left (as 1/n).
_MOST_AHEAD: Final = 64
_ROOM_SHARE: Final = 8


class Pool:
    """One process's room on the server in one window: the lease ``l:<pool id>``.

    The server holds ``free + allocated + drawing + borrowed`` for it (once every call sent has
    been applied).
    """

    __slots__ = (
        "allocated",
        "borrowed",
        "drawing",
        "dropped",
        "free",
        "growing",
        "id",
        "lease_until",
        "retired",
        "until",
        "window",
        "window_until",
    )

    def __init__(self, pool_id: str, window: str) -> None:
        self.id = pool_id
        self.window = window
        self.free = 0  # not handed out: a create takes it without a round trip
        self.allocated = 0  # handed out to creates under way
        self.drawing = 0  # settled or given back, not yet applied on the server
        self.borrowed = 0  # lent to the creates of a grow on its way
        # Monotonic clock: until when the lease surely lives, and the window lasts.
        self.lease_until = 0.0
        self.window_until = math.inf
        self.until = 0.0  # the earlier of the two: room is handed out only before it
        self.retired = False  # hands out nothing more: it only settles what it handed out
        self.growing = 0  # grows on their way for it
        self.dropped = False  # its lease is dropped (or on its way to be)

    def __repr__(self) -> str:
        return (
            f"<Pool {self.id[:6]} {self.window} free={self.free} allocated={self.allocated} "
            f"drawing={self.drawing} borrowed={self.borrowed}{' retired' if self.retired else ''}>"
        )

    @property
    def base(self) -> int:
        """What must stay held whatever happens: creates under way and settles on their way."""
        return self.allocated + self.drawing

    def retire(self) -> None:
        """Hand out nothing more; forget the free room (the lease is dropped once it is done)."""
        self.retired = True
        self.until = 0.0
        self.free = 0

    @property
    def done(self) -> bool:
        """Whether a retired pool has nothing left to settle or to hear: its lease can go."""
        return self.retired and not self.allocated and not self.growing and not self.dropped

    @property
    def holds(self) -> int:
        """What the server holds for this pool, as far as this process knows."""
        return self.free + self.allocated + self.drawing + self.borrowed

    def leased(self, sent_at: float, lease: float) -> None:
        """Note that a call that left at ``sent_at`` set the lease to ``lease`` seconds."""
        self.lease_until = max(self.lease_until, sent_at + lease * _TRUSTED)
        self.until = min(self.lease_until, self.window_until)

    def ends_in(self, milliseconds: int, sent_at: float) -> None:
        """Note that the window ends ``milliseconds`` after the server ran a call that left at
        ``sent_at`` (-1: never): counted from when it left, the end is never guessed late."""
        if milliseconds >= 0:
            ends = sent_at + milliseconds / 1000 - _WINDOW_MARGIN
            self.window_until = min(self.window_until, ends)
        self.until = min(self.lease_until, self.window_until)


class PoolKeeper(Protocol):
    """What a grow or a renewal asks of the counter whose pools they serve."""

    @property
    def current(self) -> Pool | None:
        """The pool new creates take room from."""

    def usable(self, pool: Pool, now: float) -> bool:
        """Whether the pool's room may be handed out now."""

    def grow_args(self, growing: Growing, asks: list[Ask]) -> list[EncodableT]:
        """The arguments of a grow for ``asks``."""

    def grown(self, growing: Growing, reply: object) -> None:
        """Book a grow's answer."""

    def grow_lost(self, growing: Growing, *, sent: bool) -> None:
        """Book a grow whose round failed."""

    def renew_args(self, renewing: Renewing) -> list[EncodableT]:
        """The arguments of a renewal."""

    def renewed(self, renewing: Renewing, reply: object) -> None:
        """Book a renewal's answer."""

    def distrust(self, pools: list[Pool]) -> None:
        """Retire pools whose room on the server is not known for sure."""


class Ask:
    """One create asking a grow for room."""

    __slots__ = ("cancelled", "granted", "micro", "pool")

    def __init__(self, micro: int) -> None:
        self.micro = micro
        self.granted: bool | None = None  # known once the grow is answered
        self.pool: Pool | None = None  # where the room was granted
        self.cancelled = False  # its caller stopped waiting: granted room goes to free


class Growing:
    """One grow call, shared by the creates that asked at once (a merged call)."""

    __slots__ = ("asks", "borrowed", "counter", "item", "pool", "pool_id", "sent_at")

    def __init__(self, counter: PoolKeeper) -> None:
        self.counter = counter
        self.pool: Pool | None = None
        self.pool_id = ""
        self.borrowed = 0
        self.item = 0
        self.asks: list[Ask] = []
        self.sent_at = 0.0

    def args(self, asks: list[Ask]) -> list[EncodableT]:
        """The call's arguments, as it leaves with ``asks``.

        Room the pool holds now (a grow answered since they asked) serves them here; those it
        cannot serve go to the server, lent what free room is left.
        """
        c = self.counter
        self.sent_at = time.monotonic()
        self.item = asks[0].micro  # what one create costs, for the room held ahead
        pool = self.pool = c.current
        if pool is None or pool.retired:
            self.pool = None
            self.asks = [ask for ask in asks if not ask.cancelled]
        else:
            pool.growing += 1
            self.asks = []
            usable = c.usable(pool, self.sent_at)
            for ask in asks:
                if ask.cancelled:
                    continue
                if usable and pool.free >= ask.micro:
                    pool.free -= ask.micro
                    pool.allocated += ask.micro
                    ask.granted, ask.pool = True, pool
                else:
                    self.asks.append(ask)
            need = sum(ask.micro for ask in self.asks)
            self.borrowed = min(pool.free, need)
            pool.free -= self.borrowed
            pool.borrowed += self.borrowed
        return c.grow_args(self, self.asks)

    def answered(self, reply: object) -> None:
        """Read the answer for every create at once, before any of them wakes."""
        self.counter.grown(self, reply)

    def lost(self, sent: bool) -> None:
        """The round failed: the pool it may have changed cannot be trusted any more."""
        self.counter.grow_lost(self, sent=sent)


class Renewing:
    """One renewal of a process's pools (a merged call, so its answer is read as it comes)."""

    __slots__ = ("counter", "pools", "sent_at")

    def __init__(self, counter: PoolKeeper) -> None:
        self.counter = counter
        self.pools: list[Pool] = []
        self.sent_at = 0.0

    def args(self, items: list[None]) -> list[EncodableT]:
        """The call's arguments, as it leaves: every pool that holds room, at its base then."""
        self.sent_at = time.monotonic()
        return self.counter.renew_args(self)

    def answered(self, reply: object) -> None:
        """Note which pools the server had lost, before any other answer changes them."""
        self.counter.renewed(self, reply)

    def lost(self, sent: bool) -> None:
        """The round failed: if it ran, a pool may have been held again without its free room."""
        if sent:
            self.counter.distrust(self.pools)


def ahead_of(under_way: int, item: int, room: int) -> int:
    """Return the room to hold ahead for a process with ``under_way`` creates of ``item``.

    A process with many creates under way asks again soon: it holds room for twice as many
    (at least one, at most 64), within an eighth of the ``room`` left, in whole creates.
    """
    if item <= 0 or room <= 0:
        return 0
    creates = min(_MOST_AHEAD, max(1, 2 * under_way))
    return min(creates, room // _ROOM_SHARE // item) * item
