"""The query-rate controller on synthetic refusal traces, and the client under random 429s."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest
from helpers import client_for, req
from hypothesis import given, settings
from hypothesis import strategies as st

from shortwan import PollPolicy
from shortwan._rate import RateController, RateLimiter
from shortwan.testing import FakeShortAPI, Fault, JobPlan, set_testing

# A service answers a query sent at ``now`` with None (accepted) or a Retry-After (refused).
Service = Callable[[float], "float | None"]


# The client test's time scale: jobs of about 90 s run in 1.5 s, and the policy with them.
SCALE = 60.0


def lognormal(args: Mapping[str, Any]) -> JobPlan:
    """Plan a job of lognormal length (median 90 s, sigma 0.5, scaled), the same for a prompt."""
    seed = int.from_bytes(hashlib.sha256(str(args.get("prompt", "")).encode()).digest()[:8], "big")
    return JobPlan(run_time=90.0 * math.exp(random.Random(seed).gauss(0.0, 0.5)) / SCALE)


def random_refusals(share: float, retry_after: float, seed: int) -> Service:
    """Refuse ``share`` of the queries at random, whatever the rate: an upstream under load."""
    rng = random.Random(seed)
    return lambda _now: retry_after if rng.random() < share else None


def token_bucket(
    rate: float, *, burst: float | None = None, whole_seconds: bool = False
) -> Service:
    """Accept ``rate`` queries a second (``burst`` at once); refuse the rest with the time until
    the next token, exact or rounded up to whole seconds."""
    capacity = burst if burst is not None else max(1.0, rate / 10)
    state = {"tokens": capacity, "at": 0.0}

    def ask(now: float) -> float | None:
        state["tokens"] = min(capacity, state["tokens"] + (now - state["at"]) * rate)
        state["at"] = now
        if state["tokens"] >= 1.0:
            state["tokens"] -= 1.0
            return None
        wait = (1.0 - state["tokens"]) / rate
        return float(math.ceil(wait)) if whole_seconds else wait

    return ask


class Run:
    """What a simulated client saw: rates sampled at every send, answers, refusals."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.accepted: list[float] = []
        self.refused: list[float] = []
        self.end = 0.0

    def mean_rate(self, start: float = 0.0) -> float:
        """Time-weighted mean of the rate in force from ``start`` to the end."""
        points = [(t, r) for t, r in self.samples if t >= start]
        total = sum(r * (t2 - t1) for (t1, r), (t2, _) in itertools.pairwise(points))
        return total / (points[-1][0] - points[0][0])

    def accepted_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.accepted if start <= t < end)


def simulate(
    service: Service,
    controller: RateController,
    *,
    seconds: float,
    start: float = 0.0,
    latency: float = 0.002,
    in_flight: int = 16,
) -> Run:
    """Drive ``controller`` with a client that always has queries to send, on a virtual clock.

    Queries leave evenly spaced at the rate in force, never during a pause, at most
    ``in_flight`` at once. (A refused query waits for its Retry-After before it is asked again,
    but with queries always waiting, that changes nothing about the rate.)
    """
    run = Run()
    answers: list[tuple[float, int, float, float | None]] = []
    now, next_send, seq, flying = start, start, 0, 0
    while now < start + seconds:
        send_at = max(next_send, controller.paused_until, now) if flying < in_flight else math.inf
        answer_at = answers[0][0] if answers else math.inf
        if answer_at <= send_at:
            now, _, sent_at, retry_after = heapq.heappop(answers)
            flying -= 1
            refused = retry_after is not None
            controller.observe(sent_at=sent_at, now=now, refused=refused, retry_after=retry_after)
            (run.refused if refused else run.accepted).append(now)
            continue
        now = send_at
        rate = controller.rate(now)
        run.samples.append((now, rate))
        next_send = now + 1.0 / rate
        heapq.heappush(answers, (now + latency, seq, now, service(now)))
        seq += 1
        flying += 1
    run.end = now
    return run


class TestRandomRefusals:
    @pytest.mark.parametrize("share", [0.02, 0.05, 0.10, 0.20])
    @pytest.mark.parametrize("seed", range(5))
    @pytest.mark.parametrize("latency", [0.002, 0.2])
    def test_noise_costs_its_share_never_a_collapse(
        self, share: float, seed: int, latency: float
    ) -> None:
        """Random 429s at 2-20 % keep the rate at or above 0.8 × (1 − p) × the ceiling on
        average, and never below half of that."""
        ceiling = 100.0
        controller = RateController(ceiling)
        run = simulate(
            random_refusals(share, 1.0, seed), controller, seconds=60, latency=latency, in_flight=64
        )
        floor = 0.8 * (1 - share) * ceiling
        assert run.mean_rate() >= floor, controller.statistics(run.end)
        assert min(rate for _, rate in run.samples) >= floor / 2
        # What was accepted matches: noise costs throughput in proportion, nothing more.
        assert len(run.accepted) / run.end >= 0.8 * (1 - share) ** 2 * ceiling

    def test_noise_is_learned(self) -> None:
        """After a cut that did not lower the share of refusals, the share is taken as noise."""
        controller = RateController(100.0)
        simulate(random_refusals(0.1, 1.0, 3), controller, seconds=30)
        stats = controller.statistics(30.0)
        assert stats.undone >= 1
        assert 0.05 <= stats.noise <= 0.2
        assert stats.limit is None


