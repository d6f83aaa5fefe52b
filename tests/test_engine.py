"""The job engine against FakeShortAPI: waiting, polling, bulk runs, spend, cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import anyio
import anyio.lowlevel
import pytest
from helpers import client_for, req
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shortwan import (
    AsyncShortWan,
    ConfigurationError,
    ImageToVideo,
    InvalidRequestError,
    JobDetachedError,
    JobFailedError,
    JobState,
    JobTimeoutError,
    PollPolicy,
    SpendLimitError,
    SubmissionUncertainError,
)
from shortwan.testing import FakeShortAPI, Fault, set_testing


def reqs(n: int, tag: str = "p") -> list[ImageToVideo]:
    return [req(f"{tag} {i}", duration=2 + i % 14) for i in range(n)]


@pytest.fixture
async def fake() -> AsyncIterator[FakeShortAPI]:
    async with FakeShortAPI(run_time=0.1) as server:
        yield server


class TestWaiting:
    @pytest.mark.anyio
    async def test_generate_returns_the_video(self, fake: FakeShortAPI) -> None:
        """generate submits, waits and returns the video of the job it created."""
        async with client_for(fake) as client:
            video = await client.generate(req(), timeout=10)
        assert video.job_id in fake.jobs
        assert video.url.startswith(fake.url)

    @pytest.mark.anyio
    async def test_failed_job_raises_with_reason_and_refund(self) -> None:
        """A failed job raises JobFailedError with its id, reason and refund flag."""
        async with FakeShortAPI(run_time=0, failure_rate=1.0) as fake, client_for(fake) as client:
            job = await client.submit(req())
            with pytest.raises(JobFailedError) as info:
                await job.result(timeout=10)
            assert client.jobs.spent == 0
        assert info.value.job_id == job.id
        assert info.value.refunded is True
        assert info.value.reason

    @pytest.mark.anyio
    async def test_timeout_names_job_and_it_can_be_awaited_again(self) -> None:
        """A local timeout names the job, keeps it tracked, and a second wait gets the video."""
        async with FakeShortAPI(run_time=0.6) as fake, client_for(fake) as client:
            job = await client.submit(req())
            with pytest.raises(JobTimeoutError) as info:
                await job.result(timeout=0.05)
            assert info.value.job_id == job.id
            assert isinstance(info.value, TimeoutError)
            assert client.jobs.get(job.id) is not None
            video = await job.result(timeout=10)
        assert video.job_id == job.id

    @pytest.mark.anyio
    async def test_attach_collects_a_job_made_elsewhere(self, fake: FakeShortAPI) -> None:
        """A job created by one client is collected by id alone from another."""
        async with client_for(fake) as first:
            job = await first.submit(req())
        async with client_for(fake) as second:
            video = await second.attach(job.id).result(timeout=10)
        assert video.job_id == job.id
        assert fake.stats.jobs_created == 1

    @pytest.mark.anyio
    async def test_closing_while_waiting_detaches(self) -> None:
        """Closing the client wakes a waiter with JobDetachedError naming the job."""
        async with FakeShortAPI(run_time=30) as fake:
            client = client_for(fake)
            job = await client.submit(req())
            errors: list[BaseException] = []

            async def wait() -> None:
                try:
                    await job.result(timeout=20)
                except JobDetachedError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.sleep(0.05)
                await client.aclose()
        assert len(errors) == 1
        assert job.id in str(errors[0])


class TestPoller:
    @pytest.mark.anyio
    async def test_no_query_after_a_job_ended_and_each_confirmed(self) -> None:
        """Every job is asked about after it ended exactly once, and never again."""
        async with FakeShortAPI(run_time=0.15, jitter=0.5) as fake, client_for(fake) as client:
            outcomes = await client.gather(reqs(60), concurrency=60)
            assert all(o.ok for o in outcomes)
            await anyio.sleep(0.3)  # would catch a stray query scheduled after the end
        assert sum(fake.stats.queries_after_terminal.values()) == 0
        for job_id in fake.jobs:
            assert fake.stats.queries_by_job[job_id] >= 1

    @pytest.mark.anyio
    async def test_query_rate_stays_under_the_ceiling(self) -> None:
        """However many jobs wait, queries go out no faster than max_queries_per_second."""
        poll = PollPolicy(
            min_interval=0.01,
            max_interval=0.05,
            prior_seconds_per_video_second=0.001,
            max_queries_per_second=100,
        )
        async with FakeShortAPI(run_time=0.5) as fake, client_for(fake, poll=poll) as client:
            started = time.monotonic()
            await client.gather(reqs(40), concurrency=40)
            elapsed = time.monotonic() - started
        assert fake.stats.queries <= 100 * elapsed + 2

    @pytest.mark.anyio
    async def test_a_429_pauses_all_polling(self) -> None:
        """After a 429 with Retry-After, no query is sent until the pause is over."""
        set_testing(False)  # this test is about the real wait
        async with (
            FakeShortAPI(run_time=0.05, retry_after="0.3") as fake,
            client_for(fake) as client,
        ):
            job = await client.submit(req())
            fake.script("query", [Fault.RATE_LIMIT])
            started = time.monotonic()
            await job.result(timeout=10)
            elapsed = time.monotonic() - started
        assert fake.stats.faults["query:RATE_LIMIT"] == 1
        assert elapsed >= 0.3

    @pytest.mark.anyio
    async def test_rate_limited_queries_never_fail_a_job(self) -> None:
        """A ceiling set above the service's limit costs 429s and time, never a job."""
        poll = PollPolicy(
            min_interval=0.01,
            max_interval=0.05,
            prior_seconds_per_video_second=0.001,
            max_queries_per_second=400,
        )
        async with (
            FakeShortAPI(run_time=0, query_rate_limit=50) as fake,
            client_for(fake, poll=poll) as client,
        ):
            outcomes = await client.gather(reqs(40), concurrency=40)
        assert fake.stats.rate_limited > 0
        assert all(o.ok for o in outcomes)

    @pytest.mark.anyio
    async def test_a_slow_answer_does_not_teach_a_longer_running_time(self) -> None:
        """A job found done ran for less than the time to the query that found it: the answer's
        way back (0.3 s here) is no part of it, so the estimate learns a job done at once."""
        poll = PollPolicy(min_interval=0.01, max_interval=0.05, prior_seconds_per_video_second=1e-3)
        async with (
            FakeShortAPI(run_time=0, slow_delay=0.3) as fake,
            client_for(fake, poll=poll) as client,
        ):
            fake.script("query", [Fault.SLOW_AFTER])
            started = time.monotonic()
            await client.generate(req(duration=5))
            waited = time.monotonic() - started
            learned = client.statistics().polling.seconds_per_video_second
        assert waited >= 0.3  # the answer did come late
        # From the answer's time it would be 0.6 x 0.3 s over 5 s of video, averaged in log
        # space with the prior at half weight: about 0.006; from the query's own time, ~0.001.
        assert learned < 0.002

    @pytest.mark.anyio
    async def test_learns_a_faster_first_query(self) -> None:
        """After jobs finish, the first query of a new job comes near its expected end."""
        poll = PollPolicy(min_interval=0.01, max_interval=1, prior_seconds_per_video_second=0.2)
        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake, poll=poll) as client:
            learn = [req(f"learn {i}", duration=2) for i in range(20)]
            await client.gather(learn, concurrency=20)
            expected = client._engine.poller.model.expected(req(duration=5))
        # The prior said 1.5 s for a 5 s 1080p video; the jobs took 0.05 s.
        assert expected < 0.5


