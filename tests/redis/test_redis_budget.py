"""The shared query budget: one rate, one pause and one slot queue for every process."""

from __future__ import annotations

import logging
import time

import anyio
import pytest
from redis_harness import RedisServer

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
            warnings = [r for r in caplog.records if "paced locally" in r.getMessage()]
            assert len(warnings) == 1
            restartable_redis.start()
            with anyio.fail_after(15):
                while not state.online:
                    await anyio.sleep(0.05)
                await budget.acquire()
            assert any("shared again" in r.getMessage() for r in caplog.records)


class TestStatistics:
    async def test_the_snapshot_is_the_controllers(self, shared: SharedState) -> None:
        """statistics() shows the shared rate in force, the ceiling and the answers seen here."""
        budget = shared.query_budget(30.0)
        await budget.acquire()
        budget.observe(sent_at=time.monotonic(), refused=False)
        stats = budget.statistics()
        assert (stats.rate, stats.ceiling, stats.sent, stats.refused) == (30.0, 30.0, 1, 0)
