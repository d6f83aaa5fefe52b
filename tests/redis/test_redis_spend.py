"""The shared spend counter: exact money, one cap for every process, leases, windows, outages."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from decimal import Decimal
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis_harness import RedisServer, Watch, child, eventually, run_against_cap, spend_step

from shortwan import ConfigurationError, SharedStateError, SpendBudget
from shortwan.redis import SharedSpendCounter, SharedState, connect
from shortwan.redis._books import GROW
from shortwan.redis._core import text
from shortwan.redis._lua import CALENDAR

pytestmark = pytest.mark.anyio

D = Decimal


class TestMoney:
    async def test_reserve_settle_release_refund(self, shared: SharedState) -> None:
        """The four operations move exactly the amounts given, and the cap refuses what crosses."""
        cap = await shared.spend_counter("1.00")
        assert await cap.reserve(D("0.425"))
        assert await cap.reserve(D("0.425"))
        assert (cap.reserved, cap.committed) == (D("0.85"), D("0.85"))
        assert not await cap.reserve(D("0.17"))  # 0.85 + 0.17 > 1.00
        assert cap.committed == D("0.85")
        await cap.settle(D("0.425"), D("0.34"))
        await cap.release(D("0.425"))
        assert cap.pending == 1  # both, as one operation on its way to the server
        figures = await cap.read()  # applies them first
        assert (figures.spent, figures.reserved, cap.pending) == (D("0.34"), 0, 0)
        await cap.refund(D("0.34"))
        figures = await cap.read()
        assert (figures.spent, figures.reserved, figures.limit) == (0, 0, D("1"))

    async def test_a_grow_sent_twice_is_held_once(self, shared: SharedState) -> None:
        """The same grow run again (its answer lost, the round sent once more on a new
        connection) answers as the first time and holds its money once."""
        cap = await shared.spend_counter("1.00")
        args = [cap._prefix, 1_000_000, "none", 60_000, "pool-1", "pool-1:g1", "", 0, 0, 0]
        args += [425_000, 170_000]
        first = await shared.run(GROW, (), args)
        again = await shared.run(GROW, (), args)
        assert text(first) == text(again)
        assert text(first).split()[:3] == ["g11", "0", "0"]
        figures = await cap.read()
        assert (figures.spent, figures.reserved) == (0, D("0.595"))

    async def test_settle_without_charge_counts_the_reservation(self, shared: SharedState) -> None:
        """settle(reserved, None) spends what was reserved."""
        cap = await shared.spend_counter("2")
        assert await cap.reserve(D("0.595"))
        await cap.settle(D("0.595"), None)
        figures = await cap.read()
        assert (figures.spent, figures.reserved) == (D("0.595"), 0)

    async def test_sub_micro_amounts_round_against_spending(self, shared: SharedState) -> None:
        """A reservation or charge finer than a micro-dollar rounds up, a refund rounds down."""
        cap = await shared.spend_counter("0.000003")
        assert await cap.reserve(D("0.0000011"))  # held as 0.000002
        assert cap.reserved == D("0.000002")
        assert not await cap.reserve(D("0.0000011"))  # 0.000002 + 0.000002 > 0.000003
        await cap.settle(D("0.0000011"), D("0.0000019"))  # charged as 0.000002
        assert (await cap.read()).spent == D("0.000002")
        await cap.refund(D("0.0000019"))  # refunds 0.000001
        assert (await cap.read()).spent == D("0.000001")

    async def test_zero_charges_and_refunds_are_applied(self, shared: SharedState) -> None:
        """A job charged nothing, and its refund of nothing, are applied like any other: the
        server does not refuse them, and the counter goes on granting."""
        cap = await shared.spend_counter("1")
        assert await cap.reserve(D("0.17"))
        await cap.settle(D("0.17"), D("0"))
        await cap.refund(D("0"))
        figures = await cap.read()
        assert (figures.spent, figures.reserved, cap.pending) == (0, 0, 0)
        assert await cap.reserve(D("0.17"))

    async def test_bad_amounts_are_refused(self, shared: SharedState) -> None:
        """Negative, infinite and non-numeric amounts raise ValueError and change nothing."""
        cap = await shared.spend_counter("1")
        for bad in (D("-0.01"), D("Infinity"), D("NaN"), "lots"):
            with pytest.raises(ValueError, match="amount"):
                await cap.reserve(bad)  # type: ignore[arg-type]
        assert (await cap.read()).committed == 0

    async def test_matches_the_in_memory_budget(self, shared: SharedState) -> None:
        """Driven by the same calls, the shared counter and SpendBudget agree at every step."""
        cap = await shared.spend_counter("3")
        local = SpendBudget(D("3"))

        async def agree() -> None:
            figures = await cap.read()
            assert (figures.spent, figures.reserved) == (local.spent, local.reserved)
            assert (cap.spent, cap.reserved) == (local.spent, local.reserved)  # as last seen

        await agree()
        steps = [D("0.425"), D("1.275"), D("0.85"), D("0.68"), D("0.17")]
        for amount in steps:
            assert await cap.reserve(amount) == await local.reserve(amount)
            await agree()
        for amount, charged in [(D("0.425"), D("0.4")), (D("1.275"), None)]:
            await cap.settle(amount, charged)
            await local.settle(amount, charged)
            await agree()
        await cap.release(D("0.85"))
        await local.release(D("0.85"))
        await agree()
        await cap.refund(D("0.4"))
        await local.refund(D("0.4"))
        await agree()


class TestSettings:
    async def test_limit_is_shared_and_changed_explicitly(self, shared: SharedState) -> None:
        """Another limit is refused at open, None follows the shared one, set_limit moves it."""
        first = await shared.spend_counter("10", name="web")
        with pytest.raises(ConfigurationError, match=r"\$10"):
            await shared.spend_counter("20", name="web")
        follower = await shared.spend_counter(None, name="web")
        assert follower.limit == D("10")
        await first.set_limit("0.5")
        assert not await follower.reserve(D("0.6"))  # the new limit applies at once
        assert follower.limit == D("0.5")

    async def test_window_and_missing_limit_are_checked(self, shared: SharedState) -> None:
        """A counter opened with another window, or first opened without a limit, is refused."""
        await shared.spend_counter("10", name="daily", window="day")
        with pytest.raises(ConfigurationError, match="per day"):
            await shared.spend_counter("10", name="daily", window="month")
        with pytest.raises(ConfigurationError, match="no limit"):
            await shared.spend_counter(None, name="fresh")
        with pytest.raises(ConfigurationError, match="window"):
            await shared.spend_counter("1", name="odd", window="week")  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="name"):
            await shared.spend_counter("1", name="a:b")

    async def test_window_books_follow_the_server_clock(self, shared: SharedState) -> None:
        """A daily counter books into today's UTC window and expires its books after it."""
        daily = await shared.spend_counter("5", name="d", window="day")
        monthly = await shared.spend_counter("5", name="m", window="month")
        assert await daily.reserve(D("1"))
        assert await monthly.reserve(D("1"))
        seconds, _ = await shared.redis.time()
        today = dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
        assert daily.figures.window == today.strftime("d%Y-%m-%d")
        assert monthly.figures.window == today.strftime("m%Y-%m")
        book = f"{shared.namespace}:spend:d:{daily.figures.window}"
        tomorrow = (today + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0)
        expires = await shared.redis.expiretime(book)
        assert expires == int(tomorrow.timestamp()) + 2 * 24 * 3600
        await daily.settle(D("1"), D("0.9"))
        await daily.refund(D("0.9"))  # back out of the window it was charged in
        assert daily.spent == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
