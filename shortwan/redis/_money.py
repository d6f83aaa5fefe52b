"""Money as the shared spend cap keeps it: integer micro-dollars, and the figures it reports."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Final

import attrs

__all__ = ["MICRO", "SpendFigures", "same_amount", "to_micro", "usd"]

MICRO: Final = Decimal(1_000_000)


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


def usd(micro: int) -> Decimal:
    """Return ``micro`` micro-dollars in USD, written plainly."""
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


def same_amount(charged: Decimal, reserved: Decimal) -> bool:
    """Whether a create was charged its estimate (most are), without converting it again."""
    try:
        return bool(charged == reserved)
    except (InvalidOperation, TypeError):  # a signalling NaN: to_micro says what is wrong
        return False
