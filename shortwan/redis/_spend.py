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
import secrets
import time
from collections import deque
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, Final, Literal

import anyio
import attrs
from redis.typing import EncodableT

from .._errors import ConfigurationError, SharedStateError
from ._books import APPLY, GROW, OPEN, READ, RENEW
from ._core import Link, text
from ._pool import Ask, Growing, Pool, Renewing, ahead_of

__all__ = ["SharedSpendCounter", "SpendFigures"]

logger = logging.getLogger("shortwan")

MICRO: Final = Decimal(1_000_000)
# Charges remembered for their refunds (by window); past this many the memory starts over.
_KEEP_CHARGES: Final = 100_000
# Draws, settles and refunds per call when applying those kept (one call stays short).
_APPLY_BATCH: Final = 256
# Seconds without a reservation after which the room a pool holds unused goes back.
_QUIET: Final = 1.0

Window = Literal["day", "month"]


def to_micro(amount: Decimal, *, up: bool) -> int:
    """Return ``amount`` USD in whole micro-dollars, rounded up (or down, ``up=False``).

    Raises:
        ValueError: the amount is negative, not finite, or not a number.
    """
    # Prices are whole micro-dollars (each duration's estimate, the service's amounts): those go
    # the short way, which costs a fraction of rounding (or of hashing a Decimal).
    try:
        scaled = amount * MICRO
        whole = int(scaled)
    except (TypeError, ValueError, OverflowError, InvalidOperation):
        return _to_micro(amount, up=up)  # not a Decimal, or not finite: said below
    if whole == scaled and whole >= 0:
        return whole
    return _to_micro(amount, up=up)


def _to_micro(amount: object, *, up: bool) -> int:
    try:
        value = Decimal(amount)  # type: ignore[arg-type]
    except (InvalidOperation, TypeError, ValueError) as exc:
        raise ValueError(f"not an amount of money: {amount!r}") from exc
    if not value.is_finite() or value < 0:
        raise ValueError(f"an amount must be finite and >= 0, got {amount!r}")
    return int((value * MICRO).to_integral_value(rounding=ROUND_CEILING if up else ROUND_FLOOR))


def _usd(micro: int) -> Decimal:
    value = Decimal(micro).scaleb(-6).normalize()
    # normalize() writes whole tens as 1E+1: keep plain digits for messages and figures.
    exponent = value.as_tuple().exponent
    return value.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else value


@attrs.frozen(kw_only=True)
class SpendFigures:
    """A spend counter's books at one moment, as the server keeps them.

    Attributes:
        window: the window read: ``"all"``, ``"d2025-06-01"`` (a UTC day) or ``"m2025-06"``.
        spent: charges minus refunds.
        reserved: held for creates under way (and a little ahead of them) by every process.
        limit: the cap.
    """

    window: str
    spent: Decimal
    reserved: Decimal
    limit: Decimal

    @property
    def committed(self) -> Decimal:
        """Spent plus reserved: what the cap is checked against."""
        return self.spent + self.reserved


