"""Smoke."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shortwan.redis import SharedState

pytestmark = pytest.mark.anyio


async def test_smoke(shared: SharedState) -> None:
    """A counter reserves and settles."""
    cap = await shared.spend_counter("1.00")
    assert await cap.reserve(Decimal("0.425"))
    assert cap.reserved == Decimal("0.425")
    assert await cap.reserve(Decimal("0.425"))
    assert not await cap.reserve(Decimal("0.425"))
    await cap.settle(Decimal("0.425"), Decimal("0.4"))
    await cap.release(Decimal("0.425"))
    assert cap.spent == Decimal("0.4"), cap
    assert cap.reserved == 0
    await cap.refund(Decimal("0.4"))
    assert cap.spent == 0
    b = shared.rate_bucket(rate=10)
    print([await b.take() for _ in range(5)])