async def test_calendar_agrees_with_python(redis_server: RedisServer, second: int) -> None:
    """The Lua calendar names the UTC day and month of any second, and when each ends."""
    client = Redis.from_url(redis_server.url)
    try:
        day, day_end, month, month_end = await client.eval(
            CALENDAR
            + "local s = tonumber(ARGV[1])\n"
            + "local d, m = window_at('day', s), window_at('month', s)\n"
            + "return {d, window_end(d), m, window_end(m)}",
            0,
            second,
        )
    finally:
        await client.aclose()
    moment = dt.datetime.fromtimestamp(second, dt.timezone.utc)
    assert day.decode() == moment.strftime("d%Y-%m-%d")
    assert month.decode() == moment.strftime("m%Y-%m")
    next_day = (moment + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0)
    assert day_end == int(next_day.timestamp())
    first = moment.replace(day=1, hour=0, minute=0, second=0)
    next_month = (first + dt.timedelta(days=32)).replace(day=1)
    assert month_end == int(next_month.timestamp())


class TestLeases:
    async def test_lease_of_a_closed_process_lapses(
        self, redis_server: RedisServer, shared: SharedState
    ) -> None:
        """A reservation nobody renews any more gives its room back after its lease."""
        cap = await shared.spend_counter("1", lease=0.5)
        other = await connect(redis_server.url, namespace=shared.namespace)
        gone = await other.spend_counter(None, lease=0.5)
        assert await gone.reserve(D("0.8"))
        await other.aclose()  # stops renewing, never settles
        assert not await cap.reserve(D("0.5"))
        await anyio.sleep(0.7)
        assert await cap.reserve(D("0.5"))
        assert cap.reserved == D("0.5")

    async def test_live_process_renews_its_leases(self, shared: SharedState) -> None:
        """A create that takes many leases long keeps its reservation, then settles it."""
        cap = await shared.spend_counter("1", lease=0.3)
        assert await cap.reserve(D("0.8"))
        await anyio.sleep(1.2)  # four leases
        figures = await cap.read()
        assert figures.reserved == D("0.8")
        assert not await cap.reserve(D("0.5"))
        await cap.settle(D("0.8"), D("0.8"))
        assert cap.held == 0
        figures = await cap.read()
        assert (figures.spent, figures.reserved) == (D("0.8"), 0)

    async def test_killed_process_frees_its_room(
        self, redis_server: RedisServer, shared: SharedState
    ) -> None:
        """kill -9 of one of 4 holders: its leases lapse, the others' are kept, the cap holds."""
        cap = await shared.spend_counter("4.00", lease=1.0)
        url, ns = redis_server.url, shared.namespace
        options = {"lease": 1.0, "count": 2, "amount": "0.425"}
        watch = Watch(cap)
        async with (
            child("hold", url, ns, options) as a,
            child("hold", url, ns, options) as b,
            child("hold", url, ns, options) as c,
            child("hold", url, ns, options) as d,
            anyio.create_task_group() as tg,
        ):
            for holder in (a, b, c, d):
                assert (await holder.line())["held"] == 2
            tg.start_soon(watch.run)
            # A holder may hold a create's room ahead for a second of quiet, then gives it back.
            await eventually(lambda: _reserved(cap, D("3.40")), timeout=5)
            a.kill()
            assert not await cap.reserve(D("0.85"))  # only 0.60 is free until the lease lapses
            await eventually(lambda: cap.reserve(D("0.85")), timeout=5)
            await anyio.sleep(2.5)  # the survivors renew across several leases
            figures = await cap.read()
            assert figures.reserved == D("3.40")  # 3 × 0.85 held by the survivors + ours
            assert not await cap.reserve(D("0.85"))
            watch.stop.set()
        assert watch.worst <= D("4.00")


