"""The shared query budget: one rate, one pause and one slot queue for every process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from decimal import Decimal

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio
from redis_harness import RedisServer, count_round_trips

from shortwan.redis import SharedState, connect

pytestmark = pytest.mark.anyio


async def storm(budget_a: object, count: int = 12) -> None:
    """Tell a budget that its last ``count`` queries were all refused with a short pause."""
    now = time.monotonic()
    for _ in range(count):
        budget_a.observe(sent_at=now, refused=True, retry_after=0.05)  # type: ignore[attr-defined]


class TestOneRateForAll:
    async def test_slots_are_shared(self, redis_server: RedisServer, namespace: str) -> None:
        """Two processes' budgets take slots from one queue: together they send at the rate."""
        async with (
            await connect(redis_server.url, namespace=namespace) as one,
            await connect(redis_server.url, namespace=namespace) as two,
        ):
            budgets = [one.query_budget(50.0), two.query_budget(50.0)]
            sent = 0
            started = time.monotonic()

            async def send(budget: object) -> None:
                nonlocal sent
                for _ in range(25):
                    await budget.acquire()  # type: ignore[attr-defined]
                    sent += 1

            async with anyio.create_task_group() as tg:
                for budget in budgets:
                    tg.start_soon(send, budget)
            elapsed = time.monotonic() - started
        assert sent == 50
        # 50 slots at 50 a second: the first goes at once, the last a second later.
        assert elapsed >= 49 / 50 - 0.02, elapsed

    async def test_a_cut_in_one_process_slows_the_other(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """A storm of 429s seen by one worker cuts the shared rate; the other worker follows."""
        async with (
            await connect(redis_server.url, namespace=namespace) as one,
            await connect(redis_server.url, namespace=namespace) as two,
        ):
            first, second = one.query_budget(200.0), two.query_budget(200.0)
            for budget in (first, second):
                for _ in range(10):
                    await budget.acquire()
            now = time.monotonic()
            for _ in range(4):
                first.observe(sent_at=now, refused=False)
            await storm(first)
            cut = first.statistics().rate
            assert cut < 200.0
            await first.acquire()  # writes the cut
            await second.acquire()  # reads it
            assert second.statistics().rate == pytest.approx(cut, rel=0.05)

    async def test_a_pause_holds_every_process(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """A Retry-After pause taken by one worker holds the other worker's queries too."""
        async with (
            await connect(redis_server.url, namespace=namespace) as one,
            await connect(redis_server.url, namespace=namespace) as two,
        ):
            first, second = one.query_budget(100.0), two.query_budget(100.0)
            await first.acquire()
            await second.acquire()
            done: dict[str, float] = {}
            started = time.monotonic()

            async def later() -> None:
                await anyio.sleep(0.05)
                await second.acquire()
                done["second"] = time.monotonic() - started

            first.pause(0.6)
            async with anyio.create_task_group() as tg:
                tg.start_soon(later)
                await first.acquire()
                done["first"] = time.monotonic() - started
        assert done["first"] >= 0.55, done
        assert done["second"] >= 0.55, done

    async def test_two_decisions_at_once_end_in_one(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """When two workers cut at once, the first write wins and the other takes its curve."""
        async with (
            await connect(redis_server.url, namespace=namespace) as one,
            await connect(redis_server.url, namespace=namespace) as two,
        ):
            first, second = one.query_budget(100.0), two.query_budget(100.0)
            await first.acquire()
            await second.acquire()
            now = time.monotonic()
            for budget in (first, second):
                for _ in range(6):
                    budget.observe(sent_at=now, refused=False)
            await storm(first)
            await storm(second, 20)
            await first.acquire()
            await second.acquire()  # its own cut is refused: it takes the first one's
            await first.acquire()
            assert first.statistics().rate == pytest.approx(second.statistics().rate, rel=1e-6)


async def booked(url: str, namespace: str) -> int:
    """Return the sends every process booked on the server, from its per-second counters."""
    async with redis.asyncio.Redis.from_url(url) as client:
        keys = [key async for key in client.scan_iter(match=f"*{namespace}*:sent:*")]
        return sum(int(value) for value in await client.mget(keys)) if keys else 0


class TestBurstsShareATake:
    async def test_a_burst_books_its_slots_in_few_round_trips(
        self, shared: SharedState, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """40 queries at once book their slots in one or two calls, and still go at the rate:
        each has a slot of its own."""
        budget = shared.query_budget(100.0)
        await budget.acquire()  # the curve is written before counting
        await anyio.sleep(0.01)  # past the first slot
        trips = count_round_trips(shared, monkeypatch)
        done: list[float] = []
        started = time.monotonic()

        async def one() -> None:
            await budget.acquire()
            done.append(time.monotonic() - started)

        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(one)
        assert len(done) == 40
        # The first query's call leaves alone; the 39 behind it share one call, in one round.
        assert sum(trips) <= 2, trips
        assert len(trips) <= 2, trips
        # 40 slots at 100 a second: the last goes about 0.39 s after the first.
        assert max(done) >= 0.39 - 0.02, done
        assert max(done) - min(done) >= 0.37, done

    async def test_takes_and_spend_calls_share_round_trips(
        self,
        shared: SharedState,
        redis_server: RedisServer,
        namespace: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """What the pieces of one process ask at once (slot takes, reservations, settles,
        polling claims) goes out together: one round trip per burst, not one per piece."""
        budget = shared.query_budget(1e6)  # no query waits for its slot: one burst throughout
        cap = await shared.spend_counter("100")
        await budget.acquire()
        trips = count_round_trips(shared, monkeypatch)

        async def create(i: int) -> None:
            assert await cap.reserve(Decimal("0.17"))
            await budget.acquire()
            await shared.jobs.claim([f"job-{i}"], ttl=5.0)
            await cap.settle(Decimal("0.17"), Decimal("0.17"))

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(create, i)
        # Each claim is a call of its own; the reservations of one round share one call, and
        # so do its slot takes and its settles...
        assert 30 < sum(trips) <= 30 + 3 * len(trips), trips
        assert len(trips) <= 12, trips  # ...in a few rounds that carry every kind at once
        # ...and still book a slot each (31 with the first acquire).
        assert await booked(redis_server.url, namespace) == 31
        assert (await cap.read()).spent == Decimal("5.1")
        holders = await shared.jobs.claim([f"job-{i}" for i in range(30)], ttl=5.0)
        assert set(holders.values()) == {shared.worker_id}

    async def test_a_cancelled_acquirer_strands_no_one(
        self, redis_server: RedisServer, shared: SharedState, namespace: str
    ) -> None:
        """Acquirers cancelled while their take is out (anyio's way and asyncio's) leave the
        budget working, and no one who was let through went without a booked slot."""
        budget = shared.query_budget(1000.0)
        await budget.acquire()
        finished = 1

        async def one() -> None:
            nonlocal finished
            await budget.acquire()
            finished += 1

        async def cancelled_one(*, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
            with anyio.CancelScope() as scope:
                task_status.started(scope)
                await budget.acquire()
                await anyio.sleep_forever()

        with anyio.fail_after(5):
            native = asyncio.get_running_loop().create_task(budget.acquire())
            async with anyio.create_task_group() as tg:
                scope = await tg.start(cancelled_one)
                for _ in range(10):
                    tg.start_soon(one)
                await anyio.lowlevel.checkpoint()  # every take is now queued or on its way
                native.cancel()
                scope.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await native
            await one()  # and the budget still books slots afterwards
        assert finished >= 11
        assert await booked(redis_server.url, namespace) >= finished


class TestRedisFailing:
    async def test_pacing_goes_on_locally_and_sharing_comes_back(
        self,
        restartable_redis: RedisServer,
        namespace: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Redis stopped: queries are paced locally, with one WARNING; back, shared again."""
        caplog.set_level(logging.INFO, logger="shortwan")
        state = await connect(restartable_redis.url, namespace=namespace, heartbeat=0.5)
        async with state:
            budget = state.query_budget(100.0)
            await budget.acquire()
            restartable_redis.stop()
            with anyio.fail_after(15):
                for _ in range(30):
                    await budget.acquire()  # never raises, whatever Redis does
            paced = [r for r in caplog.records if "paced locally" in r.getMessage()]
            assert [r.levelno for r in paced] == [logging.WARNING]
            restartable_redis.start()
            with anyio.fail_after(15):
                while not state.online:
                    await anyio.sleep(0.05)
                await budget.acquire()
            assert any("shared again" in r.getMessage() for r in caplog.records)


class TestDeadline:
    async def test_a_slot_past_the_deadline_is_refused_once_the_deadline_passes(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """Given more time than a call to Redis can take, a slot booked past it is waited for
        up to the deadline and then refused (no cancel scope armed); given less, the wait is cut
        at it by one; a slot within it is granted. Never refused before the deadline: refusing
        at once would have callers book slot after slot, further and further out."""
        async with await connect(
            redis_server.url, namespace=namespace, connect_timeout=0.1, command_timeout=0.1
        ) as state:
            assert state.longest_call == pytest.approx(1.5)
            budget = state.query_budget(100.0)
            assert await budget.acquire_within(10.0)
            budget.pause(3.0)
            started = time.monotonic()
            assert not await budget.acquire_within(1.6)  # booked 3 s out: refused at 1.6 s
            refused = time.monotonic() - started
            started = time.monotonic()
            assert not await budget.acquire_within(0.3)  # within a call's length: cut at 0.3 s
            cut = time.monotonic() - started
        assert 1.55 <= refused < 2.9
        assert 0.25 <= cut < 1.5


class TestStatistics:
    async def test_the_snapshot_is_the_controllers(self, shared: SharedState) -> None:
        """statistics() shows the shared rate in force, the ceiling and the answers seen here."""
        budget = shared.query_budget(30.0)
        await budget.acquire()
        budget.observe(sent_at=time.monotonic(), refused=False)
        stats = budget.statistics()
        assert (stats.rate, stats.ceiling, stats.sent, stats.refused) == (30.0, 30.0, 1, 0)