class TestHardLimit:
    @pytest.mark.parametrize("over", [2.0, 15.0, 100.0])
    @pytest.mark.parametrize("whole_seconds", [False, True])
    @pytest.mark.parametrize("latency", [0.002, 0.2])
    def test_a_limit_is_found_and_held(
        self, over: float, whole_seconds: bool, latency: float
    ) -> None:
        """A limit far below the ceiling is approached to within 10 % in bounded time, then
        held: few refusals, and the service kept busy, however long the answers take."""
        limit = 40.0
        controller = RateController(over * limit)
        bucket = token_bucket(limit, whole_seconds=whole_seconds)
        run = simulate(bucket, controller, seconds=90, latency=latency)
        settle = 10.0
        assert abs(run.mean_rate(settle) - limit) <= 0.1 * limit
        assert max(rate for t, rate in run.samples if t >= settle) <= 1.15 * limit
        late_refused = sum(1 for t in run.refused if t >= settle)
        late_accepted = run.accepted_between(settle, run.end)
        assert late_refused <= 0.03 * (late_accepted + late_refused)
        assert late_accepted >= 0.85 * limit * (run.end - settle)
        stats = controller.statistics(run.end)
        assert stats.limit is not None
        assert abs(stats.limit - limit) <= 0.15 * limit

    def test_the_pause_is_once_not_a_lasting_cut(self) -> None:
        """A storm of refusals pauses the client once for the Retry-After, and the rate after the
        pause is the one in force, not a slower one made of the pause."""
        controller = RateController(600.0)
        run = simulate(token_bucket(40.0, whole_seconds=True), controller, seconds=30)
        stats = controller.statistics(run.end)
        assert stats.pauses == 1
        assert run.accepted_between(5, 30) >= 0.9 * 40 * 25

    def test_noise_that_goes_away_is_forgotten(self) -> None:
        """A noise learned once fades when the refusals stop, so a later limit is seen early:
        within 10 s of a 40/s limit, the limit learned is within 10 % of it."""
        controller = RateController(100.0)
        simulate(random_refusals(0.1, 1.0, 3), controller, seconds=20)
        assert controller.statistics(20.0).noise > 0.05
        run = simulate(random_refusals(0.0, 1.0, 0), controller, seconds=60, start=20.0)
        assert controller.statistics(run.end).noise == 0.0
        run = simulate(token_bucket(40.0), controller, seconds=10, start=run.end)
        learned = controller.statistics(run.end).limit
        assert learned is not None
        assert abs(learned - 40.0) <= 0.1 * 40.0

    def test_a_lifted_limit_is_left_behind(self) -> None:
        """When the service's limit goes away, the rate climbs back to the ceiling."""
        controller = RateController(200.0)
        limited = token_bucket(20.0)
        calm = random_refusals(0.0, 1.0, 0)
        run = simulate(limited, controller, seconds=20)
        assert controller.rate(run.end) < 30
        run = simulate(calm, controller, seconds=200, start=run.end)
        assert controller.rate(run.end) == 200.0


@st.composite
def traces(draw: st.DrawFn) -> list[tuple[float, float, bool, float | None]]:
    """Arbitrary answers: (time since the last, how long ago it was sent, refused, Retry-After)."""
    answer = st.tuples(
        st.floats(0, 5, allow_nan=False),
        st.floats(0, 10, allow_nan=False),
        st.booleans(),
        st.one_of(st.none(), st.floats(0, 60, allow_nan=False)),
    )
    return draw(st.lists(answer, max_size=400))


class TestBounds:
    @settings(max_examples=200, deadline=None)
    @given(ceiling=st.floats(0.01, 1e5), trace=traces())
    def test_rate_and_pause_stay_bounded(
        self, ceiling: float, trace: list[tuple[float, float, bool, float | None]]
    ) -> None:
        """Whatever the answers, the rate stays within [floor, ceiling] and no pause is longer
        than the longest Retry-After given."""
        controller = RateController(ceiling)
        now = 0.0
        longest = 0.0
        for gap, age, refused, retry_after in trace:
            now += gap
            controller.observe(sent_at=now - age, now=now, refused=refused, retry_after=retry_after)
            if refused and retry_after is not None:
                longest = max(longest, retry_after)
            rate = controller.rate(now)
            assert controller.floor <= rate <= ceiling
            assert math.isfinite(rate)
            assert controller.paused_until - now <= longest + 1e-9
            stats = controller.statistics(now)
            assert 0.0 <= stats.refusal_share <= 1.0
            assert 0.0 <= stats.noise <= 0.5


