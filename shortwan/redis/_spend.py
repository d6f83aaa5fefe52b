"""A spend cap shared by every process: reservations with leases, exact money, optional windows.

Money lives on the server as integer micro-dollars (``Decimal`` in the API, never a float). An
amount finer than a micro-dollar is rounded against spending: a reservation and a charge round up,
a refund rounds down.

A process holds the room of its reservations as one lease on the server's clock, its pool (see
``_pool``): it renews the lease every third of its length while it holds room, and a process that
dies stops renewing, so its room lapses and goes back. A settle or refund that cannot reach Redis
is kept and applied once Redis answers again, exactly once (each carries an id the server
remembers for a week). Meanwhile no new reservation is granted:
:meth:`SharedSpendCounter.reserve` fails closed.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

import anyio

from .._errors import ConfigurationError, SharedStateError
from ._books import GROW, OPEN, READ, RENEW
from ._core import Link, text
from ._money import SpendFigures, same_amount, to_micro, usd
from ._outbox import Outbox, Pending
from ._pool import Ask, Pool, Renewing
from ._pools import Pools, renews

__all__ = ["SharedSpendCounter", "SpendFigures"]

logger = logging.getLogger("shortwan")

# Charges remembered for their refunds (by window); past this many the memory starts over.
_KEEP_CHARGES: Final = 100_000

Window = Literal["day", "month"]


class SharedSpendCounter:
    """A :class:`~shortwan.SpendCounter` whose books live in Redis, shared by every process.

    Open it with :meth:`SharedState.spend_counter <shortwan.redis.SharedState.spend_counter>`.
    ``spent``, ``reserved``, ``committed`` and ``limit`` are the figures of the last answer from
    the server (:meth:`read` asks for fresh ones). ``reserved`` counts the room every process
    holds for its creates, a little ahead of them included.

    The counter holds room for this process's creates as one lease on the server (its pool),
    grown as creates need it and renewed every third of the lease: most reservations are granted
    from it without a round trip, and most settles of a moment go to the server as one. Room held
    ahead stays small (for twice the creates under way, at most 64 creates' worth and an eighth
    of the room left) and goes back after a second without a reservation, at once when a
    reservation is refused, and at close; near the cap, another process may meanwhile be
    refused room that this one holds unused.

    Reservations of the same amount are interchangeable: :meth:`settle` and :meth:`release` take
    the amount :meth:`reserve` was given, as the :class:`~shortwan.SpendCounter` protocol says.
    """

    def __init__(
        self, link: Link, *, name: str, limit: int, window: Window | None, lease: float
    ) -> None:
        self._link = link
        self.name = name
        self._prefix = link.keys.spend(name)
        self._kind = "none" if window is None else window
        self.window: Window | None = window
        self.lease = lease
        # The books as last seen (window, spent, reserved, limit in micro-dollars); they are
        # made into Decimals only when read, not at every answer.
        self._books = ("all", 0, 0, limit)
        self._shown: SpendFigures | None = None
        self._limit_micro = limit
        self._asked = 0.0  # when a reservation last came (monotonic)
        # The reservations this process holds, by amount: the pool each came from.
        self._held: dict[int, deque[Pool]] = {}
        # Draws, settles and refunds on their way to the server.
        self._outbox = Outbox(
            link, prefix=self._prefix, kind=self._kind, seen=self._seen, dropped=self._forget
        )
        # The room this process holds: one lease per pool, a new pool when one is in doubt.
        self._pools = Pools(
            link,
            self._outbox,
            lease=lease,
            terms=self._terms,
            held=lambda: self.held,
            seen=self._seen_figures,
            asked=lambda: self._asked,
        )
        # Grows, settles and refunds asked for at once go to the server together, in order,
        # with whatever else the process asks at that moment.
        self._calls = link.grouped
        # In which window each settled charge landed, so that its refund leaves the same one.
        self._charged_in: dict[Decimal, deque[str]] = {}
        self._charges = 0
        self._renewing = False
        link.on_recovery(self._recovered)
        link.on_close(self._give_back_all)

    @classmethod
    async def open(
        cls,
        link: Link,
        limit: Decimal | str | int | None,
        *,
        name: str,
        window: Window | None,
        lease: float,
    ) -> SharedSpendCounter:
        """Check the counter's settings against the shared ones (or write them) and return it."""
        shared_limit = await _shared_limit(link, limit, name=name, window=window, lease=lease)
        counter = cls(link, name=name, limit=shared_limit, window=window, lease=lease)
        await counter.read()
        return counter

    def __repr__(self) -> str:
        f = self._figures
        return (
            f"<SharedSpendCounter {self.name!r} window={f.window} spent={f.spent} "
            f"reserved={f.reserved} limit={f.limit} pending={len(self._outbox.pending)}>"
        )

    # --- figures -------------------------------------------------------------------------------

    @property
    def _figures(self) -> SpendFigures:
        shown = self._shown
        if shown is None:
            window, spent, reserved, limit = self._books
            shown = self._shown = SpendFigures(
                window=window, spent=usd(spent), reserved=usd(reserved), limit=usd(limit)
            )
        return shown

    @property
    def limit(self) -> Decimal:
        """The cap, in USD."""
        return self._figures.limit

    @property
    def spent(self) -> Decimal:
        """Charges minus refunds in the current window, as last seen."""
        return self._figures.spent

    @property
    def reserved(self) -> Decimal:
        """What reservations of every process held, as last seen."""
        return self._figures.reserved

    @property
    def committed(self) -> Decimal:
        """Spent plus reserved, as last seen."""
        return self._figures.committed

    @property
    def figures(self) -> SpendFigures:
        """The books as last seen."""
        return self._figures

    @property
    def pending(self) -> int:
        """Settles, room given back and refunds not yet applied on the server (those kept
        while Redis is away, and those of the last moment)."""
        return len(self._outbox.pending)

    @property
    def held(self) -> int:
        """Reservations this process holds (creates under way)."""
        return sum(len(leases) for leases in self._held.values())

    def _seen(self, reply: Any) -> str:
        return self._seen_figures(text(reply).split()[1:])

    def _seen_figures(self, words: list[str]) -> str:
        """Keep the books of an answer (window, spent, reserved, limit); return the window."""
        window, *numbers = words
        spent, reserved, limit = (int(x) for x in numbers)
        if limit >= 0:
            self._limit_micro = limit
        # Settling a reservation of a window that has turned since reports the old books.
        seen = self._books[0]
        if window >= seen or seen == "all":
            self._books = (window, spent, reserved, limit)
            self._shown = None
        return window

    async def read(self) -> SpendFigures:
        """Ask the server for the current window's books (lapsed leases are cleared first).

        This process's settles and refunds not yet applied are applied first (when Redis can
        be reached), so the figures include them.
        """
        if self._outbox.pending and not self._outbox.stalled:
            await self._outbox.flush()
        self._seen(await self._link.run(READ, (), (self._prefix, "", self._kind)))
        return self._figures

    async def set_limit(self, limit: Decimal | str | int) -> None:
        """Change the cap for every process; it applies to their next reservation."""
        micro = to_micro(Decimal(limit), up=False)
        conf = f"{self._prefix}:conf"
        await self._link.call(lambda: self._link.redis.hset(conf, "limit", str(micro)))
        await self.read()

    # --- the SpendCounter protocol -------------------------------------------------------------

    async def reserve(self, amount: Decimal) -> bool:
        """Hold ``amount`` for a create, or return False if the cap would be crossed.

        Raises:
            SharedStateError: Redis could not be reached, or still has settles of this process
                to apply: nothing is granted that nobody can check (fail closed).
        """
        micro = to_micro(amount, up=True)
        now = self._asked = time.monotonic()
        pool = self._pools.current
        if pool is not None and pool.free >= micro and self._pools.usable(pool, now):
            # The server holds this room for this process already: the cap is not crossed.
            pool.free -= micro
            pool.allocated += micro
            self._hold(micro, pool)
            return True
        if self._outbox.stalled and not self._outbox.flushing.locked():
            # Settles kept from an outage go first; this raises while Redis is still away.
            await self._outbox.flush()
        ask = Ask(micro)
        try:
            await self._calls.call_merged(self, GROW, (), self._pools.start_growing, ask)
        except BaseException:
            ask.cancelled = True
            if ask.granted and ask.pool is not None:  # granted, but its caller is gone
                ask.pool.allocated -= micro
                self._pools.unused(ask.pool, micro)
            raise
        if not ask.granted or ask.pool is None:
            # Whatever this process holds unused goes back, so that another's create may fit.
            self._pools.give_back()
            return False
        self._hold(micro, ask.pool)
        self._renew_soon()
        return True

    async def settle(self, reserved: Decimal, charged: Decimal | None) -> None:
        """Replace a reservation of ``reserved`` by the charge (``None``: by the reservation).

        Never raises for an unreachable Redis: the settle is kept and applied when it is back.
        """
        micro = to_micro(reserved, up=True)
        if charged is None or same_amount(charged, reserved):
            charge = micro
        else:
            charge = to_micro(charged, up=True)
        pool = self._take(micro, reserved)
        if pool is None:
            # Not reserved here (another counter object, a restarted process): the charge
            # still counts, in the current window.
            op = Pending("settle", "", self._outbox.next_op(self._pools.id), micro, charge)
            self._outbox.add(op)
            await self._outbox.apply_now()  # its window is the server's to say
            window = op.window
        else:
            self._pools.settled(pool, micro, charge)
            window = pool.window
        if window and self.window is not None:
            self._remember_charge(reserved if charged is None else charged, window)

    async def release(self, reserved: Decimal) -> None:
        """Give back a reservation of ``reserved`` whose create surely made no job."""
        micro = to_micro(reserved, up=True)
        pool = self._take(micro, reserved)
        if pool is not None:
            # Back to the server, not to the pool: a create that made no job frees its room for
            # every process at once.
            self._pools.settled(pool, micro, 0)

    async def refund(self, amount: Decimal) -> None:
        """Take a refunded charge off the spend of the window it was charged in."""
        micro = to_micro(amount, up=False)
        window = ""
        if self.window is not None:
            windows = self._charged_in.get(Decimal(amount))
            if windows:
                window = windows.pop()
        self._outbox.add(Pending("refund", window, self._outbox.next_op(self._pools.id), micro, ""))
        self._outbox.apply_soon()

    # --- the pool ------------------------------------------------------------------------------

    @property
    def pool(self) -> Pool | None:
        """The pool new creates take room from (None until the first is grown)."""
        return self._pools.current

    def _terms(self) -> tuple[str, int, str, int]:
        _, spent, reserved, limit = self._books
        return self._prefix, self._limit_micro, self._kind, limit - spent - reserved

    def _forget(self, pool: Pool) -> None:
        self._pools.dropped(pool)

    def _hold(self, micro: int, pool: Pool) -> None:
        held = self._held.get(micro)
        if held is None:
            held = self._held[micro] = deque()
        held.append(pool)

    def _take(self, micro: int, reserved: Decimal) -> Pool | None:
        held = self._held.get(micro)
        if held:
            pool = held.popleft()
            if not held:
                del self._held[micro]
            return pool
        logger.warning("settling $%s that this counter never reserved", reserved)
        return None

    async def _give_back_all(self) -> None:
        """Before the state closes: apply what waits, and give back every unused room."""
        self._pools.give_back(send=False)
        if not self._outbox.pending:
            return
        try:
            await self._outbox.flush()
        finally:
            if self._outbox.pending:
                logger.warning(
                    "%d spend operations could not reach Redis before the state closed: the "
                    "room they held lapses with its lease, their charges are not counted",
                    len(self._outbox.pending),
                )

    # --- the server's books --------------------------------------------------------------------

    def _remember_charge(self, amount: Decimal, window: str) -> None:
        self._charged_in.setdefault(Decimal(amount), deque()).append(window)
        self._charges += 1
        if self._charges > _KEEP_CHARGES:
            # Forget the oldest: a refund that far back falls into the current window.
            self._charged_in.clear()
            self._charges = 0

    async def _recovered(self) -> None:
        # The server may have restarted empty, or let leases lapse meanwhile: no pool's room is
        # known for sure. New creates take room from a new pool; the creates under way keep
        # theirs (renewals hold it again).
        self._pools.distrust(list(self._pools.every))
        if self._outbox.pending:
            await self._outbox.flush()
            logger.info("spend operations kept during the outage are applied")

    def _renew_soon(self) -> None:
        if not self._renewing:
            self._renewing = True
            self._link.spawn(self._renew)

    async def _renew(self) -> None:
        try:
            while self._pools.every or self._outbox.pending:
                await anyio.sleep(self.lease / 3)
                await self._renew_once()
        finally:
            self._renewing = False

    async def _renew_once(self) -> None:
        try:
            if any(renews(pool) for pool in self._pools.every):
                key = (self, RENEW)
                await self._calls.call_merged(key, RENEW, (), self._start_renewing)
            if self._outbox.pending:
                await self._outbox.flush()
        except SharedStateError:
            return  # the link logs the outage; the next round tries again

    def _start_renewing(self) -> Renewing:
        return Renewing(self._pools)


