"""Callback-fed jobs against FakeShortAPI: lost, duplicated, late and forged callbacks."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
import uvicorn
from aiohttp import web

from shortwan import (
    AsyncShortWan,
    ImageToVideo,
    JobState,
    PollPolicy,
    SubmissionUncertainError,
    Timeouts,
)
from shortwan.callbacks import CallbackReceiver
from shortwan.journal import EntryState, Journal, request_key
from shortwan.testing import FakeShortAPI, Fault

URL = "https://example.com/frame.png"
EVIL = "https://evil.example/planted.mp4"


def poll(callback_interval: float = 5.0) -> PollPolicy:
    return PollPolicy(
        min_interval=0.02,
        max_interval=0.2,
        prior_seconds_per_video_second=0.01,
        max_queries_per_second=5000,
        max_concurrent_queries=32,
        callback_interval=callback_interval,
    )


def reqs(n: int, tag: str = "cb") -> list[ImageToVideo]:
    return [ImageToVideo(prompt=f"{tag} {i}", first_frame_image=URL, duration=2) for i in range(n)]


@asynccontextmanager
async def setup(
    receiver: CallbackReceiver | None = None,
    *,
    interval: float = 5.0,
    timeouts: Timeouts | None = None,
    **fake_options: object,
) -> AsyncIterator[tuple[FakeShortAPI, CallbackReceiver, AsyncShortWan]]:
    if receiver is None:
        receiver = CallbackReceiver()
    async with (
        FakeShortAPI(**fake_options) as fake,  # type: ignore[arg-type]
        receiver,
        AsyncShortWan(
            fake.api_key,
            base_url=fake.url,
            poll=poll(interval),
            callbacks=receiver,
            timeouts=timeouts or Timeouts(),
        ) as client,
    ):
        yield fake, receiver, client


async def post(url: str, body: bytes) -> int:
    async with aiohttp.ClientSession() as session, session.post(url, data=body) as response:
        await response.read()
        return response.status


class TestDelivery:
    @pytest.mark.anyio
    async def test_callbacks_resolve_jobs_with_about_one_query_each(self) -> None:
        """300 jobs resolve from their callbacks, each confirmed by one query and no polling."""
        async with setup(run_time=0.2, jitter=0.5) as (fake, receiver, client):
            outcomes = await client.gather(reqs(300), concurrency=300)
            queries = fake.stats.queries
        assert all(o.ok for o in outcomes)
        assert receiver.received >= 300
        assert queries <= 1.1 * 300
        assert receiver.listening == 0  # every token released once its job ended

    @pytest.mark.anyio
    async def test_every_create_has_its_own_long_token(self) -> None:
        """Each create carries a distinct callback URL with at least 256 bits of token."""
        async with setup(run_time=0) as (fake, receiver, client):
            await client.gather(reqs(20))
            urls = [job.callback_url for job in fake.jobs.values()]
        assert receiver.url is not None
        assert all(url is not None and url.startswith(receiver.url + "/") for url in urls)
        tokens = {str(url).rsplit("/", 1)[1] for url in urls}
        assert len(tokens) == 20
        assert min(len(t) for t in tokens) >= 43  # 32 bytes in URL-safe base64

    @pytest.mark.anyio
    async def test_lost_callbacks_resolved_by_safety_net(self) -> None:
        """With every callback dropped, the slow safety-net poll still resolves every job."""
        async with setup(interval=0.3, run_time=0.1, callback_drop=1.0) as (fake, _r, client):
            outcomes = await client.gather(reqs(40), concurrency=40)
            assert fake.stats.callbacks_sent == 0
        assert all(o.ok for o in outcomes)

    @pytest.mark.anyio
    async def test_duplicates_are_harmless(self) -> None:
        """Every callback sent twice: same results, still about one query per job."""
        async with setup(run_time=0.1, callback_duplicate=1.0) as (fake, _r, client):
            outcomes = await client.gather(reqs(50), concurrency=50)
            await anyio.sleep(0.1)  # let the duplicates land
            queries = fake.stats.queries
        assert all(o.ok for o in outcomes)
        assert queries <= 1.1 * 50

    @pytest.mark.anyio
    async def test_late_callbacks_still_resolve(self) -> None:
        """Callbacks that come 0.3 s after the job's end still resolve it (before the net)."""
        async with setup(run_time=0.05, callback_delay=0.3) as (fake, _r, client):
            outcomes = await client.gather(reqs(20), concurrency=20)
            assert fake.stats.queries <= 22
        assert all(o.ok for o in outcomes)

    @pytest.mark.anyio
    async def test_bare_and_failed_shapes(self) -> None:
        """A bare data object as body is understood; failed jobs resolve as failures."""
        async with setup(run_time=0.05, callback_shape="bare", failure_rate=0.5, seed=4) as (
            fake,
            _r,
            client,
        ):
            outcomes = await client.gather(reqs(30), concurrency=30)
            assert fake.stats.queries <= 33
        assert {o.ok for o in outcomes} == {True, False}


