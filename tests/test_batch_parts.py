"""The rooms of a batch on their own: its options, its waiters, its spend counters, its senders."""

from __future__ import annotations

import inspect
from decimal import Decimal

import anyio
import attrs
import pytest
from helpers import client_for, req

from shortwan import (
    AsyncShortWan,
    JobState,
    Limits,
    SpendBudget,
    SpendLimitError,
    SubmissionUncertainError,
    Timeouts,
)
from shortwan._batch import sender_count
from shortwan._options import BatchOptions
from shortwan._spend import NO_BUDGET
from shortwan._table import JobRecord
from shortwan._waiters import Waiters
from shortwan.testing import FakeShortAPI, Fault


class TestOptions:
    @pytest.mark.parametrize("method", [AsyncShortWan.generate_many, AsyncShortWan.gather])
    def test_the_keywords_of_a_batch_are_the_options(self, method: object) -> None:
        """generate_many and gather take exactly the options' fields, with the same defaults."""
        assert callable(method)
        keywords = {
            name: parameter.default
            for name, parameter in inspect.signature(method).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        }
        defaults = {field.name: field.default for field in attrs.fields(BatchOptions)}
        assert keywords == defaults

    def test_values_are_checked_when_the_options_are_made(self) -> None:
        """A bad concurrency, timeout or cap is refused at once, naming the option."""
        for options, name in (
            ({"concurrency": 0}, "concurrency"),
            ({"timeout": 0}, "timeout"),
            ({"timeout": -1.0}, "timeout"),
            ({"max_spend": "lots"}, "max_spend"),
            ({"max_spend": object()}, "max_spend"),
        ):
            with pytest.raises(ValueError, match=name):
                BatchOptions(**options)  # type: ignore[arg-type]

    def test_amounts_are_read_exactly(self) -> None:
        """A cap given as a float, a string or an int becomes the Decimal it reads as."""
        assert BatchOptions(max_spend=20.1).max_spend == Decimal("20.1")
        assert BatchOptions(max_spend="3.40").max_spend == Decimal("3.40")
        assert BatchOptions(max_spend=7).max_spend == Decimal(7)
        assert BatchOptions(timeout=float("inf")).timeout is None


def record(job_id: str) -> JobRecord:
    """Return the record of a queued job without a request."""
    return JobRecord(id=job_id, request=None, amount=None, state=JobState.QUEUED)


class TestWaiters:
    def test_every_position_on_a_job_is_handed_out_once_at_its_end(self) -> None:
        """Two positions waiting on one job both come out at its end, and only once."""
        ended: list[JobRecord] = []
        waiters: Waiters[str] = Waiters(timeout=None, keep_items=True, on_end=ended.append)
        job = record("j1")
        waiters.add(0, job, "first")
        waiters.add(3, job, "second")
        assert waiters.job_ids == ["j1", "j1"]
        assert sorted(waiters.take_ended(job)) == [(0, "first"), (3, "second")]
        assert waiters.take_ended(job) == []
        assert len(waiters) == 0

    def test_items_are_kept_only_when_asked(self) -> None:
        """Without keep_items the fast path keeps the position and the record alone."""
        waiters: Waiters[str] = Waiters(timeout=None, keep_items=False, on_end=lambda _r: None)
        job = record("j2")
        waiters.add(5, job, "item")
        assert waiters.take_ended(job) == [(5, None)]

    @pytest.mark.anyio
    async def test_a_timed_out_position_is_not_handed_out_again_at_the_job_end(self) -> None:
        """A position handed out by its deadline is gone when its job ends; the others stay."""
        waiters: Waiters[str] = Waiters(timeout=0.01, keep_items=True, on_end=lambda _r: None)
        late, other = record("late"), record("other")
        waiters.add(0, late, "a")
        expired: list[tuple[int, str, str | None]] = []
        async with anyio.create_task_group() as tg:

            def expire(index: int, job: JobRecord, item: str | None) -> None:
                expired.append((index, job.id, item))
                tg.cancel_scope.cancel()

            tg.start_soon(waiters.watch_deadlines, expire)
            with anyio.fail_after(5):
                await anyio.sleep_forever()
        waiters.add(1, other, "b")
        assert expired == [(0, "late", "a")]
        assert waiters.take_ended(late) == []
        assert waiters.job_ids == ["other"]

    def test_clear_forgets_every_position(self) -> None:
        """After clear nothing is waiting and a job's end hands out nothing."""
        waiters: Waiters[str] = Waiters(timeout=60, keep_items=True, on_end=lambda _r: None)
        job = record("j3")
        waiters.add(0, job, "x")
        waiters.clear()
        assert waiters.take_ended(job) == []
        assert waiters.job_ids == []