async def _shared_limit(
    link: Link, limit: Decimal | str | int | None, *, name: str, window: str | None, lease: float
) -> int:
    """Check a counter's settings against the shared ones (or write them); return its limit.

    Raises:
        ConfigurationError: a setting is not valid, or not the one the counter has.
    """
    if window not in (None, "day", "month"):
        raise ConfigurationError(f"window must be 'day', 'month' or None, got {window!r}")
    if not 0.1 <= lease < float("inf"):
        raise ConfigurationError(f"lease must be at least 0.1 seconds, got {lease!r}")
    wanted = None
    if limit is not None:
        try:
            wanted = to_micro(Decimal(limit), up=False)
        except (ValueError, InvalidOperation) as exc:
            raise ConfigurationError(f"limit must be an amount in USD: {limit!r}") from exc
    kind = "none" if window is None else window
    # Without a limit of its own, the counter only reads the shared settings.
    stored = await link.run(
        OPEN, (), (link.keys.spend(name), "" if wanted is None else wanted, kind)
    )
    if stored[0] in (None, b""):
        raise ConfigurationError(
            f"the spend counter {name!r} has no limit yet: open it once with a limit"
        )
    shared_limit, shared_kind = int(stored[0]), (stored[1] or b"none").decode()
    if shared_kind != kind:
        raise ConfigurationError(
            f"the spend counter {name!r} counts per {shared_kind}, not per {kind}; "
            "use another name for another window"
        )
    if wanted is not None and wanted != shared_limit:
        raise ConfigurationError(
            f"the spend counter {name!r} has a limit of ${usd(shared_limit)}, not "
            f"${usd(wanted)}; pass limit=None to follow it, or call set_limit()"
        )
    return shared_limit