class TestClient:
    @pytest.mark.slow
    @pytest.mark.anyio
    async def test_random_429s_do_not_stall_a_batch(self) -> None:
        """With 8 % of queries refused at random, 150 jobs are seen ending about as soon as
        without: the median lag stays within 1.5x (+5 % of a job). The old limiter, which
        widened its gap at every 429, lagged 4.7x on this very run."""
        set_testing(False)  # the Retry-After waits are the point here
        default = PollPolicy()
        poll = attrs.evolve(
            default,
            min_interval=default.min_interval / SCALE,
            max_interval=default.max_interval / SCALE,
            prior_seconds_per_video_second=default.prior_seconds_per_video_second / SCALE,
            max_queries_per_second=default.max_queries_per_second * SCALE,
        )
        lags = []
        for share in (0.0, 0.08):
            faults = {"query": {Fault.RATE_LIMIT: share}}
            async with (
                FakeShortAPI(
                    plan=lognormal, retry_after=f"{1 / SCALE:.4f}", fault_rates=faults, seed=5
                ) as fake,
                client_for(fake, poll=poll) as client,
            ):
                seen: dict[str, float] = {}
                reqs = [req(f"job {i}") for i in range(150)]
                async for out in client.generate_many(reqs, concurrency=150, timeout=30):
                    assert out.ok, out.error
                    assert out.job_id is not None
                    seen[out.job_id] = time.monotonic()
                jobs = fake.jobs
            lags.append(
                statistics.median(
                    (at - jobs[j].run_end) / (jobs[j].run_end - jobs[j].created_at)
                    for j, at in seen.items()
                )
            )
        assert fake.stats.faults["query:RATE_LIMIT"] > 0
        assert lags[1] <= 1.5 * lags[0] + 0.05, lags

    @pytest.mark.anyio
    async def test_retries_go_through_the_budget(self) -> None:
        """A refused query is retried through the rate limiter, so the budget hears of every
        attempt: the refusal and the answer after it."""
        async with FakeShortAPI() as fake, client_for(fake) as client:
            job_id = fake.add_jobs(1)[0]
            fake.script("query", [Fault.RATE_LIMIT])
            await client.get_job(job_id)
            stats = client.statistics().rate
        assert (stats.sent, stats.refused) == (2, 1)

    @pytest.mark.anyio
    async def test_refused_creates_pause_creates_not_the_query_rate(self) -> None:
        """429s on creates pause creates for their Retry-After and leave the query rate alone."""
        set_testing(False)
        async with (
            FakeShortAPI(run_time=0.05, retry_after="0.2") as fake,
            client_for(fake) as client,
        ):
            fake.script("create", [Fault.RATE_LIMIT])
            started = time.monotonic()
            job = await client.submit(req())
            waited = time.monotonic() - started
            await job.result(timeout=10)
            stats = client.statistics().rate
        assert waited >= 0.2
        assert stats.refused == 0
        assert stats.rate == stats.ceiling


class TestLimiter:
    @pytest.mark.anyio
    async def test_a_cut_respaces_queries_already_waiting(self) -> None:
        """Queries waiting for slots planned at the old rate line up again at the new one: nine
        queries asleep when the rate is cut take eight gaps at the new rate, not the old."""
        limiter = RateLimiter(1000.0)
        done: list[float] = []

        async def query() -> None:
            await limiter.acquire()
            done.append(time.monotonic())

        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(query)
            with anyio.fail_after(1):
                while limiter.controller.waiting < 9:
                    await anyio.lowlevel.checkpoint()
            assert len(done) == 1
            cut_at = time.monotonic()
            for _ in range(8):
                limiter.observe(sent_at=cut_at, refused=True, retry_after=0.0)
            rate = limiter.rate
            assert rate < 1000.0
        assert len(done) == 10
        assert max(done) - cut_at >= 8 / rate - 0.005
        started = time.monotonic()
        for _ in range(3):
            await limiter.acquire()
        assert time.monotonic() - started >= 2 / limiter.rate - 0.005

    @pytest.mark.anyio
    async def test_a_query_that_leaves_gives_its_slot_back(self) -> None:
        """A waiter cancelled before its slot (its deadline passed) leaves that slot to the next
        query, which then waits one gap, not two."""
        limiter = RateLimiter(4.0)
        await limiter.acquire()  # the first slot is now; the next is 0.25 s away
        with anyio.move_on_after(0.05):
            await limiter.acquire()
        started = time.monotonic()
        await limiter.acquire()
        waited = time.monotonic() - started
        assert waited <= 0.25 - 0.05 + 0.05, waited  # the freed slot, about 0.2 s away
        assert waited >= 0.15, waited
