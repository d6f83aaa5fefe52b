"""AsyncShortWan sharing through Redis: the job view, polling claims, the shared cap, outages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import anyio
import pytest
from redis_harness import CLIENT_CHILD, Child, RedisServer, child, eventually, run_child

from shortwan import (
    AsyncShortWan,
    ConfigurationError,
    ImageToVideo,
    Job,
    JobStatus,
    Outcome,
    PollPolicy,
    SharedStateError,
    SpendLimitError,
)
from shortwan.redis import SharedState, connect
from shortwan.testing import FakeShortAPI

pytestmark = pytest.mark.anyio

# The fake's time scale; the safety net is far off, so any query a test sees is a real poll.
POLL = {
    "min_interval": 0.05,
    "max_interval": 0.3,
    "prior_seconds_per_video_second": 0.02,
    "max_queries_per_second": 500,
    "max_concurrent_queries": 16,
    "callback_interval": 30.0,
}


def client(fake: FakeShortAPI, shared: SharedState | None) -> AsyncShortWan:
    """Return a client of ``fake`` at the fake's pace, sharing through ``shared``."""
    return AsyncShortWan(fake.api_key, base_url=fake.url, poll=PollPolicy(**POLL), shared=shared)


def options_for(fake: FakeShortAPI, **more: Any) -> dict[str, Any]:
    """Return what a client child needs to reach ``fake``, plus ``more``."""
    return {"api_key": fake.api_key, "base_url": fake.url, "poll": POLL, **more}


def req(prompt: str) -> ImageToVideo:
    """Return a 5 s request ($0.425) with ``prompt``."""
    return ImageToVideo(prompt=prompt, first_frame_image="https://example.com/a.png")


def client_tasks() -> int:
    """Count the tasks of this process that are not the fake serving a connection.

    The fake runs in the test's process and opens a handler task for each connection another
    process makes to it, so those come and go with the other process's polling.
    """
    return sum(
        1
        for task in asyncio.all_tasks()
        if not task.get_coro().__qualname__.startswith("RequestHandler.")
    )


async def test_a_closed_or_unreachable_state_is_refused(
    restartable_redis: RedisServer, namespace: str
) -> None:
    """A client refuses a closed shared state, or one whose server is gone, before sending."""
    async with FakeShortAPI(run_time=0) as fake:
        state = await connect(restartable_redis.url, namespace=namespace)
        await state.aclose()
        with pytest.raises(ConfigurationError, match="closed"):
            client(fake, state)
        state = await connect(restartable_redis.url, namespace=namespace)
        try:
            restartable_redis.stop()
            with pytest.raises(SharedStateError):
                await state.jobs.get("abc123")  # the state learns that its server is gone
            with pytest.raises(ConfigurationError, match="cannot reach"):
                client(fake, state)
        finally:
            await state.aclose()
        assert fake.stats.creates_received == 0