def plans() -> st.SearchStrategy[list[list[dict[str, Any]]]]:
    """Plans of 4 processes: each step reserves a job's estimate, then settles or releases it."""

    step = spend_step(
        ["charged", "cheaper", "released"], refund_one_in=2, pauses=[0, 0, 0.002, 0.01]
    )
    return st.lists(st.lists(step, min_size=3, max_size=14), min_size=4, max_size=4)


@pytest.mark.slow
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=plans(), limit=st.integers(100, 600))
async def test_four_processes_never_cross_the_cap(
    redis_server: RedisServer, shared: SharedState, plan: list[list[dict[str, Any]]], limit: int
) -> None:
    """4 processes reserve, settle, release and refund at once: the cap holds, the sum is exact."""
    cap_usd = D(limit) / 100
    name = "c" + secrets.token_hex(4)
    cap = await shared.spend_counter(cap_usd, name=name)
    plans = [{"plan": steps} for steps in plan]
    results, worst = await run_against_cap(redis_server.url, shared, cap, "spend", plans)
    figures = await cap.read()
    charged = sum((D(r["charged"]) for r in results), D(0))
    refunded = sum((D(r["refunded"]) for r in results), D(0))
    assert figures.reserved == 0
    assert figures.spent == charged - refunded
    assert worst <= cap_usd
    assert all(D(r["worst"]) <= cap_usd for r in results)
    assert sum(r["granted"] + r["refused"] for r in results) == sum(len(s) for s in plan)


