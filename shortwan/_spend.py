"""The spend cap of a batch: a counter of the money creates commit, and what stands for no cap.

A batch reserves each request's estimated cost before its create leaves, settles the reservation
with the charge the service returns, gives it back when no job can exist, and takes refunds off.
:class:`SpendCounter` is the seam for a counter shared by processes; :class:`SpendBudget` is the
in-memory one, and :class:`NoBudget` stands in when there is no cap, so the batch never asks
whether there is one.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Final, Protocol, TypeAlias, cast

from ._errors import InvalidRequestError

__all__ = [
    "NO_BUDGET",
    "BothBudgets",
    "NoBudget",
    "SpendBudget",
    "SpendCounter",
    "SpendLimit",
    "check_spend",
    "open_budget",
    "spend_limit",
]


class SpendCounter(Protocol):
    """Keeps the money of a batch under its cap; one implementation can be shared by processes.

    Every amount is a :class:`~decimal.Decimal` in USD. ``reserve`` is the only call that may
    refuse; the others record what became of a reservation and never fail for money reasons.
    """

    @property
    def limit(self) -> Decimal:
        """The cap: spent plus reserved never goes past it."""

    @property
    def committed(self) -> Decimal:
        """What is spent or reserved now (for a shared counter: as of its last answer)."""

    async def reserve(self, amount: Decimal) -> bool:
        """Set ``amount`` aside for a create, or return False if the cap would be crossed."""

    async def settle(self, reserved: Decimal, charged: Decimal | None) -> None:
        """Replace a reservation by what the create was charged (``None``: the estimate)."""

    async def release(self, reserved: Decimal) -> None:
        """Give back a reservation whose create surely made no job."""

    async def refund(self, amount: Decimal) -> None:
        """Take a refunded job's charge off the spend."""


class SpendBudget:
    """The in-memory :class:`SpendCounter`: spent + reserved never exceeds ``limit``.

    Args:
        limit: the cap, in USD.
        spent: money already spent before this budget counts (an earlier run of a batch).
    """

    def __init__(self, limit: Decimal, *, spent: Decimal = Decimal(0)) -> None:
        self.limit = limit
        self.spent = spent
        self.reserved = Decimal(0)

    def __repr__(self) -> str:
        return f"<SpendBudget spent={self.spent} reserved={self.reserved} limit={self.limit}>"

    @property
    def committed(self) -> Decimal:
        """What is spent or reserved."""
        return self.spent + self.reserved

    async def reserve(self, amount: Decimal) -> bool:
        """Set ``amount`` aside, or return False if the cap would be crossed."""
        if self.spent + self.reserved + amount > self.limit:
            return False
        self.reserved += amount
        return True

    async def settle(self, reserved: Decimal, charged: Decimal | None) -> None:
        """Turn a reservation into what was charged (``None``: the reservation itself)."""
        self.reserved -= reserved
        self.spent += reserved if charged is None else charged

    async def release(self, reserved: Decimal) -> None:
        """Give back a reservation."""
        self.reserved -= reserved

    async def refund(self, amount: Decimal) -> None:
        """Take a refund off the spend."""
        self.spent -= amount


class NoBudget:
    """The :class:`SpendCounter` of a batch without a cap: it refuses nothing and counts nothing."""

    limit: Final = Decimal("Infinity")
    committed: Final = Decimal(0)

    def __repr__(self) -> str:
        return "<NoBudget>"

    async def reserve(self, amount: Decimal) -> bool:
        """Allow every create."""
        return True

    async def settle(self, reserved: Decimal, charged: Decimal | None) -> None:
        """Count nothing."""

    async def release(self, reserved: Decimal) -> None:
        """Count nothing."""

    async def refund(self, amount: Decimal) -> None:
        """Count nothing."""


NO_BUDGET: Final = NoBudget()


