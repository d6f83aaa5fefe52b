"""The job table, the spend budget and the poller's schedule, without a server."""

from __future__ import annotations

import math
import time
from decimal import Decimal

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shortwan import (
    ImageToVideo,
    JobSnapshot,
    JobState,
    JobStatus,
    JobTable,
    PollPolicy,
    SpendBudget,
)
from shortwan._poller import DurationModel
from shortwan._rate import RateLimiter
from shortwan._table import JobRecord, state_for

URL = "https://example.com/a.png"


def record(job_id: str = "j1", *, amount: str | None = "0.425", **kwargs: object) -> JobRecord:
    return JobRecord(
        id=job_id,
        request=ImageToVideo(first_frame_image=URL),
        amount=None if amount is None else Decimal(amount),
        state=JobState.QUEUED,
        **kwargs,  # type: ignore[arg-type]
    )


def snapshot(raw: int, **kwargs: object) -> JobSnapshot:
    return JobSnapshot(id="j1", status=JobStatus.from_raw(raw), raw_status=raw, **kwargs)  # type: ignore[arg-type]


class TestStates:
    @pytest.mark.parametrize(
        ("raw", "state"),
        [
            (0, JobState.QUEUED),
            (1, JobState.RUNNING),
            (2, JobState.SUCCEEDED),
            (3, JobState.FAILED),
            (4, JobState.FAILED),
            (99, JobState.FAILED),
            (-5, JobState.RUNNING),
        ],
    )
    def test_status_numbers_map_to_states(self, raw: int, state: JobState) -> None:
        """3 and above are failures; an unknown number below keeps the job waiting."""
        assert state_for(raw) is state


class TestJobTable:
    def test_add_counts_and_commits_spend(self) -> None:
        """Adding a job counts it by state and adds its amount to the spend."""
        table = JobTable()
        table.add(record("a"), created=True)
        table.add(record("b", amount="0.85"), created=True)
        assert len(table) == 2
        assert table.counts == {JobState.QUEUED: 2}
        assert table.spent == Decimal("1.275")

    def test_same_id_twice_keeps_one_record(self) -> None:
        """A job id added twice is one record and is charged once."""
        table = JobTable()
        first = table.add(record("a"), created=True)
        second = table.add(record("a"), created=True)
        assert first is second
        assert table.spent == Decimal("0.425")

    def test_finished_job_never_moves_back(self) -> None:
        """A late answer cannot move a finished job back to running."""
        table = JobTable()
        r = table.add(record(), created=True)
        table.transition(r, JobState.SUCCEEDED)
        table.transition(r, JobState.RUNNING)
        assert r.state is JobState.SUCCEEDED
        assert table.counts == {JobState.SUCCEEDED: 1}

    def test_attached_jobs_never_move_the_spend(self) -> None:
        """A job created elsewhere was not paid by this client: its refund is not taken off."""
        table = JobTable()
        r = table.add(record(amount=None))  # attached: not created here
        r.snapshot = snapshot(3, refunded=True)
        table.set_amount(r, Decimal("0.425"))
        table.transition(r, JobState.FAILED)
        assert table.spent == 0
        assert table.refunded == 0

    def test_unknown_charge_counts_as_the_estimate_until_known(self) -> None:
        table = JobTable()
        r = table.add(record(amount=None), created=True)
        assert r.request is not None
        assert table.spent == r.request.estimated_cost
        table.set_amount(r, Decimal("0.5"))
        assert table.spent == Decimal("0.5")

    def test_a_refund_is_taken_off_once(self) -> None:
        table = JobTable()
        r = table.add(record(), created=True)
        r.snapshot = snapshot(3, refunded=True)
        table.transition(r, JobState.FAILED)
        again = table.get(r.id)
        assert again is r
        table.resume(r, JobState.QUEUED)  # a finished job never moves; nothing is counted twice
        table.transition(r, JobState.FAILED)
        assert table.spent == 0
        assert table.refunded == Decimal("0.425")

    def test_refund_subtracted_on_refunded_failure(self) -> None:
        """A failed job that was refunded no longer counts as spent."""
        table = JobTable()
        r = table.add(record(), created=True)
        r.snapshot = snapshot(3, refunded=True)
        table.transition(r, JobState.FAILED)
        assert table.spent == Decimal(0)
        assert table.refunded == Decimal("0.425")

    def test_done_callbacks_run_once_at_the_end(self) -> None:
        """Callbacks run once when the job ends, and at once when added to an ended job."""
        table = JobTable()
        r = table.add(record(), created=True)
        seen: list[JobState] = []
        r.add_done_callback(lambda rec: seen.append(rec.state))
        table.transition(r, JobState.RUNNING)
        assert seen == []
        table.transition(r, JobState.SUCCEEDED)
        r.add_done_callback(lambda rec: seen.append(rec.state))
        assert seen == [JobState.SUCCEEDED, JobState.SUCCEEDED]

    def test_old_finished_records_are_dropped_unfinished_kept(self) -> None:
        """Beyond max_finished, the oldest finished jobs go; unfinished ones never do."""
        table = JobTable(max_finished=2)
        waiting = table.add(record("w"), created=True)
        for i in range(5):
            r = table.add(record(f"f{i}"), created=True)
            table.transition(r, JobState.SUCCEEDED)
        assert "w" in table
        assert [r.id for r in table if r.is_terminal] == ["f3", "f4"]
        assert table.counts == {JobState.QUEUED: 1, JobState.SUCCEEDED: 2}
        assert waiting.state is JobState.QUEUED

    def test_detach_wakes_waiters_and_resume_brings_back(self) -> None:
        """Detaching wakes callbacks; resuming makes the job wait again."""
        table = JobTable()
        r = table.add(record(), created=True)
        woken: list[JobState] = []
        r.add_done_callback(lambda rec: woken.append(rec.state))
        table.detach(r)
        assert woken == [JobState.DETACHED]
        table.resume(r, JobState.QUEUED)
        assert r.state is JobState.QUEUED
        assert [p.id for p in table.pending()] == ["j1"]

    @pytest.mark.anyio
    async def test_event_feed_reports_changes_and_never_blocks(self) -> None:
        """Subscribers see every change; a full buffer drops events instead of blocking."""
        table = JobTable()
        events = table.subscribe(max_buffer=2)
        r = table.add(record(), created=True)
        table.transition(r, JobState.RUNNING)
        table.transition(r, JobState.SUCCEEDED)  # third event: dropped, not blocking
        assert table.events_dropped == 1
        first = await events.receive()
        second = await events.receive()
        assert (first.previous, first.state) == (None, JobState.QUEUED)
        assert (second.previous, second.state) == (JobState.QUEUED, JobState.RUNNING)
        table.close()
        with pytest.raises(anyio.EndOfStream):
            await events.receive()
        events.close()