class CountingCounter:
    """A SpendCounter of its own, as a shared implementation would be: it refuses everything."""

    limit = Decimal("1.5")
    committed = Decimal("1.25")

    async def reserve(self, amount: Decimal) -> bool:
        return False

    async def settle(self, reserved: Decimal, charged: Decimal | None) -> None: ...

    async def release(self, reserved: Decimal) -> None: ...

    async def refund(self, amount: Decimal) -> None: ...


class TestSpend:
    @pytest.mark.anyio
    async def test_committed_is_spent_plus_reserved_and_counts_earlier_spend(self) -> None:
        """What an earlier run spent counts toward the cap, and committed says so."""
        budget = SpendBudget(Decimal(1), spent=Decimal("0.6"))
        assert await budget.reserve(Decimal("0.3"))
        assert budget.committed == Decimal("0.9")
        assert not await budget.reserve(Decimal("0.2"))

    @pytest.mark.anyio
    async def test_no_budget_refuses_nothing(self) -> None:
        """Without a cap every create is allowed, whatever it costs."""
        assert await NO_BUDGET.reserve(Decimal(10) ** 9)

    @pytest.mark.anyio
    async def test_the_cap_error_reads_any_counter(self) -> None:
        """A refusal by any SpendCounter is a SpendLimitError with its limit and committed."""
        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake) as client:
            (outcome,) = await client.gather([req("capped")], max_spend=CountingCounter())
        assert isinstance(outcome.error, SpendLimitError)
        assert outcome.error.limit == Decimal("1.5")
        assert outcome.error.committed == Decimal("1.25")
        assert fake.stats.creates_received == 0


class TestSenders:
    def test_one_sender_per_slot_up_to_the_room_for_creates(self) -> None:
        """Senders follow concurrency, bounded by the room the pool leaves and a hard cap."""
        assert sender_count(200, None) == 200
        assert sender_count(200, 48) == 48
        assert sender_count(8, 48) == 8
        assert sender_count(10**6, None) == 1024
        assert sender_count(5, 0) == 1

    @pytest.mark.parametrize(
        ("limits", "room"),
        [
            (Limits(), 48),  # 64 per host, 16 of them for the poller's queries
            (Limits(max_connections=40, max_connections_per_host=64), 24),
            (Limits(max_connections=400, max_connections_per_host=300), 284),
            (Limits(max_connections=20, max_connections_per_host=20), 10),
        ],
    )
    def test_room_is_what_the_pool_leaves_beside_the_queries(
        self, limits: Limits, room: int
    ) -> None:
        """A batch's creates get the pool's connections the poller cannot use, half at least."""
        client = AsyncShortWan("ak-x", base_url="http://127.0.0.1:9", limits=limits)
        assert client._engine.create_room == room

    @pytest.mark.anyio
    async def test_slow_creates_are_all_out_together(self) -> None:
        """With room in the pool, concurrency=40 has 40 creates at the service before one ends."""
        async with FakeShortAPI(
            run_time=0, fault_rates={"create": {Fault.SLOW_AFTER: 1.0}}, slow_delay=3.0
        ) as fake:
            # Every create answers late; the read timeout makes it end (maybe charged) first.
            timeouts = Timeouts(read=1.0)
            limits = Limits(max_connections=100, max_connections_per_host=100)
            async with client_for(fake, limits=limits, timeouts=timeouts) as client:
                requests = [req(f"slow {i}") for i in range(40)]
                first = None
                async for outcome in client.generate_many(requests, concurrency=40):
                    first = outcome
                    assert isinstance(outcome.error, SubmissionUncertainError)
                    # The first create to end: by then every one of them had reached the service.
                    assert fake.stats.jobs_created == 40
                    break
                assert first is not None