class TestBulk:
    @pytest.mark.anyio
    async def test_thousand_instant_jobs_all_resolve(self) -> None:
        """1,000 instant jobs through generate_many: one outcome each, all videos."""
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            seen = [o async for o in client.generate_many(reqs(1000), concurrency=64)]
        assert sorted(o.index for o in seen) == list(range(1000))
        assert all(o.ok for o in seen)
        assert fake.stats.jobs_created == 1000
        assert max(fake.stats.jobs_by_prompt.values()) == 1

    @pytest.mark.anyio
    async def test_failures_do_not_stop_the_rest(self) -> None:
        """Invalid items, failed jobs and uncertain creates each get their own outcome."""
        async with (
            FakeShortAPI(run_time=0, failure_rate=0.3, seed=3) as fake,
            client_for(fake) as client,
        ):
            fake.script("create", [None, Fault.RESET_AFTER])
            items: list[object] = [*reqs(20), {"prompt": "no image"}, {"duration": 3, "x": 1}]
            outcomes = await client.gather(items, concurrency=8)  # type: ignore[arg-type]
        assert [o.index for o in outcomes] == list(range(22))
        kinds = {type(o.error) for o in outcomes if o.error}
        assert InvalidRequestError in kinds
        assert JobFailedError in kinds
        assert SubmissionUncertainError in kinds
        assert sum(o.ok for o in outcomes) >= 5

    @pytest.mark.anyio
    async def test_input_is_pulled_only_when_a_slot_frees(self, fake: FakeShortAPI) -> None:
        """The input generator is never more than `concurrency` items ahead of the outcomes."""
        pulled = 0
        taken = 0
        worst = 0

        def source() -> Iterator[ImageToVideo]:
            nonlocal pulled
            for i in range(100):
                pulled += 1
                yield req(f"lazy {i}")

        async with client_for(fake) as client:
            async for _ in client.generate_many(source(), concurrency=5):
                taken += 1
                worst = max(worst, pulled - taken)
        assert taken == 100
        assert worst <= 5

    @pytest.mark.anyio
    async def test_async_iterable_input(self, fake: FakeShortAPI) -> None:
        """An async generator works as input."""

        async def source() -> AsyncIterator[ImageToVideo]:
            for i in range(10):
                await anyio.lowlevel.checkpoint()
                yield req(f"async {i}")

        async with client_for(fake) as client:
            outcomes = await client.gather(source(), concurrency=3)
        assert [o.ok for o in outcomes] == [True] * 10

    @pytest.mark.anyio
    async def test_per_job_timeout_in_a_batch(self) -> None:
        """A slow job gets a JobTimeoutError outcome with its id and stays tracked."""
        async with FakeShortAPI(run_time=5) as fake, client_for(fake) as client:
            outcomes = await client.gather(reqs(3), concurrency=3, timeout=0.1)
            assert all(isinstance(o.error, JobTimeoutError) for o in outcomes)
            assert all(o.job_id in fake.jobs for o in outcomes)
            assert client.jobs.counts == {JobState.TIMED_OUT: 3}

    @pytest.mark.anyio
    async def test_breaking_out_stops_admission_and_keeps_jobs(self) -> None:
        """Leaving the loop early sends no more creates; created jobs stay in the table."""
        async with FakeShortAPI(run_time=0.2) as fake, client_for(fake) as client:
            async for _ in client.generate_many(reqs(200), concurrency=10):
                break
            await anyio.sleep(0.1)
            created = fake.stats.jobs_created
            await anyio.sleep(0.2)
            assert fake.stats.jobs_created == created
            assert created <= 11
            assert {r.id for r in client.jobs} == set(fake.jobs)


