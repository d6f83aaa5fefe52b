"""Callback receivers of several workers sharing one token registry, in one process.

Each worker has its own shared state (its own worker id and heartbeat), receiver and client. A
worker whose receiver is given the other's public URL has every callback land on the other one,
which does not hold the token: the registry must route it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import anyio
import attrs
import pytest
from redis_harness import RedisServer

from shortwan import AsyncShortWan, ImageToVideo, JobState, PollPolicy, SubmissionUncertainError
from shortwan.callbacks import CallbackReceiver
from shortwan.redis import SharedState, connect
from shortwan.testing import FakeShortAPI, Fault

pytestmark = pytest.mark.anyio

URL = "https://example.com/frame.png"
EVIL = "https://evil.example/planted.mp4"
POLL = PollPolicy(
    min_interval=0.02,
    max_interval=0.2,
    prior_seconds_per_video_second=0.01,
    max_queries_per_second=2000,
    callback_interval=30.0,  # far beyond every test: only a callback can end a job in time
)


def reqs(n: int, tag: str = "w") -> list[ImageToVideo]:
    return [ImageToVideo(prompt=f"{tag} {i}", first_frame_image=URL, duration=2) for i in range(n)]


@attrs.define
class Worker:
    shared: SharedState
    receiver: CallbackReceiver
    client: AsyncShortWan


@asynccontextmanager
async def worker(
    stack: AsyncExitStack,
    fake: FakeShortAPI,
    url: str,
    namespace: str,
    *,
    lands_on: Worker | None = None,
    poll: PollPolicy = POLL,
    heartbeat: float = 2.0,
) -> AsyncIterator[Worker]:
    """A worker: shared state, receiver (serving, unless its callbacks land on ``lands_on``)."""
    shared = await connect(url, namespace=namespace, heartbeat=heartbeat)
    try:
        if lands_on is None:
            receiver = CallbackReceiver(shared=shared)
            await stack.enter_async_context(receiver)
        else:
            receiver = CallbackReceiver(lands_on.receiver.public_url, shared=shared)
        async with AsyncShortWan(
            fake.api_key, base_url=fake.url, poll=poll, callbacks=receiver
        ) as client:
            yield Worker(shared, receiver, client)
    finally:
        await shared.aclose()


async def post(url: str, body: bytes) -> int:
    async with aiohttp.ClientSession() as session, session.post(url, data=body) as response:
        await response.read()
        return response.status


def token_key(shared: SharedState, token: str) -> str:
    return f"{shared.namespace}:token:{hashlib.sha256(token.encode()).hexdigest()}"


async def settle(shared: SharedState) -> None:
    """Wait until the receiver's mirror has written every token it marked."""
    tokens = shared.callback_tokens()
    with anyio.fail_after(5):
        while tokens.unwritten:
            await anyio.sleep(0.01)
    await anyio.sleep(0.05)  # the last batch's round trip


