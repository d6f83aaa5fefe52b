"""The room a process holds on a shared cap for its creates (its pool): most reservations need no
round trip, room held ahead stays small and goes back, and the cap holds whatever happens."""

from __future__ import annotations

import datetime as dt
import math
import secrets
from decimal import Decimal
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_harness import RedisServer, count_round_trips, eventually, run_against_cap, spend_step

from shortwan import SharedStateError
from shortwan.redis import SharedSpendCounter, SharedState, connect
from shortwan.redis._books import GROW
from shortwan.redis._pool import Ask, Pool, ahead_of

pytestmark = pytest.mark.anyio

D = Decimal
ITEM = D("0.425")  # a 5 s create's estimate


async def reserved(cap: SharedSpendCounter) -> Decimal:
    """Return what every process holds on the counter now, by a fresh read."""
    return (await cap.read()).reserved


async def creates_back_to_back(cap: SharedSpendCounter, n: int) -> None:
    """Reserve ``n`` creates one after the other, as a busy batch does."""
    for _ in range(n):
        assert await cap.reserve(ITEM)


class TestAhead:
    @given(
        under_way=st.integers(0, 200),
        item=st.integers(-5, 10**7),
        room=st.integers(-(10**9), 10**10),
    )
    def test_room_held_ahead_is_whole_creates_within_an_eighth_of_the_room(
        self, under_way: int, item: int, room: int
    ) -> None:
        """Room held ahead is a whole number of creates, for at most twice those under way
        (and 64), within an eighth of the room left, and never negative."""
        ahead = ahead_of(under_way, item, room)
        assert ahead >= 0
        if ahead:
            assert ahead % item == 0
            assert ahead // item <= min(64, max(1, 2 * under_way))
            assert ahead <= room / 8

    def test_more_creates_under_way_hold_more_ahead_up_to_64(self) -> None:
        """With room to spare: one create ahead for a lone one, twice those under way, 64 at
        most."""
        assert [ahead_of(n, 1, 10**9) for n in (0, 1, 3, 16, 32, 33, 500)] == [
            1,
            2,
            6,
            32,
            64,
            64,
            64,
        ]