class TestSpendBudget:
    @settings(max_examples=200, deadline=None)
    @given(
        limit=st.decimals(min_value=0, max_value=50, places=3),
        steps=st.lists(
            st.tuples(
                st.integers(min_value=2, max_value=15),
                st.sampled_from(["settle", "release", "refund", "uncertain"]),
            ),
            max_size=60,
        ),
    )
    @pytest.mark.anyio
    async def test_spent_plus_reserved_never_exceeds_limit(
        self, limit: Decimal, steps: list[tuple[int, str]]
    ) -> None:
        """Whatever mix of creates, failures and refunds, the budget never passes its cap."""
        budget = SpendBudget(limit)
        for duration, fate in steps:
            cost = Decimal("0.085") * duration
            if not await budget.reserve(cost):
                assert budget.spent + budget.reserved + cost > limit
                continue
            if fate == "settle":
                await budget.settle(cost, cost)
            elif fate == "release":
                await budget.release(cost)
            elif fate == "refund":
                await budget.settle(cost, cost)
                await budget.refund(cost)
            assert budget.spent + budget.reserved <= limit
            assert budget.spent >= 0
            assert budget.reserved >= 0


class TestDurationModel:
    def test_prior_scales_with_duration_and_resolution(self) -> None:
        """Before learning, a 1080p job is expected to run longer than an equal 720p one."""
        model = DurationModel(PollPolicy(prior_seconds_per_video_second=10, resolution_factor=2))
        short = ImageToVideo(first_frame_image=URL, duration=2, resolution="720p")
        long = ImageToVideo(first_frame_image=URL, duration=2, resolution="1080p")
        assert model.expected(short) == pytest.approx(20)
        assert model.expected(long) == pytest.approx(40)
        assert model.expected(None) == 0

    @pytest.mark.parametrize("asked_before_answer", [None, 6.0])
    def test_learns_from_server_timestamps(self, asked_before_answer: float | None) -> None:
        """Jobs whose answers carry start and end times move the estimate toward them, also
        when the query was asked for 6 s before its answer came (it waited for the budget):
        the plausibility check counts up to the answer."""
        model = DurationModel(PollPolicy(prior_seconds_per_video_second=100, resolution_factor=1))
        request = ImageToVideo(first_frame_image=URL, duration=5, resolution="720p")
        now = time.monotonic()
        asked_at = None if asked_before_answer is None else now - asked_before_answer
        for _ in range(30):
            r = JobRecord(
                id="x",
                request=request,
                amount=None,
                state=JobState.SUCCEEDED,
                submitted_at=now - 11,
            )
            r.snapshot = snapshot(
                2, created_at="2026-01-01T00:00:00Z", finished_at="2026-01-01T00:00:10Z"
            )
            model.observe(r, now, asked_at=asked_at)
        assert model.expected(request) == pytest.approx(10, rel=0.05)


class TestRateLimiter:
    @pytest.mark.anyio
    async def test_spaces_acquisitions_evenly(self) -> None:
        """Twenty acquisitions at 200 per second take about a tenth of a second, never less."""
        limiter = RateLimiter(200)
        start = time.monotonic()
        for _ in range(21):
            await limiter.acquire()
        elapsed = time.monotonic() - start
        assert elapsed >= 20 / 200 - 0.005
        assert math.isfinite(elapsed)