class TestSpendCap:
    @pytest.mark.anyio
    async def test_cap_stops_admission_with_distinct_error(self) -> None:
        """Requests beyond max_spend are not sent and carry SpendLimitError."""
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            outcomes = await client.gather(
                [req(f"c {i}", duration=10) for i in range(10)], concurrency=4, max_spend="3"
            )
        sent = [o for o in outcomes if o.job_id]
        refused = [o for o in outcomes if isinstance(o.error, SpendLimitError)]
        assert len(sent) == 3
        assert len(refused) == 7
        assert sum(Decimal(j.args["duration"]) for j in fake.jobs.values()) * Decimal(
            "0.085"
        ) <= Decimal(3)

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        durations=st.lists(st.integers(min_value=2, max_value=15), min_size=1, max_size=30),
        cap=st.decimals(min_value=0, max_value=12, places=2),
        failure_rate=st.sampled_from([0.0, 0.5]),
        concurrency=st.integers(min_value=1, max_value=8),
    )
    @pytest.mark.anyio
    async def test_max_spend_is_never_exceeded(
        self, durations: list[int], cap: Decimal, failure_rate: float, concurrency: int
    ) -> None:
        """Whatever the mix, what the fake kept (refunds given back) never passes max_spend."""
        async with (
            FakeShortAPI(run_time=0, failure_rate=failure_rate) as fake,
            client_for(fake) as client,
        ):
            items = [req(f"h {i}", duration=d) for i, d in enumerate(durations)]
            outcomes = await client.gather(items, concurrency=concurrency, max_spend=cap)
        kept = sum((job.amount for job in fake.jobs.values() if job.final_status == 2), Decimal(0))
        assert kept <= cap
        assert client.jobs.spent == kept
        assert len(outcomes) == len(durations)


