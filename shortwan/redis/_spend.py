"""A spend cap shared by every process: reservations with leases, exact money, optional windows.

Money lives on the server as integer micro-dollars (``Decimal`` in the API, never a float). An
amount finer than a micro-dollar is rounded against spending: a reservation and a charge round up,
a refund rounds down.

Each reservation is a lease on the server's clock: its process renews it every third of the lease
while the create is under way, and a process that dies stops renewing, so its reservations lapse
and give their room back. A settle, release or refund that cannot reach Redis is kept and applied
once Redis answers again, exactly once (each carries an id the server remembers for a week).
Meanwhile no new reservation is granted: :meth:`SharedSpendCounter.reserve` fails closed.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, Final, Literal

import anyio
import attrs
from redis.typing import EncodableT

from .._errors import ConfigurationError, SharedStateError
from ._books import APPLY, OPEN, READ, RENEW, RESERVE
from ._core import Link, text

__all__ = ["SharedSpendCounter", "SpendFigures"]

logger = logging.getLogger("shortwan")

MICRO: Final = Decimal(1_000_000)
# Charges remembered for their refunds (by window); past this many the memory starts over.
_KEEP_CHARGES: Final = 100_000
# Settles, releases and refunds per call when applying those kept (one call stays short).
_APPLY_BATCH: Final = 256

Window = Literal["day", "month"]


def to_micro(amount: Decimal, *, up: bool) -> int:
    """Return ``amount`` USD in whole micro-dollars, rounded up (or down, ``up=False``).

    Raises:
        ValueError: the amount is negative, not finite, or not a number.
    """
    try:
        value = Decimal(amount)
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
        reserved: held by reservations of creates under way.
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


@attrs.define(slots=True)
class _Lease:
    id: str
    window: str
    micro: int


class _Reserving:
    """The reservations asked for at once, which go to the server in one call."""

    __slots__ = ("counter", "granted", "window")

    def __init__(self, counter: SharedSpendCounter) -> None:
        self.counter = counter
        self.granted: str | None = None  # a 1 or a 0 for each, once the server answered
        self.window = ""

    def args(self, leases: list[_Lease]) -> list[EncodableT]:
        """The call's arguments, as it leaves with ``leases``."""
        c = self.counter
        args: list[EncodableT] = [c._prefix, c._limit_micro, c._kind, int(c.lease * 1000)]
        for lease in leases:
            args += (lease.micro, lease.id)
        return args


@attrs.define(slots=True)
class _Pending:
    """A settle, release or refund that has not reached the server yet."""

    what: Literal["settle", "refund"]
    window: str
    op: str
    micro: int
    charged: str
    lease: _Lease | None


