"""The shared job view: ends published with a TTL, read and awaited from other processes."""

from __future__ import annotations

from decimal import Decimal

import anyio
import attrs
import pytest
from redis_harness import RedisServer, child, run_child

from shortwan import (
    AsyncShortWan,
    ImageToVideo,
    InvalidRequestError,
    JobFailedError,
    JobStatus,
    JobTimeoutError,
)
from shortwan.redis import JobEnd, SharedState, connect
from shortwan.testing import FakeShortAPI, fast_poll

pytestmark = pytest.mark.anyio

DONE = JobEnd(
    job_id="a1b2c3",
    state="succeeded",
    status=2,
    amount=Decimal("0.425"),
    urls=("https://cdn.example.com/a.mp4", "https://cdn.example.com/b.mp4"),
)


class TestPublishAndGet:
    async def test_end_is_stored_with_its_ttl(self, shared: SharedState) -> None:
        """A published end reads back equal, with the publisher's name and a TTL set."""
        assert await shared.jobs.publish(DONE, ttl=120)
        end = await shared.jobs.get(DONE.job_id)
        assert end is not None
        assert end.seen_by == shared.worker_id
        assert end == attrs.evolve(DONE, seen_by=shared.worker_id)
        ttl = await shared.jobs.ttl_of(DONE.job_id)
        assert ttl is not None
        assert 110 < ttl <= 120
        assert await shared.jobs.get("never-published") is None
        assert await shared.jobs.ttl_of("never-published") is None

    async def test_first_end_wins(self, shared: SharedState) -> None:
        """A job ends once: a second publish is ignored and says so."""
        assert await shared.jobs.publish(DONE)
        assert not await shared.jobs.publish(JobEnd(job_id=DONE.job_id, state="failed"))
        end = await shared.jobs.get(DONE.job_id)
        assert end is not None
        assert end.state == "succeeded"

    async def test_many_ends_in_one_call(self, shared: SharedState) -> None:
        """publish_many stores and announces a burst of ends, keeps the first of each job, and
        get_many reads back those that exist."""
        ends = [JobEnd(job_id=f"many{i}", state="failed", error=f"e{i}") for i in range(3)]
        await shared.jobs.claim(["many0"], ttl=30)
        got: list[str] = []
        shared.jobs.subscribe("many2", lambda end: got.append(end.job_id))
        await anyio.sleep(0.1)
        assert await shared.jobs.publish_many(ends[:2]) == [True, True]
        assert await shared.jobs.publish_many(ends) == [False, False, True]
        assert await shared.jobs.publish_many([]) == []
        found = await shared.jobs.get_many(["many0", "many2", "nothing"])
        assert {job_id: end.error for job_id, end in found.items()} == {
            "many0": "e0",
            "many2": "e2",
        }
        assert found["many0"].seen_by == shared.worker_id
        assert not await shared.redis.exists(f"{shared.namespace}:polling:many0")
        with anyio.fail_after(5):
            while not got:
                await anyio.sleep(0.01)
        assert got == ["many2"]

    async def test_end_gives_back_video_or_error(self) -> None:
        """An end turns into the SDK's Video, or into the JobFailedError a waiter would see."""
        video = DONE.video()
        assert video is not None
        assert (video.url, video.urls, video.credit) == (DONE.urls[0], DONE.urls, DONE.amount)
        assert DONE.failure() is None
        failed = JobEnd(job_id="x", state="failed", status=3, error="nsfw", refunded=True)
        error = failed.failure()
        assert isinstance(error, JobFailedError)
        assert (error.job_id, error.reason, error.refunded, error.status) == ("x", "nsfw", True, 3)
        assert failed.video() is None

    async def test_end_as_a_query_answer_and_back(self) -> None:
        """An end reads as the snapshot a query would give, and a terminal snapshot as an end."""
        snapshot = DONE.snapshot()
        assert (snapshot.status, snapshot.urls, snapshot.credit) == (
            JobStatus.SUCCEEDED,
            DONE.urls,
            DONE.amount,
        )
        assert snapshot.video == DONE.video()
        assert JobEnd.from_snapshot(snapshot) == DONE
        failed = JobEnd(job_id="x", state="failed", error="nsfw", refunded=True).snapshot()
        assert (failed.status, failed.raw_status, failed.error, failed.refunded) == (
            JobStatus.FAILED,
            3,
            "nsfw",
            True,
        )
        with pytest.raises(ValueError, match="not ended"):
            JobEnd.from_snapshot(attrs.evolve(snapshot, raw_status=1, status=JobStatus.RUNNING))

    async def test_bad_ids_and_ttls_are_refused(self, shared: SharedState) -> None:
        """A job id that cannot be one, or a TTL that is not positive, is refused."""
        with pytest.raises(InvalidRequestError):
            await shared.jobs.get("has space")
        with pytest.raises(ValueError, match="ttl"):
            await shared.jobs.publish(DONE, ttl=0)

    async def test_from_a_real_client_record(self, shared: SharedState) -> None:
        """The end of a job of a real client's table carries its state, amount and URLs."""
        async with (
            FakeShortAPI(run_time=0.05, failure_rate=0.0) as fake,
            AsyncShortWan(fake.api_key, base_url=fake.url, poll=fast_poll()) as client,
        ):
            request = ImageToVideo(prompt="fox", first_frame_image="https://example.com/a.png")
            job = await client.submit(request)
            video = await job.result(timeout=10)
            record = client.jobs.get(job.id)
            assert record is not None
            end = JobEnd.from_record(record, seen_by="w1")
        assert (end.job_id, end.state, end.amount) == (job.id, "succeeded", job.amount)
        assert end.urls == video.urls
        assert end.video() == video
        record.state = type(record.state).RUNNING
        with pytest.raises(ValueError, match="not ended"):
            JobEnd.from_record(record)