class TestForgery:
    @pytest.mark.anyio
    async def test_unknown_token_is_404_and_changes_nothing(self) -> None:
        """A made-up token gets 404 and no query is sent."""
        async with setup(run_time=5) as (fake, receiver, client):
            await client.submit(reqs(1)[0])
            before = fake.stats.queries
            assert receiver.url is not None
            body = json.dumps({"code": 0, "data": {"status": 2}}).encode()
            assert await post(receiver.url + "/not-a-real-token", body) == 404
            assert await post(receiver.url + "/", body) in (404, 405)
            assert fake.stats.queries == before
            assert receiver.rejected >= 1

    @pytest.mark.anyio
    async def test_forged_body_cannot_plant_a_result(self) -> None:
        """A forged 'succeeded' body on a real token is checked by query; its URL is never used."""
        async with setup(run_time=0.5) as (fake, _r, client):
            job = await client.submit(reqs(1)[0])
            url = fake.jobs[job.id].callback_url
            assert url is not None
            forged = {
                "code": 0,
                "data": {"id": job.id, "status": 2, "result": {"videos": [{"url": EVIL}]}},
            }
            assert await post(url, json.dumps(forged).encode()) == 200
            await anyio.sleep(0.05)
            assert client.jobs.get(job.id).state is not JobState.SUCCEEDED  # type: ignore[union-attr]
            video = await job.result(timeout=10)
        assert video.url != EVIL
        assert video.url.startswith(fake.url)

    @pytest.mark.anyio
    async def test_oversized_body_refused(self) -> None:
        """A body over the cap gets 413 without being read in full."""
        receiver = CallbackReceiver(max_body=4096)
        async with setup(receiver, run_time=5) as (fake, _r, client):
            job = await client.submit(reqs(1)[0])
            url = fake.jobs[job.id].callback_url
            assert url is not None
            assert await post(url, b"x" * 100_000) == 413

    @pytest.mark.anyio
    async def test_late_callback_never_moves_a_job_back(self) -> None:
        """After a job succeeded, a 'running' callback on its token changes nothing."""
        async with setup(run_time=0.05) as (fake, _r, client):
            job = await client.submit(reqs(1)[0])
            await job.result(timeout=10)
            url = fake.jobs[job.id].callback_url
            assert url is not None
            stale = json.dumps({"code": 0, "data": {"id": job.id, "status": 1}}).encode()
            assert await post(url, stale) in (200, 404)
            await anyio.sleep(0.05)
            assert client.jobs.get(job.id).state is JobState.SUCCEEDED  # type: ignore[union-attr]

    @pytest.mark.anyio
    async def test_unconfirmed_mode_trusts_only_matching_bodies(self) -> None:
        """With confirm=False a body naming another job is not applied; the real one is."""
        receiver = CallbackReceiver(confirm=False)
        async with setup(receiver, run_time=0.3) as (fake, _r, client):
            job = await client.submit(reqs(1)[0])
            url = fake.jobs[job.id].callback_url
            assert url is not None
            other = {"id": "someone-else", "status": 2, "result": {"videos": [{"url": EVIL}]}}
            await post(url, json.dumps({"code": 0, "data": other}).encode())
            video = await job.result(timeout=10)
        assert video.url != EVIL