class SharedSpendCounter:
    """A :class:`~shortwan.SpendCounter` whose books live in Redis, shared by every process.

    Open it with :meth:`SharedState.spend_counter <shortwan.redis.SharedState.spend_counter>`.
    ``spent``, ``reserved``, ``committed`` and ``limit`` are the figures of the last answer from
    the server (:meth:`read` asks for fresh ones).

    Reservations of the same amount are interchangeable, so the counter keeps each one it holds
    under its amount: :meth:`settle` and :meth:`release` take the amount :meth:`reserve` was given,
    as the :class:`~shortwan.SpendCounter` protocol says, and settle one of the reservations of
    that amount.
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
        # The reservations this process holds, by amount, oldest first.
        self._held: dict[int, deque[_Lease]] = {}
        self._pending: deque[_Pending] = deque()
        # Taken without a trip through the event loop when it is free (the usual case).
        self._flushing = anyio.Lock(fast_acquire=True)
        # Reservations, settles, releases and refunds asked for at once by many creates go to
        # the server together, in order, with whatever else the process asks at that moment.
        self._calls = link.grouped
        # In which window each settled charge landed, so that its refund leaves the same one.
        self._charged_in: dict[Decimal, deque[str]] = {}
        self._charges = 0
        self._renewing = False
        link.on_recovery(self._flush_quietly)

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
        """Settles, releases and refunds waiting for Redis to come back."""
        return len(self._pending)

    @property
    def held(self) -> int:
        """Reservations this process holds (creates under way)."""
        return sum(len(leases) for leases in self._held.values())

    def _seen(self, reply: Any) -> str:
        _done, window, *numbers = text(reply).split()
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
        """Ask the server for the current window's books (lapsed leases are cleared first)."""
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
        if self._pending and not self._flushing.locked():
            # Settles kept from an outage go first; this raises while Redis is still away. (Those
            # of a flush under way are already queued ahead of this reservation.)
            await self._flush()
        lease = _Lease(id=secrets.token_hex(12), window="", micro=micro)
        reply, place, asking = await self._calls.call_merged(
            self, RESERVE, (), self._start_reserving, lease
        )
        if asking.granted is None:  # the first of them to hear the answer reads it for all
            asking.granted, asking.window = text(reply).split(" ", 1)[0], self._seen(reply)
        lease.window = asking.window
        if asking.granted[place] != "1":
            return False
        self._held.setdefault(micro, deque()).append(lease)
        self._renew_soon()
        return True

    async def settle(self, reserved: Decimal, charged: Decimal | None) -> None:
        """Replace a reservation of ``reserved`` by the charge (``None``: by the reservation).

        Never raises for an unreachable Redis: the settle is kept and applied when it is back.
        """
        charge = "" if charged is None else str(to_micro(charged, up=True))
        lease = self._take(reserved)
        op = _Pending("settle", lease.window, lease.id, lease.micro, charge, lease)
        window = await self._apply(op)
        if window is not None and self.window is not None:
            self._remember_charge(reserved if charged is None else charged, window)

    async def release(self, reserved: Decimal) -> None:
        """Give back a reservation of ``reserved`` whose create surely made no job."""
        lease = self._take(reserved)
        await self._apply(_Pending("settle", lease.window, lease.id, lease.micro, "release", lease))

    async def refund(self, amount: Decimal) -> None:
        """Take a refunded charge off the spend of the window it was charged in."""
        micro = to_micro(amount, up=False)
        window = ""
        if self.window is not None:
            windows = self._charged_in.get(Decimal(amount))
            if windows:
                window = windows.pop()
        await self._apply(_Pending("refund", window, secrets.token_hex(12), micro, "", None))

    # --- internals -----------------------------------------------------------------------------

    def _start_reserving(self) -> _Reserving:
        return _Reserving(self)

    def _take(self, reserved: Decimal) -> _Lease:
        micro = to_micro(reserved, up=True)
        leases = self._held.get(micro)
        if leases:
            lease = leases.popleft()
            if not leases:
                del self._held[micro]
            return lease
        # Not reserved here (another counter object, or a restarted process): the charge still
        # counts, in the current window.
        logger.warning("settling $%s that this counter never reserved", reserved)
        return _Lease(id=secrets.token_hex(12), window="", micro=micro)

    def _remember_charge(self, amount: Decimal, window: str) -> None:
        self._charged_in.setdefault(Decimal(amount), deque()).append(window)
        self._charges += 1
        if self._charges > _KEEP_CHARGES:
            # Forget the oldest: a refund that far back falls into the current window.
            self._charged_in.clear()
            self._charges = 0

    async def _apply(self, op: _Pending) -> str | None:
        self._pending.append(op)
        try:
            # With the next round trip that something else starts (or after a moment): until it
            # is applied its reservation still counts, so the cap sees at least as much money
            # as will be spent (only a charge above the reservation would show this much later).
            await self._flush(lazy=True)
        except SharedStateError as exc:
            if not any(kept is op for kept in self._pending):
                return op.window  # applied by a flush that then failed on a later one
            logger.warning(
                "Redis is unreachable: %d spend operations kept until it is back (%s)",
                len(self._pending),
                exc,
            )
            return None
        return op.window

    async def _flush(self, *, lazy: bool = False) -> None:
        # In order, all those waiting in one call: each is applied once (the server remembers
        # its id), so a call refused or lost keeps all of its operations, and those it applied
        # are ignored when they are sent again.
        async with self._flushing:
            while self._pending:
                ops = [self._pending[i] for i in range(min(len(self._pending), _APPLY_BATCH))]
                args: list[EncodableT] = [self._prefix, "", self._kind]
                for op in ops:
                    args += (op.what, op.window, op.op, op.micro, op.charged)
                lines = text(await self._calls.call(APPLY, args, lazy=lazy)).split("\n")
                for op, line in zip(ops, lines, strict=True):
                    op.window = self._seen(line)
                    self._pending.popleft()

    async def _flush_quietly(self) -> None:
        if self._pending:
            await self._flush()
            logger.info("spend operations kept during the outage are applied")

    def _renew_soon(self) -> None:
        if not self._renewing:
            self._renewing = True
            self._link.spawn(self._renew)

    async def _renew(self) -> None:
        try:
            while self._held or self._pending:
                await anyio.sleep(self.lease / 3)
                await self._renew_once()
        finally:
            self._renewing = False

    async def _renew_once(self) -> None:
        leases: list[EncodableT] = []
        for held in self._held.values():
            for lease in held:
                leases += [lease.window, lease.id, lease.micro]
        # A settle not yet applied keeps its reservation alive meanwhile.
        for op in self._pending:
            # (A settle of a reservation this counter never held has no lease to keep.)
            if op.lease is not None and op.lease.window:
                leases += [op.lease.window, op.lease.id, op.lease.micro]
        if not leases:
            return
        try:
            again = await self._link.run(
                RENEW, (), (self._prefix, int(self.lease * 1000), self._kind, *leases)
            )
            if self._pending:
                await self._flush()
        except SharedStateError:
            return  # the link logs the outage; the next round tries again
        if again:
            logger.warning(
                "%d reservations had lapsed on the server and are held again (their creates "
                "are still under way)",
                again,
            )