class TestWait:
    async def test_wait_resolves_on_publish(self, shared: SharedState) -> None:
        """A waiter wakes when the end is published, and an end published before is found too."""
        async with anyio.create_task_group() as tg:
            got: list[JobEnd] = []

            async def wait() -> None:
                got.append(await shared.jobs.wait(DONE.job_id, timeout=5))

            tg.start_soon(wait)
            await anyio.sleep(0.1)
            assert shared.jobs.watched == 1
            await shared.jobs.publish(DONE)
        assert got[0].urls == DONE.urls
        assert shared.jobs.watched == 0
        again = await shared.jobs.wait(DONE.job_id, timeout=1)  # already there
        assert again.state == "succeeded"

    async def test_many_waiters_one_reader(self, shared: SharedState) -> None:
        """A hundred waiters on different jobs share the process's one stream reader."""
        ends = [JobEnd(job_id=f"job{i}", state="failed", error=f"e{i}") for i in range(100)]
        got: dict[str, str | None] = {}

        async def wait(job_id: str) -> None:
            got[job_id] = (await shared.jobs.wait(job_id, timeout=10)).error

        async with anyio.create_task_group() as tg:
            for end in ends:
                tg.start_soon(wait, end.job_id)
            await anyio.sleep(0.2)
            name = f"shortwan-{shared.worker_id}"
            mine = [c for c in await shared.redis.client_list() if c.get("name") == name]
            # The reader's blocked XREAD, plus at most a few pooled connections: not one each.
            assert 1 <= len(mine) <= 4
            assert sum("xread" in c.get("cmd", "") for c in mine) <= 1
            for end in ends:
                await shared.jobs.publish(end)
        assert got == {end.job_id: end.error for end in ends}

    async def test_wait_times_out_naming_the_job(self, shared: SharedState) -> None:
        """No end in time raises JobTimeoutError with the job id; nothing stays subscribed."""
        with pytest.raises(JobTimeoutError) as caught:
            await shared.jobs.wait("slowjob", timeout=0.2)
        assert caught.value.job_id == "slowjob"
        assert shared.jobs.watched == 0

    async def test_subscribe_calls_back_once(self, shared: SharedState) -> None:
        """subscribe() calls back once per end, and a cancelled subscription never."""
        seen: list[str] = []
        cancel = shared.jobs.subscribe("cb1", lambda end: seen.append(end.state))
        shared.jobs.subscribe("cb2", lambda end: seen.append("never"))()
        await shared.jobs.publish(JobEnd(job_id="cb1", state="failed"))
        await shared.jobs.publish(JobEnd(job_id="cb2", state="failed"))
        with anyio.fail_after(5):
            while not seen:
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)
        cancel()
        assert seen == ["failed"]


async def test_job_view_across_processes(redis_server: RedisServer, namespace: str) -> None:
    """Process A publishes an end; process B, already waiting, resolves from it; the TTL is set."""
    end = {
        "job_id": "cafe0001",
        "state": "succeeded",
        "amount": "0.85",
        "urls": ["https://cdn.example.com/v.mp4"],
    }
    url = redis_server.url
    async with child("wait", url, namespace, {"job_id": "cafe0001", "timeout": 20}) as b:
        assert (await b.line())["waiting"] == "cafe0001"
        await anyio.sleep(0.5)  # B's reader is up and blocked on the stream
        [published] = await run_child("publish", url, namespace, {"end": end})
        assert published == {"published": True}
        seen = await b.line()
    assert seen["url"] == "https://cdn.example.com/v.mp4"
    assert seen["amount"] == "0.85"
    assert seen["seen_by"] != ""
    async with await connect(url, namespace=namespace) as shared:
        ttl = await shared.jobs.ttl_of("cafe0001")
        assert ttl is not None
        assert 0 < ttl <= 24 * 3600


async def test_polling_claims_pass_to_a_live_worker(
    redis_server: RedisServer, shared: SharedState
) -> None:
    """Only one live worker polls a job: its claim holds, passes on when it closes, ends with
    the job's end."""
    other = await connect(redis_server.url, namespace=shared.namespace)
    try:
        mine = await shared.jobs.claim(["j1", "j2"], ttl=30)
        assert mine == {"j1": shared.worker_id, "j2": shared.worker_id}
        theirs = await other.jobs.claim(["j1", "j3"], ttl=30)
        assert theirs == {"j1": shared.worker_id, "j3": other.worker_id}
        assert await shared.jobs.claim([], ttl=1) == {}
    finally:
        await other.aclose()
    assert await shared.jobs.claim(["j3"], ttl=30) == {"j3": shared.worker_id}  # its worker left
    await shared.jobs.publish(JobEnd(job_id="j1", state="failed"))
    assert not await shared.redis.exists(f"{shared.namespace}:polling:j1")
    await shared.jobs.claim(["j2"], ttl=0.2)
    await anyio.sleep(0.3)
    assert not await shared.redis.exists(f"{shared.namespace}:polling:j2")  # lapsed