@attrs.define(slots=True, eq=False)
class _Pending:
    """A draw, settle or refund that has not reached the server yet."""

    what: Literal["draw", "settle", "refund"]
    window: str
    op: str
    micro: int
    charged: int | str
    pool: Pool | None = None
    sent: bool = False  # on its way once: its amounts no longer change


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
        # The pool new creates take room from, and every pool whose lease is still on the server
        # (retired ones until their creates settle). A new pool has a new id.
        self._pool_id = secrets.token_hex(12)
        self.pool: Pool | None = None
        self._pools: list[Pool] = []
        self._ops = 0  # operation ids: <pool id>:<n>
        self._asked = 0.0  # when a reservation last came (monotonic)
        # The reservations this process holds, by amount: the pool each came from.
        self._held: dict[int, deque[Pool]] = {}
        self._pending: deque[_Pending] = deque()
        self._stalled = False  # operations are kept from an outage: nothing new is granted
        # Taken without a trip through the event loop when it is free (the usual case).
        self._flushing = anyio.Lock(fast_acquire=True)
        # Grows, settles and refunds asked for at once go to the server together, in order,
        # with whatever else the process asks at that moment.
        self._calls = link.grouped
        # In which window each settled charge landed, so that its refund leaves the same one.
        self._charged_in: dict[Decimal, deque[str]] = {}
        self._charges = 0
        self._renewing = False
        self._idling = False
        self._sending = False  # a task is applying the operations waiting
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
                f"the spend counter {name!r} has a limit of ${_usd(shared_limit)}, not "
                f"${_usd(wanted)}; pass limit=None to follow it, or call set_limit()"
            )
        counter = cls(link, name=name, limit=shared_limit, window=window, lease=lease)
        await counter.read()
        return counter

    def __repr__(self) -> str:
        f = self._figures
        return (
            f"<SharedSpendCounter {self.name!r} window={f.window} spent={f.spent} "
            f"reserved={f.reserved} limit={f.limit} pending={len(self._pending)}>"
        )

    # --- figures -------------------------------------------------------------------------------

    @property
    def _figures(self) -> SpendFigures:
        shown = self._shown
        if shown is None:
            window, spent, reserved, limit = self._books
            shown = self._shown = SpendFigures(
                window=window, spent=_usd(spent), reserved=_usd(reserved), limit=_usd(limit)
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
        return len(self._pending)

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
        if self._pending and not self._stalled:
            await self._flush()
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
        pool = self.pool
        if pool is not None and pool.free >= micro and self.usable(pool, now):
            # The server holds this room for this process already: the cap is not crossed.
            pool.free -= micro
            pool.allocated += micro
            self._hold(micro, pool)
            return True
        if self._stalled and not self._flushing.locked():
            # Settles kept from an outage go first; this raises while Redis is still away.
            await self._flush()
        ask = Ask(micro)
        try:
            await self._calls.call_merged(self, GROW, (), self._start_growing, ask)
        except BaseException:
            ask.cancelled = True
            if ask.granted and ask.pool is not None:  # granted, but its caller is gone
                ask.pool.allocated -= micro
                self._unused(ask.pool, micro)
            raise
        if not ask.granted or ask.pool is None:
            # Whatever this process holds unused goes back, so that another's create may fit.
            await self._give_back()
            return False
        self._hold(micro, ask.pool)
        self._renew_soon()
        return True

    async def settle(self, reserved: Decimal, charged: Decimal | None) -> None:
        """Replace a reservation of ``reserved`` by the charge (``None``: by the reservation).

        Never raises for an unreachable Redis: the settle is kept and applied when it is back.
        """
        micro = to_micro(reserved, up=True)
        charge = micro if charged is None else to_micro(charged, up=True)
        pool = self._take(micro, reserved)
        if pool is None:
            # Not reserved here (another counter object, a restarted process): the charge
            # still counts, in the current window.
            op = _Pending("settle", "", self._next_op(self._pool_id), micro, charge)
            self._pending.append(op)
            await self._apply_now()  # its window is the server's to say
            window = op.window
        else:
            pool.allocated -= micro
            self._draw(pool, micro, charge)
            if pool.retired:
                self._drop_done()
            self._apply_soon()
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
            pool.allocated -= micro
            self._draw(pool, micro, 0)
            if pool.retired:
                self._drop_done()
            self._apply_soon()

    async def refund(self, amount: Decimal) -> None:
        """Take a refunded charge off the spend of the window it was charged in."""
        micro = to_micro(amount, up=False)
        window = ""
        if self.window is not None:
            windows = self._charged_in.get(Decimal(amount))
            if windows:
                window = windows.pop()
        self._pending.append(_Pending("refund", window, self._next_op(self._pool_id), micro, ""))
        self._apply_soon()

    # --- the pool ------------------------------------------------------------------------------

    def usable(self, pool: Pool, now: float) -> bool:
        """Whether room the pool holds may be handed out here now: its lease surely lives and
        its window lasts, Redis answers, and nothing is kept from an outage."""
        return now < pool.until and not self._stalled and self._link.online

    def _start_growing(self) -> Growing:
        return Growing(self)

    def grow_args(self, growing: Growing, asks: list[Ask]) -> list[EncodableT]:
        """Return the arguments of a grow for ``asks``, as it leaves (see GROW)."""
        pool = growing.pool
        growing.pool_id = self._pool_id if pool is None else pool.id
        _, spent, reserved, limit = self._books
        ahead = ahead_of(self.held + len(asks), growing.item, limit - spent - reserved)
        return [
            self._prefix,
            self._limit_micro,
            self._kind,
            int(self.lease * 1000),
            growing.pool_id,
            self._next_op(growing.pool_id, "g"),
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
                self._unused(asking, growing.borrowed)
            self._drop_done()
            return
        flags, extra, lapsed, left, _, *books = text(reply).split()
        window = self._seen_figures(books)
        pool = self._pool_in(window, growing.pool_id)  # where the server put the room
        if asking is not None and asking is not pool:
            asking.retire()  # its window ended; what it lent stays there, dropped with it
        if lapsed == "1":
            # The lease had lapsed (base is held again, the free room was lost): what this
            # pool holds is not known for sure any more.
            self.distrust([pool])
        else:
            pool.leased(growing.sent_at, self.lease)
            pool.ends_in(int(left), growing.sent_at)
            self._unused(pool, int(extra))
        for ask, flag in zip(growing.asks, flags[1:], strict=True):
            ask.granted = flag == "1"
            if not ask.granted:
                continue
            if ask.cancelled:
                self._unused(pool, ask.micro)
            else:
                ask.pool = pool
                pool.allocated += ask.micro
        self._drop_done()

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
                self._unused(asking, growing.borrowed)
        elif sent and growing.pool_id == self._pool_id:
            # It may have opened a pool nobody renews: it lapses; new room goes under a new id.
            self._pool_id = secrets.token_hex(12)
        self._drop_done()

    def distrust(self, pools: list[Pool]) -> None:
        """Retire ``pools``, whose room on the server is not known for sure any more."""
        for pool in pools:
            pool.retire()
            if pool is self.pool:
                self.pool = None
                self._pool_id = secrets.token_hex(12)
        self._drop_done()

    def _pool_in(self, window: str, pool_id: str) -> Pool:
        for pool in self._pools:
            if pool.id == pool_id and pool.window == window:
                return pool
        pool = Pool(pool_id, window)
        self._pools.append(pool)
        current = self.pool
        if pool_id == self._pool_id and (current is None or window > current.window):
            if current is not None:
                current.retire()  # its window has ended
            self.pool = pool
        else:
            pool.retire()  # room granted under an id or in a window no longer in use
        return pool

    def _unused(self, pool: Pool, micro: int) -> None:
        """Put ``micro`` back in the pool's free room (a retired pool forgets it)."""
        if pool.retired:
            self._drop_done()
        elif micro:
            pool.free += micro
            self._idle_soon()

    def _drop_done(self) -> None:
        """Drop the lease of every retired pool with nothing left to settle, whatever it holds
        on the server: both sides then agree that it holds nothing."""
        for pool in self._pools:
            if pool.done:
                pool.dropped = True
                op = _Pending("draw", pool.window, self._next_op(pool.id), -1, 0, pool)
                self._pending.append(op)
                if not self._link.closed:
                    self._apply_soon()

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

    def _next_op(self, pool_id: str, kind: str = "") -> str:
        self._ops += 1
        return f"{pool_id}:{kind}{self._ops}"

    def _draw(self, pool: Pool, micro: int, charge: int) -> None:
        """Take ``micro`` off the pool on the server and spend ``charge``, with the draws of the
        moment that have not left yet."""
        pool.drawing += micro
        last = self._pending[-1] if self._pending else None
        if last is not None and last.pool is pool and not last.sent and last.micro >= 0:
            last.micro += micro
            last.charged = int(last.charged) + charge
        else:
            op = _Pending("draw", pool.window, self._next_op(pool.id), micro, charge, pool)
            self._pending.append(op)

    def _idle_soon(self) -> None:
        if not self._idling and not self._link.closed:
            self._idling = True
            self._link.spawn(self._idle)

    async def _idle(self) -> None:
        try:
            while True:
                quiet = time.monotonic() - self._asked
                if quiet >= _QUIET:
                    break
                await anyio.sleep(_QUIET - quiet)  # a reservation came meanwhile
            await self._give_back()
        finally:
            self._idling = False

    async def _give_back(self) -> None:
        """Give the pool's unused room back to the server."""
        pool = self.pool
        if pool is not None and pool.free:
            self._draw(pool, pool.free, 0)
            pool.free = 0
            self._apply_soon()

    async def _give_back_all(self) -> None:
        """Before the state closes: apply what waits, and give back every unused room."""
        if self.pool is not None and self.pool.free:
            self._draw(self.pool, self.pool.free, 0)
            self.pool.free = 0
        self._drop_done()
        if not self._pending:
            return
        try:
            await self._flush()
        finally:
            if self._pending:
                logger.warning(
                    "%d spend operations could not reach Redis before the state closed: the "
                    "room they held lapses with its lease, their charges are not counted",
                    len(self._pending),
                )

    # --- the server's books --------------------------------------------------------------------

    def _remember_charge(self, amount: Decimal, window: str) -> None:
        self._charged_in.setdefault(Decimal(amount), deque()).append(window)
        self._charges += 1
        if self._charges > _KEEP_CHARGES:
            # Forget the oldest: a refund that far back falls into the current window.
            self._charged_in.clear()
            self._charges = 0

    def _apply_soon(self) -> None:
        """Apply the operations waiting, in the background, with the next round trip that
        something else starts (or after a moment).

        Until a settle is applied, its room is still held on the server, so the cap sees at
        least as much money as will be spent (only a charge above the reservation shows a moment
        later). One task sends all that wait, however many settles come meanwhile.
        """
        if not self._sending and not self._stalled:  # kept ones wait for Redis to be back
            self._link.spawn(self._apply)
            self._sending = True

    async def _apply(self) -> None:
        try:
            await self._apply_now()
        finally:
            self._sending = False

    async def _apply_now(self) -> None:
        try:
            await self._flush(lazy=True)
        except SharedStateError as exc:
            if not self._stalled:
                self._stalled = True
                logger.warning(
                    "Redis is unreachable: spend operations are kept until it is back, and "
                    "nothing new is reserved meanwhile (%s)",
                    exc,
                )

    async def _flush(self, *, lazy: bool = False) -> None:
        # In order, all those waiting in one call: each is applied once (the server remembers
        # its id), so a call refused or lost keeps all of its operations, and those it applied
        # are ignored when they are sent again.
        async with self._flushing:
            while self._pending:
                ops = [self._pending[i] for i in range(min(len(self._pending), _APPLY_BATCH))]
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
                        elif pool in self._pools:  # dropped: nothing of it is left anywhere
                            self._pools.remove(pool)
                    self._pending.popleft()
            self._stalled = False

    async def _recovered(self) -> None:
        # The server may have restarted empty, or let leases lapse meanwhile: no pool's room is
        # known for sure. New creates take room from a new pool; the creates under way keep
        # theirs (renewals hold it again).
        self.distrust(list(self._pools))
        if self._pending:
            await self._flush()
            logger.info("spend operations kept during the outage are applied")

    def _renew_soon(self) -> None:
        if not self._renewing:
            self._renewing = True
            self._link.spawn(self._renew)

    async def _renew(self) -> None:
        try:
            while self._pools or self._pending:
                await anyio.sleep(self.lease / 3)
                await self._renew_once()
        finally:
            self._renewing = False

    async def _renew_once(self) -> None:
        try:
            if any(_renews(pool) for pool in self._pools):
                key = (self, RENEW)
                await self._calls.call_merged(key, RENEW, (), self._start_renewing)
            if self._pending:
                await self._flush()
        except SharedStateError:
            return  # the link logs the outage; the next round tries again

    def _start_renewing(self) -> Renewing:
        return Renewing(self)

    def renew_args(self, renewing: Renewing) -> list[EncodableT]:
        """Return the arguments of a renewal of every pool holding room, as it leaves."""
        renewing.pools = [pool for pool in self._pools if _renews(pool)]
        args: list[EncodableT] = [self._prefix, int(self.lease * 1000), self._kind]
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
                pool.leased(renewing.sent_at, self.lease)
        if lapsed:
            self.distrust(lapsed)
            logger.warning(
                "room held for %d creates under way had lapsed on the server and is held "
                "again (their creates are still under way)",
                self.held,
            )


def _renews(pool: Pool) -> bool:
    """Whether a pool's lease is kept alive: it holds room, and is not being dropped."""
    return bool(pool.holds) and not pool.dropped