class TestAdoption:
    @pytest.mark.anyio
    async def test_lost_create_is_adopted_when_it_calls_back(self) -> None:
        """A create whose answer was lost is found through its callback and joins the table."""
        async with setup(run_time=0.1) as (fake, _receiver, client):
            events = client.jobs.subscribe()
            fake.script("create", [Fault.RESET_AFTER])
            with pytest.raises(SubmissionUncertainError) as info:
                await client.submit(reqs(1, "lost")[0])
            assert info.value.callback_token
            assert client.jobs.uncertain == 1
            (job_id,) = fake.jobs
            with anyio.fail_after(10):
                while client.jobs.get(job_id) is None or not client.jobs.get(job_id).is_terminal:  # type: ignore[union-attr]
                    await anyio.sleep(0.02)
            record = client.jobs.get(job_id)
            seen = []
            while True:
                try:
                    seen.append(events.receive_nowait())
                except anyio.WouldBlock:
                    break
            events.close()
        assert record is not None
        assert record.video is not None
        assert record.request is not None
        assert record.request.prompt == "lost 0"
        assert client.jobs.uncertain == 0
        assert client.jobs.adopted == 1
        assert any(e.job_id == job_id for e in seen)

    @pytest.mark.anyio
    async def test_callback_before_the_lost_answer_is_kept_for_adoption(self) -> None:
        """The job ends and calls back while the create's answer is still slow; the answer is
        then given up on. The id the early callback named is how the paid job is found."""
        slow_answers = Timeouts(read=0.5, request=0.8)
        async with setup(timeouts=slow_answers, run_time=0.05, slow_delay=1.5) as (
            fake,
            receiver,
            client,
        ):
            fake.script("create", [Fault.SLOW_AFTER])
            with pytest.raises(SubmissionUncertainError):
                await client.submit(reqs(1, "early")[0])
            (job_id,) = fake.jobs
            assert receiver.received == 1  # the callback came before the answer was given up
            with anyio.fail_after(10):
                while (record := client.jobs.get(job_id)) is None or not record.is_terminal:
                    await anyio.sleep(0.02)
        assert record.video is not None
        assert client.jobs.adopted == 1

    @pytest.mark.anyio
    async def test_adoption_during_the_journal_write_still_reaches_the_journal(
        self, tmp_path: Path
    ) -> None:
        """The adoption may land while the batch is still writing 'uncertain': no double pay."""

        class SlowJournal(Journal):
            async def uncertain(self, key: str) -> None:
                await anyio.sleep(0.5)  # a slow disk: the adoption finishes meanwhile
                await super().uncertain(key)

        items = reqs(1, "race")
        async with setup(run_time=0.05) as (fake, _receiver, client):
            fake.script("create", [Fault.RESET_AFTER])
            async with SlowJournal(tmp_path / "j.sqlite") as journal:
                (first,) = await client.gather(items, journal=journal)
                assert isinstance(first.error, SubmissionUncertainError)
                assert client.jobs.adopted == 1
                with anyio.fail_after(10):
                    while (entry := await journal.get(request_key(items[0]))) is None or (
                        entry.job_id is None
                    ):
                        await anyio.sleep(0.02)
            async with Journal(tmp_path / "j.sqlite") as journal:
                (second,) = await client.gather(items, journal=journal, resubmit_uncertain=True)
            assert fake.stats.jobs_created == 1
        assert second.ok
        assert second.job_id == entry.job_id

    @pytest.mark.anyio
    async def test_an_early_id_that_cannot_be_confirmed_is_tried_once(self) -> None:
        """An early callback names a job the service does not know: one query, then the token
        waits for another callback, instead of asking again and again."""
        slow_answers = Timeouts(read=0.3, request=0.5)
        async with setup(timeouts=slow_answers, run_time=5.0, slow_delay=1.0) as (
            fake,
            receiver,
            client,
        ):
            fake.script("create", [Fault.SLOW_AFTER])

            async def early_callback() -> None:
                while not receiver.listening:
                    await anyio.sleep(0.01)
                url = next(iter(fake.jobs.values()), None)
                while url is None:  # the slow create has made its job by now or soon
                    await anyio.sleep(0.01)
                    url = next(iter(fake.jobs.values()), None)
                assert url.callback_url is not None
                body = {"code": 0, "data": {"id": "nosuchjob0000000000000000", "status": 1}}
                assert await post(url.callback_url, json.dumps(body).encode()) == 200

            async with anyio.create_task_group() as tg:
                tg.start_soon(early_callback)
                with pytest.raises(SubmissionUncertainError):
                    await client.submit(reqs(1, "early")[0])
            before = fake.stats.queries
            await anyio.sleep(1.0)
            after = fake.stats.queries
            assert client.jobs.adopted == 0
        assert after - before <= 2


