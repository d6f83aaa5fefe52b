"""The shared token bucket and the per-second counters a shared query budget stands on."""

from __future__ import annotations

import itertools
import time

import anyio
import pytest
from redis_harness import RedisServer, run_child

from shortwan.redis import SharedState, WindowStats

pytestmark = pytest.mark.anyio


class TestBucket:
    async def test_slots_are_evenly_spaced(self, shared: SharedState) -> None:
        """Takes in a row get slots 1/rate apart; the first goes at once."""
        bucket = shared.rate_bucket("even", rate=20.0)
        waits = [await bucket.take() for _ in range(5)]
        assert waits[0] == 0.0
        gaps = [b - a for a, b in itertools.pairwise(waits)]
        # 50 ms apart, less the time between two calls (a few ms on a busy machine).
        assert all(0.038 < gap < 0.051 for gap in gaps), waits

    async def test_burst_after_quiet(self, shared: SharedState) -> None:
        """With burst 3, three takes go at once after a quiet spell, the fourth waits."""
        bucket = shared.rate_bucket("burst", rate=10.0, burst=3)
        waits = [await bucket.take() for _ in range(4)]
        assert waits[:3] == [0.0, 0.0, 0.0]
        assert 0.075 < waits[3] <= 0.1  # 100 ms, less the time the four calls took

    async def test_rate_is_shared_and_settable(self, shared: SharedState) -> None:
        """set_rate changes the spacing every holder of the bucket sees."""
        first = shared.rate_bucket("set", rate=100.0)
        second = shared.rate_bucket("set", rate=1000.0)  # the shared rate wins once set
        await first.take()
        # Spaced at 100 a second (10 ms, less the time between the two calls), not at 1,000.
        assert 0.005 < await second.take() <= 0.0101
        await second.set_rate(2.0)
        state = await first.state()
        assert state.rate == 2.0
        before = await first.take()
        after = await first.take()
        assert 0.48 < after - before <= 0.501
        with pytest.raises(ValueError, match="rate"):
            await first.set_rate(0)

    async def test_pause_only_extends_and_is_capped(self, shared: SharedState) -> None:
        """A shorter pause never cuts a longer one, a pause is capped, and slots wait for it."""
        bucket = shared.rate_bucket("pause", rate=50.0, max_pause=2.0)
        assert 0.99 < await bucket.pause(1.0) <= 1.0
        assert 0.9 < await bucket.pause(0.1) <= 1.0  # not shortened
        assert 1.9 < await bucket.pause(30.0) <= 2.0  # capped
        first = await bucket.take()
        second = await bucket.take()
        assert 1.9 < first <= 2.0
        # Spaced after the pause (20 ms, less the time between the two calls), not a burst.
        assert 0.012 < second - first < 0.021
        state = await bucket.state()
        assert 1.8 < state.paused_for <= 2.0
        assert state.backlog > state.paused_for


class TestCounters:
    async def test_sums_whole_seconds(self, shared: SharedState) -> None:
        """Counts land in the server's current second and are summed once it is over."""
        counters = shared.window_counters("q", horizon=10)
        seconds, micros = await shared.redis.time()
        if micros > 800_000:
            await anyio.sleep(0.25)  # stay inside one second
        await counters.add(sent=10)
        await counters.add(sent=5, refused=2)
        assert await counters.read(2) == WindowStats(seconds=2, sent=0, refused=0)
        await anyio.sleep(1.05)
        stats = await counters.read(2)
        assert (stats.sent, stats.refused) == (15, 2)
        assert stats.refusal_share == pytest.approx(2 / 15)
        assert stats.accepted_rate == pytest.approx(13 / 2)
        key = f"{shared.namespace}:counts:q:{seconds + (micros > 800_000)}"
        assert 0 < await shared.redis.ttl(key) <= 12
        with pytest.raises(ValueError, match="horizon"):
            await counters.read(11)


@pytest.mark.slow
@pytest.mark.parametrize("rate", [40.0, 200.0])
async def test_four_processes_share_one_rate(
    redis_server: RedisServer, namespace: str, rate: float
) -> None:
    """4 processes taking from one bucket as fast as it lets them send at the set rate, together."""
    seconds = 4.0
    start = time.time() + 2.5  # every process is connected by then
    options = {"rate": rate, "seconds": seconds, "start": start}
    stamps: list[float] = []

    async def worker() -> None:
        [line] = await run_child("bucket", redis_server.url, namespace, options)
        stamps.extend(line["stamps"])

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(worker)
    stamps.sort()
    # Judge the steady middle: from the first send after the start to the last before the end.
    inside = [s for s in stamps if start + 0.5 <= s <= start + seconds - 0.5]
    measured = (len(inside) - 1) / (inside[-1] - inside[0])
    print(f"4 processes, set rate {rate}/s: {measured:.2f}/s over {len(inside)} sends")
    assert abs(measured - rate) / rate < 0.03
    total = len(stamps) / seconds
    assert abs(total - rate) / rate < 0.05