class TestCancellation:
    @pytest.mark.parametrize("delay", [0.0, 0.01, 0.05, 0.15])
    @pytest.mark.anyio
    async def test_cancelling_a_batch_leaves_nothing_behind(self, delay: float) -> None:
        """Cancelling at any point loses no created job and leaves no task or warning."""
        async with FakeShortAPI(run_time=0.1) as fake:
            async with client_for(fake) as client:
                with anyio.move_on_after(delay):
                    async for _ in client.generate_many(reqs(50), concurrency=10):
                        pass
            # Creates already on the wire finish (shielded) before the client is closed.
            assert {r.id for r in client.jobs} == set(fake.jobs)
            assert all(r.is_terminal or r.state is JobState.DETACHED for r in client.jobs)

    @pytest.mark.anyio
    async def test_cancelled_submit_still_tracks_the_paid_job(self) -> None:
        """A submit cancelled mid-create still records the job it paid for."""
        async with FakeShortAPI(run_time=0, slow_delay=0.3) as fake, client_for(fake) as client:
            fake.script("create", [Fault.SLOW_AFTER])
            with anyio.move_on_after(0.05) as scope:
                await client.submit(req())
            assert scope.cancelled_caught
            assert len(fake.jobs) == 1
            assert set(fake.jobs) == {r.id for r in client.jobs}


class TestArguments:
    @pytest.mark.parametrize("cap", ["lots", "-1", "NaN", True])
    @pytest.mark.anyio
    async def test_bad_max_spend_refused_before_anything_is_sent(self, cap: object) -> None:
        """A spend cap that is not a finite amount >= 0 is refused with nothing sent."""
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            with pytest.raises(InvalidRequestError, match="max_spend"):
                await client.gather(reqs(2), max_spend=cap)  # type: ignore[arg-type]
        assert fake.stats.creates_received == 0

    @pytest.mark.anyio
    async def test_a_counter_without_limit_and_committed_is_refused(self) -> None:
        """A counter must say its cap and what it holds: a refusal quotes both."""

        class NoFigures:
            async def reserve(self, amount: object) -> bool:
                return False

            async def settle(self, reserved: object, charged: object) -> None: ...
            async def release(self, reserved: object) -> None: ...
            async def refund(self, amount: object) -> None: ...

        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            with pytest.raises(InvalidRequestError, match="max_spend"):
                await client.gather(reqs(2), max_spend=NoFigures())  # type: ignore[arg-type]
        assert fake.stats.creates_received == 0

    @pytest.mark.parametrize("concurrency", [0, -1, True, 2.5])
    @pytest.mark.anyio
    async def test_bad_concurrency_refused(self, concurrency: object) -> None:
        """concurrency must be a whole number of at least 1."""
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            with pytest.raises(ValueError, match="concurrency"):
                await client.gather(reqs(2), concurrency=concurrency)  # type: ignore[arg-type]
        assert fake.stats.creates_received == 0

    @pytest.mark.anyio
    async def test_failing_input_raises_after_admitted_outcomes(self, fake: FakeShortAPI) -> None:
        """An input generator that raises ends the batch with that error, jobs kept."""

        def source() -> Iterator[ImageToVideo]:
            yield req("one")
            raise RuntimeError("bad line 2")

        async with client_for(fake) as client:
            with pytest.raises(RuntimeError, match="bad line 2"):
                await client.gather(source(), concurrency=1)
            assert len(client.jobs) == 1


class TestMaxInFlight:
    @pytest.mark.anyio
    async def test_batches_share_the_client_limit(self) -> None:
        """Two batches on one client never have more jobs running together than max_in_flight."""
        async with FakeShortAPI(run_time=0.15) as fake:
            async with client_for(fake, max_in_flight=3) as client:
                first, second = await asyncio.gather(
                    client.gather(reqs(8, "a"), concurrency=8),
                    client.gather(reqs(8, "b"), concurrency=8),
                )
            spans = sorted((job.created_at, job.run_end) for job in fake.jobs.values())
        assert all(o.ok for o in first + second)
        # A slot frees only once the client has seen its job end, so at most 3 jobs overlap.
        for start, _end in spans:
            overlapping = sum(1 for s, e in spans if s <= start < e)
            assert overlapping <= 3

    @pytest.mark.anyio
    async def test_waiting_for_a_slot_is_cancellable_and_sends_nothing(self) -> None:
        """A submit waiting for a slot can be cancelled; it never reaches the service."""
        async with FakeShortAPI(run_time=5) as fake, client_for(fake, max_in_flight=1) as client:
            await client.submit(req("holds the slot"))
            with anyio.move_on_after(0.2):
                await client.submit(req("waits"))
            assert fake.stats.creates_received == 1

    @pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
    def test_bad_limits_refused(self, bad: object) -> None:
        """max_in_flight must be a positive int."""
        with pytest.raises(ConfigurationError):
            AsyncShortWan("ak-x", base_url="http://127.0.0.1:1", max_in_flight=bad)  # type: ignore[arg-type]