class TestMirror:
    async def test_tokens_follow_their_jobs(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """A create's token is registered pending, then bound to its job, then dropped at its
        end; only this worker is named as its owner."""
        async with (
            FakeShortAPI(run_time=0.6) as fake,
            AsyncExitStack() as stack,
            worker(stack, fake, redis_server.url, namespace) as a,
        ):
            job = await a.client.submit(reqs(1)[0])
            url = fake.jobs[job.id].callback_url
            assert url is not None
            token = url.rsplit("/", 1)[1]
            await settle(a.shared)
            entry = await a.shared.tokens.lookup(token)
            assert entry is not None
            assert (entry.owner, entry.kind, entry.job_id) == (
                a.shared.worker_id,
                "job",
                job.id,
            )
            await job.result(timeout=10)
            await settle(a.shared)
            assert await a.shared.tokens.lookup(token) is None
            assert not await a.shared.redis.exists(token_key(a.shared, token))

    async def test_a_create_never_waits_for_redis(
        self, restartable_redis: RedisServer, namespace: str
    ) -> None:
        """With Redis stopped, creates and callbacks of this worker's own tokens go on."""
        async with (
            FakeShortAPI(run_time=0.1) as fake,
            AsyncExitStack() as stack,
            worker(stack, fake, restartable_redis.url, namespace) as a,
        ):
            restartable_redis.stop()
            outcomes = await a.client.gather(reqs(10), concurrency=10)
            assert all(o.ok for o in outcomes)
            assert fake.stats.queries <= 11  # each confirmed once: the callbacks came here
            restartable_redis.start()


class TestRouting:
    async def test_callbacks_on_the_wrong_worker_reach_the_owner(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """Every callback of A's jobs lands on B: B answers 200 and forwards, A confirms each
        job with one query, and nothing is answered 404."""
        async with (
            FakeShortAPI(run_time=0.2, jitter=0.5) as fake,
            AsyncExitStack() as stack,
            worker(stack, fake, redis_server.url, namespace) as b,
            worker(stack, fake, redis_server.url, namespace, lands_on=b) as a,
        ):
            outcomes = await a.client.gather(reqs(40), concurrency=40)
            a_stats, b_stats = a.receiver.statistics(), b.receiver.statistics()
            queries = fake.stats.queries
        assert all(o.ok for o in outcomes)
        assert queries <= 1.1 * 40
        assert fake.stats.callbacks_failed == 0
        assert b_stats.rejected == 0
        assert b_stats.forwarded == 40
        assert a_stats.from_other_workers == 40

    async def test_forged_and_unknown_tokens_on_another_worker(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """At B: unknown and near-miss tokens are 404 with no query; a forged success body on a
        real token of A is forwarded, confirmed by query, and never plants its URL."""
        async with (
            FakeShortAPI(run_time=0.8) as fake,
            AsyncExitStack() as stack,
            worker(stack, fake, redis_server.url, namespace) as b,
            worker(stack, fake, redis_server.url, namespace, lands_on=b) as a,
        ):
            job = await a.client.submit(reqs(1)[0])
            url = fake.jobs[job.id].callback_url
            assert url is not None
            token = url.rsplit("/", 1)[1]
            await settle(a.shared)
            before = fake.stats.queries
            base = url.rsplit("/", 1)[0]
            flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
            for wrong in ("not-a-token", flipped, token[:-1], token + "x", token.upper()):
                assert await post(f"{base}/{wrong}", b'{"data":{"status":2}}') == 404
            assert fake.stats.queries == before
            forged = {"id": job.id, "status": 2, "result": {"videos": [{"url": EVIL}]}}
            assert await post(url, json.dumps({"code": 0, "data": forged}).encode()) == 200
            await anyio.sleep(0.2)
            record = a.client.jobs.get(job.id)
            assert record is not None
            assert record.state is not JobState.SUCCEEDED  # the query said: still running
            video = await job.result(timeout=10)
            rejected = b.receiver.statistics().rejected
        assert video.url.startswith(fake.url)
        assert rejected == 5

    async def test_lost_create_adopted_through_another_worker(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """A's create loses its answer; the job's callback lands on B, reaches A, and A adopts
        the job into its table."""
        async with (
            FakeShortAPI(run_time=0.2) as fake,
            AsyncExitStack() as stack,
            worker(stack, fake, redis_server.url, namespace) as b,
            worker(stack, fake, redis_server.url, namespace, lands_on=b) as a,
        ):
            fake.script("create", [Fault.RESET_AFTER])
            with pytest.raises(SubmissionUncertainError):
                await a.client.submit(reqs(1, "lost")[0])
            (job_id,) = fake.jobs
            with anyio.fail_after(10):
                while (record := a.client.jobs.get(job_id)) is None or not record.is_terminal:
                    await anyio.sleep(0.02)
            adopted = a.client.jobs.adopted
            forwarded = b.receiver.statistics().forwarded
        assert record.video is not None
        assert record.request is not None
        assert record.request.prompt == "lost 0"
        assert adopted == 1
        assert forwarded >= 1


class TestOwnerGone:
    async def test_job_of_a_closed_worker_is_confirmed_and_published(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """A creates a job and closes (a restart); its callback lands on B, which confirms it by
        one query and publishes its end, so a wait in any worker finds it."""
        async with (
            FakeShortAPI(run_time=1.0) as fake,
            AsyncExitStack() as stack,
            worker(stack, fake, redis_server.url, namespace) as b,
        ):
            async with worker(stack, fake, redis_server.url, namespace, lands_on=b) as a:
                job = await a.client.submit(reqs(1, "orphan")[0])
                await settle(a.shared)
            before = fake.stats.queries
            async with await connect(redis_server.url, namespace=namespace) as c:
                end = await c.jobs.wait(job.id, timeout=10)
            taken = b.receiver.statistics().taken_over
            record = b.client.jobs.get(job.id)
            queries = fake.stats.queries - before
        assert end.succeeded
        assert end.url is not None
        assert end.url.startswith(fake.url)
        assert end.seen_by == b.shared.worker_id
        assert taken == 1
        assert record is not None
        assert record.is_terminal
        assert queries == 1

    async def test_lost_create_of_a_closed_worker_is_not_lost(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """A's create loses its answer and A closes; the callback naming the job lands on B,
        which confirms and publishes it."""
        async with (
            FakeShortAPI(run_time=1.0) as fake,
            AsyncExitStack() as stack,
            worker(stack, fake, redis_server.url, namespace) as b,
        ):
            async with worker(stack, fake, redis_server.url, namespace, lands_on=b) as a:
                fake.script("create", [Fault.RESET_AFTER])
                with pytest.raises(SubmissionUncertainError):
                    await a.client.submit(reqs(1, "lost")[0])
                await settle(a.shared)
            (job_id,) = fake.jobs
            end = await b.shared.jobs.wait(job_id, timeout=10)
        assert end.succeeded
        assert end.seen_by == b.shared.worker_id


class TestRedisDown:
    async def test_foreign_callbacks_get_503_and_the_safety_net_delivers(
        self, restartable_redis: RedisServer, namespace: str
    ) -> None:
        """Redis stopped: B cannot tell whose a token is and answers 503 (not 404); A's safety
        net poll still delivers every job."""
        poll = attrs.evolve(POLL, callback_interval=0.5)
        async with (
            FakeShortAPI(run_time=0.2) as fake,
            AsyncExitStack() as stack,
            worker(stack, fake, restartable_redis.url, namespace, poll=poll) as b,
            worker(stack, fake, restartable_redis.url, namespace, lands_on=b, poll=poll) as a,
        ):
            restartable_redis.stop()
            outcomes = await a.client.gather(reqs(10), concurrency=10)
            b_stats = b.receiver.statistics()
            restartable_redis.start()
        assert all(o.ok for o in outcomes)
        assert b_stats.rejected == 0
        assert b_stats.unavailable == 10
        assert fake.stats.callbacks_failed == 10

    async def test_tokens_written_again_after_a_restart(
        self, restartable_redis: RedisServer, namespace: str
    ) -> None:
        """Redis restarts empty: once it answers, A writes its live tokens again and B routes
        a callback for one of them."""
        async with (
            FakeShortAPI(run_time=30) as fake,
            AsyncExitStack() as stack,
            worker(stack, fake, restartable_redis.url, namespace, heartbeat=1.0) as b,
            worker(stack, fake, restartable_redis.url, namespace, lands_on=b, heartbeat=1.0) as a,
        ):
            job = await a.client.submit(reqs(1)[0])
            url = fake.jobs[job.id].callback_url
            assert url is not None
            token = url.rsplit("/", 1)[1]
            await settle(a.shared)
            restartable_redis.restart()
            with anyio.fail_after(10):
                while await a.shared.tokens.lookup(token) is None:
                    await anyio.sleep(0.1)
            with anyio.fail_after(10):
                while await post(url, b"{}") != 200:  # B may not have seen Redis back yet
                    await anyio.sleep(0.1)
            with anyio.fail_after(5):
                while not a.receiver.statistics().from_other_workers:
                    await anyio.sleep(0.02)

    async def test_worker_alive_but_its_client_closed(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """A's first client creates a job and closes while A's process lives on: the callback
        reaches A through B, and A's other client confirms and publishes the job."""
        async with (
            FakeShortAPI(run_time=1.0) as fake,
            AsyncExitStack() as stack,
            worker(stack, fake, redis_server.url, namespace) as b,
            worker(stack, fake, redis_server.url, namespace, lands_on=b) as a,
        ):
            async with AsyncShortWan(
                fake.api_key, base_url=fake.url, poll=POLL, callbacks=a.receiver
            ) as first:
                job = await first.submit(reqs(1, "closed")[0])
                await settle(a.shared)
            end = await b.shared.jobs.wait(job.id, timeout=10)
            record = a.client.jobs.get(job.id)
            figures = a.receiver.statistics()
        assert end.succeeded
        assert end.seen_by == a.shared.worker_id
        assert record is not None
        assert record.is_terminal
        assert (figures.from_other_workers, figures.taken_over) == (1, 1)