async def test_redis_lost_mid_run_fails_closed_and_resumes(
    restartable_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped and started again: reserve fails closed, a settle is kept, the same objects
    resume, and the cap still counts what was in flight."""
    caplog.set_level(logging.INFO, logger="shortwan")
    server = restartable_redis
    async with await connect(server.url, namespace="app", heartbeat=1.0) as shared:
        cap: SharedSpendCounter = await shared.spend_counter("1.00", lease=1.0)
        assert await cap.reserve(D("0.425"))  # create A, under way
        assert await cap.reserve(D("0.425"))  # create B, under way
        server.stop()
        with pytest.raises(SharedStateError, match="unreachable"):
            await cap.reserve(D("0.01"))
        assert not shared.online
        await cap.settle(D("0.425"), D("0.425"))  # A's answer came meanwhile: kept, not lost
        assert cap.pending == 1
        with pytest.raises(SharedStateError):
            await cap.reserve(D("0.01"))  # still closed: nothing is granted past the books
        waiter_end: list[Any] = []

        async def wait_through() -> None:
            waiter_end.append(await shared.jobs.wait("job-during-outage", timeout=20))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_through)
            await anyio.sleep(0.3)
            server.start()  # empty: nothing was persisted
            await eventually(lambda: shared.online and cap.pending == 0)
            # B's lease, forgotten by the restarted server, is held again by its renewal.
            await eventually(lambda: _reserved(cap, D("0.425")), timeout=5)
            figures = await cap.read()
            assert (figures.spent, figures.reserved) == (D("0.425"), D("0.425"))
            assert not await cap.reserve(D("0.2"))  # 0.425 + 0.425 + 0.2 > 1.00
            assert await cap.reserve(D("0.15"))
            from shortwan.redis import JobEnd

            await shared.jobs.publish(JobEnd(job_id="job-during-outage", state="failed"))
        assert waiter_end[0].state == "failed"
    messages = [r.getMessage() for r in caplog.records]
    assert any("unreachable" in m for m in messages)
    assert any("reachable again" in m for m in messages)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def _reserved(cap: SharedSpendCounter, amount: Decimal) -> bool:
    return (await cap.read()).reserved == amount


async def test_settle_of_an_unknown_reservation_still_counts(shared: SharedState) -> None:
    """A settle this counter never reserved for is charged to the current window, once."""
    cap = await shared.spend_counter("1", window="day")
    await cap.settle(D("0.3"), D("0.25"))
    assert (cap.spent, cap.reserved, cap.pending) == (D("0.25"), 0, 0)
    with pytest.raises(ValueError, match="amount"):
        await cap.settle(D("0.3"), D("-1"))
    assert (await cap.read()).spent == D("0.25")