class BothBudgets:
    """A :class:`SpendCounter` that keeps a batch under two caps: its own and a shared one.

    The batch's own (in memory, counting what its journal's earlier runs spent) is asked first,
    so a request it refuses costs the shared counter nothing; a reservation one of them refuses
    or cannot make is given back to the other.
    """

    def __init__(self, own: SpendCounter, shared: SpendCounter) -> None:
        self.own = own
        self.shared = shared

    def __repr__(self) -> str:
        return f"<BothBudgets own={self.own!r} shared={self.shared!r}>"

    @property
    def limit(self) -> Decimal:
        """The lower of the two caps."""
        return min(self.own.limit, self.shared.limit)

    @property
    def committed(self) -> Decimal:
        """The higher of the two counts."""
        return max(self.own.committed, self.shared.committed)

    async def reserve(self, amount: Decimal) -> bool:
        """Reserve ``amount`` under both caps, or under neither."""
        if not await self.own.reserve(amount):
            return False
        try:
            granted = await self.shared.reserve(amount)
        except BaseException:
            await self.own.release(amount)
            raise
        if not granted:
            await self.own.release(amount)
        return granted

    async def settle(self, reserved: Decimal, charged: Decimal | None) -> None:
        """Settle the reservation with both."""
        await self.own.settle(reserved, charged)
        await self.shared.settle(reserved, charged)

    async def release(self, reserved: Decimal) -> None:
        """Give the reservation back to both."""
        await self.own.release(reserved)
        await self.shared.release(reserved)

    async def refund(self, amount: Decimal) -> None:
        """Take the refund off both."""
        await self.own.refund(amount)
        await self.shared.refund(amount)


SpendLimit: TypeAlias = Decimal | str | int | float | SpendCounter | None
"""What ``max_spend`` takes: an amount in USD, a shared counter, or ``None`` for no cap."""


def spend_limit(value: object) -> Decimal:
    """Read an amount in USD (a Decimal, a decimal string, an int or a float) as a cap.

    Raises:
        InvalidRequestError: not an amount, not finite, or below zero.
    """
    if isinstance(value, bool) or not isinstance(value, (Decimal, str, int, float)):
        raise InvalidRequestError([f"max_spend is not an amount: {value!r}"])
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise InvalidRequestError([f"max_spend must be a finite amount >= 0: {value!r}"])
        return Decimal(str(value))  # 20.0 means $20.0, not 20.0000000000017
    try:
        limit = Decimal(value)
    except ArithmeticError:
        raise InvalidRequestError([f"max_spend is not an amount: {value!r}"]) from None
    if not limit.is_finite() or limit < 0:
        raise InvalidRequestError([f"max_spend must be a finite amount >= 0: {value!r}"])
    return limit


def check_spend(value: object) -> Decimal | SpendCounter | None:
    """Return ``max_spend`` as a cap in USD, a counter as it is, or ``None``.

    Raises:
        InvalidRequestError: neither an amount nor an object with a counter's methods.
    """
    if value is None:
        return None
    if isinstance(value, (Decimal, str, int, float)):
        return spend_limit(value)
    if not all(
        callable(getattr(value, name, None)) for name in ("reserve", "settle", "release", "refund")
    ) or not all(hasattr(value, name) for name in ("limit", "committed")):
        raise InvalidRequestError(
            [
                f"max_spend must be an amount or a SpendCounter (limit, committed, reserve, "
                f"settle, release, refund), got {type(value).__name__}"
            ]
        )
    return cast("SpendCounter", value)


async def open_budget(
    limit: Decimal | SpendCounter | None,
    *,
    spent_before: Callable[[], Awaitable[Decimal]],
    shared: Callable[[Decimal], Awaitable[SpendCounter]] | None = None,
) -> SpendCounter:
    """Return the counter a batch uses: an in-memory budget for an amount, else ``limit`` itself.

    A cap given as an amount covers every run of the batch: ``spent_before()`` (what its journal
    says earlier runs committed) counts toward it, and is read only then. With ``shared`` (which
    opens the shared counter of a cap), the amount is also a cap for every process: the batch
    stays under both. A counter given as ``limit`` keeps its own count.

    Raises:
        SharedStateError: the shared counter could not be opened (nothing was sent).
        ConfigurationError: the shared counter has another cap.
    """
    if limit is None:
        return NO_BUDGET
    if isinstance(limit, Decimal):
        own = SpendBudget(limit, spent=await spent_before())
        if shared is None:
            return own
        return BothBudgets(own, await shared(limit))
    return limit