class TestPool:
    async def test_most_reservations_of_a_busy_batch_take_no_round_trip(
        self, shared: SharedState, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """40 creates back to back on a roomy cap: a handful of grows, not one call each; the
        server holds what they reserved plus a little ahead, never less."""
        cap = await shared.spend_counter("1000")
        trips = count_round_trips(shared, monkeypatch)
        await creates_back_to_back(cap, 40)
        assert len(trips) <= 8, trips
        assert cap.held == 40
        held = await reserved(cap)
        assert 40 * ITEM <= held <= 40 * ITEM + 64 * ITEM

    async def test_room_held_ahead_goes_back_after_a_quiet_second(
        self, redis_server: RedisServer, shared: SharedState
    ) -> None:
        """Near the cap another process is refused room this one holds ahead (never more than
        the cap), and gets it once this one has been quiet for a second."""
        name = "c" + secrets.token_hex(4)
        mine = await shared.spend_counter("10", name=name)
        async with await connect(redis_server.url, namespace=shared.namespace) as other:
            theirs = await other.spend_counter(None, name=name)
            await creates_back_to_back(mine, 8)
            assert mine.pool is not None
            ahead = D(mine.pool.free) / 1_000_000
            assert ahead > 0
            figures = await theirs.read()
            assert figures.reserved == 8 * ITEM + ahead
            want = figures.limit - 8 * ITEM  # fits only without the room held ahead
            assert not await theirs.reserve(want)
            await anyio.sleep(1.3)
            assert await theirs.reserve(want)
            assert (await theirs.read()).committed == D("10")
            assert mine.pool.free == 0

    async def test_a_refusal_gives_the_room_held_ahead_back_at_once(
        self, shared: SharedState
    ) -> None:
        """A create refused by the cap hands back what the process held unused, at once."""
        cap = await shared.spend_counter("10")
        await creates_back_to_back(cap, 8)
        assert await reserved(cap) > 8 * ITEM
        assert not await cap.reserve(D("9"))
        assert await reserved(cap) == 8 * ITEM

    async def test_a_cancelled_reservation_leaves_its_room_to_the_others(
        self, shared: SharedState
    ) -> None:
        """A create cancelled while its grow is on the way holds nothing: the room granted for
        it goes to the free room, and back to the server after a quiet second."""
        cap = await shared.spend_counter("5")
        with anyio.CancelScope() as scope:
            scope.cancel()
            await cap.reserve(D("1"))
        await eventually(lambda: cap.pool is not None and cap.pool.free == 1_000_000, timeout=5)
        assert cap.held == 0
        await eventually(lambda: _holds_nothing(cap), timeout=5)

    async def test_closing_gives_everything_unused_back_at_once(
        self, redis_server: RedisServer, shared: SharedState
    ) -> None:
        """A process that closes applies its settles and hands back its free room before it
        goes: nothing waits for a lease to lapse."""
        name = "c" + secrets.token_hex(4)
        watcher = await shared.spend_counter("10", name=name)
        other = await connect(redis_server.url, namespace=shared.namespace)
        cap = await other.spend_counter(None, name=name)
        await creates_back_to_back(cap, 8)
        for _ in range(8):
            await cap.settle(ITEM, D("0.4"))
        assert cap.pool is not None
        assert cap.pool.free > 0
        await other.aclose()
        figures = await watcher.read()
        assert (figures.spent, figures.reserved) == (8 * D("0.4"), 0)

    async def test_fails_closed_once_redis_is_known_lost_even_with_room_in_hand(
        self, restartable_redis: RedisServer
    ) -> None:
        """With Redis gone (and known gone), room the pool holds is not handed out either."""
        async with await connect(restartable_redis.url, namespace="p", heartbeat=0.6) as shared:
            cap = await shared.spend_counter("100")
            await creates_back_to_back(cap, 8)
            assert cap.pool is not None
            assert cap.pool.free >= 1_000_000 * ITEM
            restartable_redis.stop()
            await eventually(lambda: not shared.online, timeout=5)
            with pytest.raises(SharedStateError):
                await cap.reserve(ITEM)
            restartable_redis.start()
            await eventually(lambda: shared.online, timeout=10)
            await eventually(lambda: _reserves(cap), timeout=10)

    async def test_a_window_turn_with_a_pool_open(self, shared: SharedState) -> None:
        """When the window ends, the old pool hands its free room back to the old window, its
        creates settle there, and new creates reserve in the new window."""
        cap = await shared.spend_counter("10", window="day")
        await creates_back_to_back(cap, 8)
        pool = cap.pool
        assert pool is not None
        assert pool.free > 0
        today = pool.window
        # Make it look as if the pool and its books were yesterday's, and the day has ended.
        day = dt.date.fromisoformat(today[1:]) - dt.timedelta(days=1)
        old = day.strftime("d%Y-%m-%d")
        prefix = cap._prefix
        await shared.redis.rename(f"{prefix}:{today}", f"{prefix}:{old}")
        await shared.redis.rename(f"{prefix}:{today}:leases", f"{prefix}:{old}:leases")
        pool.window = old
        pool.window_until = pool.until = -math.inf
        assert await cap.reserve(ITEM)  # in the new window
        assert cap.pool is not pool
        assert cap.pool is not None
        assert cap.pool.window == today
        assert pool.retired
        assert pool.free == 0
        for _ in range(8):
            await cap.settle(ITEM, D("0.4"))  # the creates of the old pool
        await cap.settle(ITEM, ITEM)  # the create of the new one
        await cap.read()
        books = await shared.redis.hgetall(f"{prefix}:{old}")
        assert int(books[b"spent"]) == 8 * 400_000
        assert int(books[b"reserved"]) == 0
        figures = await cap.read()
        assert figures.window == today
        assert figures.spent == ITEM


async def lose_lease(shared: SharedState, cap: SharedSpendCounter, pool: Pool) -> None:
    """Take a pool's lease off the server, as a sweep after a long outage would."""
    book = f"{cap._prefix}:{pool.window}"
    held = await shared.redis.hget(book, "l:" + pool.id)
    if held is not None:
        await shared.redis.hincrby(book, "reserved", -int(held))
        await shared.redis.hdel(book, "l:" + pool.id)
    await shared.redis.zrem(f"{book}:leases", pool.id)


async def server_holds(shared: SharedState, cap: SharedSpendCounter, pool: Pool) -> int:
    """Return what the server holds for ``pool`` (0 when it has no lease)."""
    held = await shared.redis.hget(f"{cap._prefix}:{pool.window}", "l:" + pool.id)
    return 0 if held is None else int(held)


class TestDoubt:
    """A pool whose books may differ from the server's is retired, never trusted."""

    async def test_a_lapsed_pool_holding_only_free_room_is_not_trusted(
        self, shared: SharedState
    ) -> None:
        """The lease of a pool with nothing but free room lapses: the next renewal says so,
        the room is not handed out, and new creates take room from a new pool."""
        cap = await shared.spend_counter("100")
        made = 0
        while made < 12 or cap.pool is None or not cap.pool.free:  # until room is held ahead
            assert await cap.reserve(ITEM)
            made += 1
        for _ in range(made):
            await cap.settle(ITEM, None)
        pool = cap.pool
        assert pool is not None
        assert pool.free > 0
        assert (await cap.read()).reserved == D(pool.free) / 1_000_000
        await lose_lease(shared, cap, pool)
        await cap._renew_once()
        assert pool.retired
        assert pool.free == 0
        assert cap.pool is None
        assert await cap.reserve(ITEM)  # through the server, in a new pool
        assert cap.pool is not None
        assert cap.pool.id != pool.id
        figures = await cap.read()
        assert figures.reserved == D(cap.pool.holds) / 1_000_000
        assert figures.spent == made * ITEM

    async def test_draws_applied_while_the_lease_was_gone_are_not_held_twice(
        self, shared: SharedState
    ) -> None:
        """Settles applied while a pool had no lease, then its room held again: once its last
        create settles, its lease is dropped, and the books are exact."""
        cap = await shared.spend_counter("100")
        await creates_back_to_back(cap, 4)
        pool = cap.pool
        assert pool is not None
        await lose_lease(shared, cap, pool)
        for _ in range(2):
            await cap.settle(ITEM, D("0.4"))
        await cap.read()  # applied: they took nothing off the missing lease
        await cap._renew_once()  # held again for the two under way
        assert pool.retired
        assert await server_holds(shared, cap, pool) == 2 * 425_000
        for _ in range(2):
            await cap.settle(ITEM, D("0.4"))
        figures = await cap.read()
        assert (figures.spent, figures.reserved) == (4 * D("0.4"), 0)
        assert pool not in cap._pools.every

    async def test_a_renewal_whose_answer_was_lost_retires_its_pools(
        self, shared: SharedState
    ) -> None:
        """A renewal that may have run (its answer lost) may have held a pool again without
        its free room: the pool is retired, and dropped once its creates settle."""
        cap = await shared.spend_counter("100")
        await creates_back_to_back(cap, 8)
        pool = cap.pool
        assert pool is not None
        renewing = cap._start_renewing()
        renewing.args([None])
        renewing.lost(True)
        assert pool.retired
        assert cap.pool is None
        assert await cap.reserve(ITEM)  # a new pool
        for _ in range(9):
            await cap.settle(ITEM, ITEM)
        await eventually(lambda: pool not in cap._pools.every, timeout=5)
        figures = await cap.read()
        assert cap.pool is not None
        assert figures.reserved == D(cap.pool.holds) / 1_000_000
        assert figures.spent == 9 * ITEM

    async def test_a_grow_lost_on_its_way_retires_its_pool(self, shared: SharedState) -> None:
        """A grow whose round failed after it may have run leaves its pool retired; what it
        may have added is dropped with it, not handed out."""
        cap = await shared.spend_counter("100")
        await creates_back_to_back(cap, 8)
        pool = cap.pool
        assert pool is not None
        growing = cap._pools.start_growing()
        ask = Ask(pool.free + 1)  # more than the pool has: it goes to the server
        args = growing.args([ask])
        assert growing.asks == [ask]
        await shared.run(GROW, (), args)  # it ran...
        growing.lost(True)  # ...and its answer was lost
        assert pool.retired
        assert cap.pool is None
        for _ in range(8):
            await cap.settle(ITEM, ITEM)
        await eventually(lambda: _reserves_nothing(cap), timeout=5)
        assert (await cap.read()).spent == 8 * ITEM


async def _reserves_nothing(cap: SharedSpendCounter) -> bool:
    return (await cap.read()).reserved == 0


async def _holds_nothing(cap: SharedSpendCounter) -> bool:
    return await reserved(cap) == 0


async def _reserves(cap: SharedSpendCounter) -> bool:
    try:
        return await cap.reserve(ITEM)
    except SharedStateError:
        return False


def bursts() -> st.SearchStrategy[list[dict[str, Any]]]:
    """Batches of 4 processes: many creates at once, each charged (maybe less, maybe refunded)
    or released."""

    step = spend_step(
        ["charged", "charged", "cheaper", "released"],
        refund_one_in=10,
        pauses=[0, 0.001, 0.005, 0.02],
    )

    @st.composite
    def batch(draw: st.DrawFn) -> dict[str, Any]:
        return {
            "plan": draw(st.lists(step, min_size=20, max_size=80)),
            "concurrency": draw(st.sampled_from([4, 16, 32])),
        }

    return st.lists(batch(), min_size=4, max_size=4)


@pytest.mark.slow
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=bursts(), limit=st.integers(5, 60))
async def test_four_busy_processes_never_cross_the_cap(
    redis_server: RedisServer, shared: SharedState, batches: list[dict[str, Any]], limit: int
) -> None:
    """4 processes, each with many creates at once (pools growing, held ahead, handed back):
    spent + reserved never passes the cap, and the spend is exact to the micro-dollar."""
    cap_usd = D(limit)
    name = "b" + secrets.token_hex(4)
    cap = await shared.spend_counter(cap_usd, name=name)
    results, worst = await run_against_cap(redis_server.url, shared, cap, "burst", batches)
    figures = await cap.read()
    charged = sum((D(r["charged"]) for r in results), D(0))
    refunded = sum((D(r["refunded"]) for r in results), D(0))
    assert figures.reserved == 0  # every process gave back what it held as it closed
    assert figures.spent == charged - refunded
    assert worst <= cap_usd
    assert all(D(r["worst"]) <= cap_usd for r in results)
    assert all(r["held"] == 0 for r in results)
    steps = sum(len(b["plan"]) for b in batches)
    assert sum(r["granted"] + r["refused"] for r in results) == steps