class TestJobView:
    async def test_attach_and_get_job_resolve_from_another_process(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """Process A creates and polls; B attaches by id and gets every video with no query."""
        async with FakeShortAPI(run_time=0.3) as fake:
            prompts = [f"view {i}" for i in range(5)]
            lines = await run_child(
                "create",
                redis_server.url,
                namespace,
                options_for(fake, prompts=prompts),
                script=CLIENT_CHILD,
            )
            created = [line["created"] for line in lines if "created" in line]
            urls = {line["done"]: line["url"] for line in lines if "done" in line}
            assert len(created) == 5
            asked = dict(fake.stats.queries_by_job)
            async with (
                await connect(redis_server.url, namespace=namespace) as shared,
                client(fake, shared) as b,
            ):
                videos = [await b.attach(job_id).result(timeout=10) for job_id in created]
                snapshot = await b.get_job(created[0])
                stats = b.statistics()
            assert dict(fake.stats.queries_by_job) == asked  # not one more, get_job included
        assert {video.job_id: video.url for video in videos} == urls
        assert snapshot.status is JobStatus.SUCCEEDED
        assert snapshot.urls[0] == urls[created[0]]
        assert snapshot.credit == Decimal("0.425")
        assert stats.polling.queries_sent == 0
        assert stats.shared is not None
        assert stats.shared.from_elsewhere == 5

    async def test_a_wait_resolves_when_the_polling_process_sees_the_end(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """B waits on jobs A polls: each resolves when A publishes its end; B asks nothing, and
        its waits add no task per job."""
        url = redis_server.url
        async with FakeShortAPI(run_time=1.5) as fake:
            options = options_for(fake, prompts=[f"wait {i}" for i in range(12)], linger=True)
            async with child("create", url, namespace, options, script=CLIENT_CHILD) as a:
                ids = [(await a.line())["created"] for _ in range(12)]
                await anyio.sleep(0.2)  # A has claimed its jobs
                async with (
                    await connect(url, namespace=namespace) as shared,
                    client(fake, shared) as b,
                ):
                    jobs = [b.attach(job_id) for job_id in ids[:2]]
                    await eventually(lambda: shared.jobs.watched == 2)
                    tasks = client_tasks()
                    jobs += [b.attach(job_id) for job_id in ids[2:]]
                    await eventually(lambda: shared.jobs.watched == 12)
                    await anyio.sleep(0.1)
                    assert client_tasks() <= tasks + 1  # a look-up at most
                    stats = b.statistics().shared
                    assert stats is not None
                    assert stats.polled_elsewhere == 12
                    videos = [await job.result(timeout=15) for job in jobs]
                    stats_after = b.statistics()
                done = {}
                for _ in ids:
                    line = await a.line()
                    done[line["done"]] = line["url"]
        assert {video.job_id: video.url for video in videos} == done
        assert stats_after.polling.queries_sent == 0
        assert stats_after.shared is not None
        assert stats_after.shared.from_elsewhere == 12

    async def test_two_processes_attached_to_the_same_jobs_ask_about_each_once(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """Two processes attach the same 20 finished jobs at the same instant; their claims and
        the job view make it about one query per job in all, not two."""
        async with FakeShortAPI(run_time=0) as fake:
            ids = fake.add_jobs(20)
            options = options_for(fake, job_ids=ids, start=time.time() + 2.0)
            results: list[list[dict[str, Any]]] = []

            async def attach() -> None:
                results.append(
                    await run_child(
                        "attach", redis_server.url, namespace, options, script=CLIENT_CHILD
                    )
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(attach)
                tg.start_soon(attach)
            asked = sum(fake.stats.queries_by_job[job_id] for job_id in ids)
        finals = [lines[-1] for lines in results]
        assert all(set(final["urls"]) == set(ids) for final in finals)
        assert sum(final["queries"] for final in finals) == asked
        assert asked <= 22  # one per job, give or take a race between look-up and claim

    async def test_the_jobs_of_a_poller_that_dies_are_taken_over(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """When the process polling a job is killed, a process waiting on it takes over."""
        async with left_to_another(redis_server.url, namespace, "orphan") as (a, _, b, jobs):
            a.kill()
            # Without a take-over, the safety net (30 s) would come long after this.
            videos = [await job.result(timeout=15) for job in jobs]
            stats = b.statistics()
        assert [video.job_id for video in videos] == [job.id for job in jobs]
        assert stats.polling.queries_sent >= 3
        assert stats.shared is not None
        assert stats.shared.polled_elsewhere == 0

    async def test_a_state_closed_under_the_client_leaves_it_polling_alone(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """When its shared state is closed, a client polls the jobs it had left to another
        worker itself, and still delivers them."""
        async with left_to_another(redis_server.url, namespace, "alone") as (_, shared, b, jobs):
            await shared.aclose()
            # The safety net (30 s) would come long after this.
            videos = [await job.result(timeout=10) for job in jobs]
            stats = b.statistics()
        assert [video.job_id for video in videos] == [job.id for job in jobs]
        assert stats.polling.queries_sent >= 3
        assert stats.shared is not None
        assert stats.shared.polled_elsewhere == 0


@contextlib.asynccontextmanager
async def left_to_another(
    url: str, namespace: str, tag: str
) -> AsyncIterator[tuple[Child, SharedState, AsyncShortWan, list[Job]]]:
    """Process A creates and polls 3 jobs of 1.5 s (its heartbeat 1 s); here, client B attaches
    them and leaves their polling to A. Yield A, B's state, B and B's jobs."""
    async with FakeShortAPI(run_time=1.5) as fake:
        options = options_for(
            fake, prompts=[f"{tag} {i}" for i in range(3)], heartbeat=1.0, linger=True
        )
        async with child("create", url, namespace, options, script=CLIENT_CHILD) as a:
            ids = [(await a.line())["created"] for _ in range(3)]
            await anyio.sleep(0.2)  # A has claimed its jobs
            async with (
                await connect(url, namespace=namespace, heartbeat=1.0) as shared,
                client(fake, shared) as b,
            ):
                jobs = [b.attach(job_id) for job_id in ids]

                def left() -> bool:
                    stats = b.statistics().shared
                    return stats is not None and stats.polled_elsewhere == 3

                await eventually(left)
                yield a, shared, b, jobs


async def test_four_processes_under_one_cap_never_cross_it(
    redis_server: RedisServer, namespace: str
) -> None:
    """Four processes each run a batch with max_spend on one shared cap: in all, they create
    exactly what the cap allows, and no more."""
    async with FakeShortAPI(run_time=0.05) as fake:
        results: list[dict[str, Any]] = []

        async def batch(n: int) -> None:
            options = options_for(
                fake, prompts=[f"cap {n} {i}" for i in range(8)], max_spend="5.10"
            )
            lines = await run_child(
                "batch", redis_server.url, namespace, options, script=CLIENT_CHILD
            )
            results.append(lines[-1])

        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(batch, n)
        created = [job_id for result in results for job_id in result["created"]]
        assert fake.stats.jobs_created == len(created) == 12  # 12 × $0.425 = $5.10
    assert sum(result["errors"].get("SpendLimitError", 0) for result in results) == 20
    assert all(set(result["errors"]) <= {"SpendLimitError"} for result in results)
    async with await connect(redis_server.url, namespace=namespace) as shared:
        figures = await (await shared.spend_counter(None)).read()
    assert (figures.spent, figures.reserved) == (Decimal("5.1"), 0)


async def test_redis_stopped_mid_batch_then_started_again(
    persistent_redis: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis lost mid-batch: no create during the outage nor past the shared cap, no crash,
    every job created is delivered, and sharing resumes once Redis is back."""
    caplog.set_level(logging.INFO, logger="shortwan")
    url = persistent_redis.url
    async with FakeShortAPI(run_time=0.4) as fake:
        # Another process spends $1.70 of the $4.25 cap first: $2.55 (6 jobs) are left.
        async with await connect(url, namespace=namespace) as state, client(fake, state) as other:
            first = await other.gather([req(f"other {i}") for i in range(4)], max_spend="4.25")
        assert all(outcome.ok for outcome in first)
        theirs = {outcome.job_id for outcome in first}
        creates: dict[str, int] = {}

        async def outage() -> None:
            await eventually(lambda: fake.stats.jobs_created >= 4 + 2)
            persistent_redis.stop()
            await anyio.sleep(0.3)  # creates reserved before the stop have left by now
            creates["outage began"] = fake.stats.creates_received
            await anyio.sleep(1.5)
            creates["outage ended"] = fake.stats.creates_received
            persistent_redis.start()

        async def source() -> Any:
            for i in range(80):
                yield req(f"main {i}")
                await anyio.sleep(0.05)

        outcomes: list[Outcome] = []
        state = await connect(url, namespace=namespace, heartbeat=1.0)
        try:
            async with client(fake, state) as sw, anyio.create_task_group() as tg:
                tg.start_soon(outage)
                async for outcome in sw.generate_many(source(), concurrency=8, max_spend="4.25"):
                    outcomes.append(outcome)
            ours = {job_id for job_id in fake.jobs if job_id not in theirs}
        finally:
            await state.aclose()
        # Jobs already created were delivered, through the outage.
        assert {o.job_id for o in outcomes if o.ok} == ours
        assert len(outcomes) == 80
        # Reservations failed closed while Redis was down, and nothing was sent meanwhile.
        refused = [o for o in outcomes if isinstance(o.error, SharedStateError)]
        assert refused
        assert all(o.job_id is None for o in refused)
        assert creates["outage ended"] == creates["outage began"]
        # The shared cap held across the restart (the batch's own cap alone would allow 10). A
        # reservation granted as the server went down and never answered holds its room for
        # its lease, so the batch may fall one or two jobs short of the 6; it never goes past.
        assert len(ours) <= 6
        assert any(isinstance(o.error, SpendLimitError) for o in outcomes)
        assert fake.stats.creates_received > creates["outage ended"]  # the cap was not latched
    # Sharing resumed: another process finds the end of every job, those that ended during
    # the outage included.
    [seen] = await run_child("ends", url, namespace, {"job_ids": sorted(ours)})
    assert seen["ends"] == dict.fromkeys(ours, "succeeded")
    sharing_warnings = [
        r for r in caplog.records if r.getMessage().startswith("shared state unreachable")
    ]
    assert len(sharing_warnings) == 1  # one for the outage, not one per job


class TestSpend:
    async def test_a_journals_earlier_spend_counts_under_a_shared_cap(
        self, shared: SharedState, tmp_path: Any
    ) -> None:
        """A rerun of a journaled batch under a shared cap counts what its earlier runs spent,
        even when the shared counter never saw it."""
        from shortwan.journal import Journal

        async with FakeShortAPI(run_time=0) as fake:
            async with Journal(tmp_path / "j.sqlite") as journal, client(fake, None) as alone:
                first = await alone.gather(
                    [req(f"journal {i}") for i in range(2)], journal=journal, max_spend="0.85"
                )
            assert all(outcome.ok for outcome in first)
            async with Journal(tmp_path / "j.sqlite") as journal, client(fake, shared) as sw:
                again = await sw.gather(
                    [req(f"journal {i}") for i in range(6)], journal=journal, max_spend="1.70"
                )
            assert fake.stats.jobs_created == 4  # $1.70 in all, the first run's $0.85 included
        assert [o.replayed for o in again[:2]] == [True, True]
        assert sum(isinstance(o.error, SpendLimitError) for o in again) == 2
        figures = await (await shared.spend_counter(None)).read()
        assert figures.spent == Decimal("0.85")  # the shared counter holds this run's spend

    async def test_a_cap_the_shared_counter_refuses_gives_back_the_batchs_own(
        self, shared: SharedState
    ) -> None:
        """When the shared cap is reached first, the batch's own cap gets its room back."""
        from shortwan._spend import BothBudgets, SpendBudget

        own = SpendBudget(Decimal("10"))
        counter = await shared.spend_counter("0.5")
        both = BothBudgets(own, counter)
        assert await both.reserve(Decimal("0.425"))
        assert not await both.reserve(Decimal("0.425"))  # the shared cap is the lower one
        assert (own.reserved, both.limit) == (Decimal("0.425"), Decimal("0.5"))
        await both.settle(Decimal("0.425"), Decimal("0.34"))
        await counter.read()  # the shared settle is applied in the background
        assert (own.spent, own.reserved, both.committed) == (Decimal("0.34"), 0, Decimal("0.34"))
        await both.refund(Decimal("0.34"))
        assert own.spent == 0
        assert (await shared.spend_counter(None)).spent == 0

    async def test_a_counter_the_caller_opens_is_used_as_it_is(
        self, redis_server: RedisServer, shared: SharedState
    ) -> None:
        """A windowed counter passed as max_spend caps the batch, and nothing else is opened."""
        counter = await shared.spend_counter("0.85", name="daily", window="day")
        async with FakeShortAPI(run_time=0) as fake, client(fake, shared) as sw:
            outcomes = await sw.gather([req(f"day {i}") for i in range(3)], max_spend=counter)
        assert [o.ok for o in outcomes].count(True) == 2
        assert counter.spent == Decimal("0.85")
        assert counter.window == "day"
        async with await connect(redis_server.url, namespace=shared.namespace) as other:
            with pytest.raises(ConfigurationError, match="no limit yet"):
                await other.spend_counter(None)  # the default counter was never opened


async def test_a_hung_store_delays_a_create_by_the_claim_wait_at_most(
    restartable_redis: RedisServer, namespace: str
) -> None:
    """A server that stops answering (not gone: its calls hang) holds a create back until its
    claim is written, then at most about a second: the job is handed out, and polled here."""
    server = restartable_redis
    assert server.process is not None
    async with (
        FakeShortAPI(run_time=0.3) as fake,
        await connect(server.url, namespace=namespace, command_timeout=30) as state,
        client(fake, state) as sw,
    ):
        first = await sw.submit(req("before"))
        server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with anyio.fail_after(5):
                job = await sw.submit(req("while hung"))
            waited = time.monotonic() - started
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert waited >= 0.9  # it did wait for the claim, which could not be written
        with anyio.fail_after(20):
            results = [await first.result(), await job.result()]
    assert all(result.url.startswith(fake.url) for result in results)