class TestQueriesInFlight:
    @pytest.mark.anyio
    async def test_callback_during_a_slow_query_is_not_dropped(self) -> None:
        """A safety-net query leaves before the job ends and answers late; the callback that came
        meanwhile gets its own query instead of waiting a whole safety-net interval."""
        async with setup(interval=2.0, run_time=2.5, slow_delay=1.0) as (fake, _r, client):
            fake.script("query", [Fault.SLOW_AFTER])  # the query at about 2.0 s answers at 3.0 s
            started = anyio.current_time()
            job = await client.submit(reqs(1)[0])
            await job.result(timeout=20)
            took = anyio.current_time() - started
        # Without the re-check the result came at the next safety-net query, near 5 s.
        assert took < 4.0, took

    @pytest.mark.anyio
    async def test_unconfirmed_success_without_a_url_is_checked_by_query(self) -> None:
        """With confirm=False a 'succeeded' body whose video cannot be read does not fail the
        job: it is asked about instead."""
        receiver = CallbackReceiver(confirm=False)
        async with setup(receiver, run_time=0.3) as (fake, _r, client):
            job = await client.submit(reqs(1)[0])
            url = fake.jobs[job.id].callback_url
            assert url is not None
            odd = {"id": job.id, "status": 2, "result": {"videos": "x"}}
            assert await post(url, json.dumps({"code": 0, "data": odd}).encode()) == 200
            video = await job.result(timeout=10)
        assert video.url.startswith(fake.url)

    @pytest.mark.anyio
    async def test_deeply_nested_body_is_only_a_bad_body(self) -> None:
        async with setup(run_time=0.3) as (fake, _r, client):
            job = await client.submit(reqs(1)[0])
            url = fake.jobs[job.id].callback_url
            assert url is not None
            assert await post(url, b"[" * 100_000 + b"]" * 100_000) == 200
            video = await job.result(timeout=10)
        assert video.url.startswith(fake.url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TestMounts:
    @pytest.mark.anyio
    async def test_mounted_in_an_aiohttp_app(self) -> None:
        """As a sub-application of a real aiohttp app, callbacks resolve jobs."""
        app = web.Application()
        runner = web.AppRunner(app)
        port = free_port()
        receiver = CallbackReceiver(f"http://127.0.0.1:{port}", path_prefix="/hooks/shortwan")
        app.add_subapp(receiver.path_prefix, receiver.aiohttp_app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with (
                FakeShortAPI(run_time=0.1) as fake,
                AsyncShortWan(
                    fake.api_key, base_url=fake.url, poll=poll(), callbacks=receiver
                ) as client,
            ):
                outcomes = await client.gather(reqs(10), concurrency=10)
                assert fake.stats.queries <= 11
        finally:
            await runner.cleanup()
        assert all(o.ok for o in outcomes)
        assert receiver.received >= 10

    @pytest.mark.anyio
    async def test_asgi_app_under_uvicorn(self) -> None:
        """As a plain ASGI app served by uvicorn, callbacks resolve jobs."""
        port = free_port()
        receiver = CallbackReceiver(f"http://127.0.0.1:{port}", path_prefix="/cb")
        config = uvicorn.Config(
            receiver.asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            with anyio.fail_after(10):
                while not server.started:
                    await anyio.sleep(0.01)
            try:
                async with (
                    FakeShortAPI(run_time=0.1) as fake,
                    AsyncShortWan(
                        fake.api_key, base_url=fake.url, poll=poll(), callbacks=receiver
                    ) as client,
                ):
                    outcomes = await client.gather(reqs(10), concurrency=10)
                    assert fake.stats.queries <= 11
                    assert await post(f"http://127.0.0.1:{port}/cb/nope", b"{}") == 404
            finally:
                server.should_exit = True
        assert all(o.ok for o in outcomes)
        assert receiver.received >= 10

    @pytest.mark.anyio
    async def test_adopted_job_is_written_to_the_journal(self, tmp_path: Path) -> None:
        """An adopted job replaces its 'uncertain' journal row, so a rerun collects it by id."""
        items = reqs(3, "adopt")
        async with setup(run_time=0.2) as (fake, _receiver, client):
            fake.script("create", [Fault.RESET_AFTER])
            async with Journal(tmp_path / "j.sqlite") as journal:
                first = await client.gather(items, concurrency=1, journal=journal)
                assert isinstance(first[0].error, SubmissionUncertainError)
                key = request_key(items[0])
                with anyio.fail_after(10):
                    while (entry := await journal.get(key)) is None or entry.job_id is None:
                        await anyio.sleep(0.02)
                assert entry.state is EntryState.SUBMITTED
                second = await client.gather(items, concurrency=1, journal=journal)
            assert fake.stats.jobs_created == 3
        assert all(o.ok for o in second)
        assert second[0].job_id == entry.job_id
