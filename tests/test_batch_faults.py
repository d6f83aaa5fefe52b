"""Batches under faults of their own: odd items, failing journals and disks, shared jobs, leaving
early, native cancellation. Nothing may hang, stop the client's engine, or lose a paid job."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from helpers import URL, client_for, req

from shortwan import (
    AsyncShortWan,
    BatchItem,
    ConfigurationError,
    DownloadError,
    InvalidRequestError,
    JobDetachedError,
    JournalError,
    Limits,
    PollPolicy,
    RetryEvent,
    RetryPolicy,
    ShortWanError,
    SubmissionUncertainError,
    Timeouts,
)
from shortwan._files import output_target
from shortwan.callbacks import CallbackReceiver
from shortwan.journal import Journal
from shortwan.testing import FakeShortAPI, Fault, JobPlan, set_testing


def engine_alive(client: AsyncShortWan) -> bool:
    runner = client._engine._runner
    return runner is not None and not runner.done()


class TestItemsThatCannotWork:
    def test_batch_item_output_must_be_a_name(self) -> None:
        for bad in (7, b"x.mp4", "", "  ", "bad\x00.mp4"):
            with pytest.raises(InvalidRequestError, match="output"):
                BatchItem(request=req("a"), output=bad)  # type: ignore[arg-type]

    def test_batch_item_key_must_be_storable_text(self) -> None:
        with pytest.raises(InvalidRequestError, match="lone surrogate"):
            BatchItem(request=req("a"), key=chr(0xD800))
        assert BatchItem(request=req("a"), key="clé").key == "clé"

    def test_an_output_naming_a_folder_is_refused(self, tmp_path: Path) -> None:
        _target, problem = output_target(tmp_path.resolve(), "sub/")
        assert problem is not None
        assert "folder" in problem

    @pytest.mark.anyio
    async def test_unusable_output_in_a_mapping_is_refused_before_paying(
        self, tmp_path: Path
    ) -> None:
        items: list[Mapping[str, Any]] = [
            {"prompt": "ok", "first_frame_image": URL, "output": "ok.mp4"},
            {"prompt": "nul", "first_frame_image": URL, "output": "bad\x00.mp4"},
        ]
        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake) as client:
            with anyio.fail_after(10):
                outcomes = await client.gather(items, download_to=tmp_path)
            assert engine_alive(client)
        assert outcomes[0].ok
        assert outcomes[0].path == tmp_path / "ok.mp4"
        assert isinstance(outcomes[1].error, InvalidRequestError)
        assert outcomes[1].job_id is None
        assert fake.stats.creates_received == 1

    @pytest.mark.anyio
    async def test_an_invalid_request_keeps_its_key(self) -> None:
        items: list[Mapping[str, Any]] = [
            {"key": "bad-one", "prompt": "x", "first_frame_image": URL, "duration": 99},
            BatchItem(request={"prompt": "y", "duration": 99}, key="bad-two"),  # type: ignore[list-item]
        ]
        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake) as client:
            outcomes = await client.gather(items)
        assert [o.key for o in outcomes] == ["bad-one", "bad-two"]
        assert all(isinstance(o.error, InvalidRequestError) for o in outcomes)
        assert fake.stats.creates_received == 0

    @pytest.mark.anyio
    async def test_a_failing_spend_counter_is_an_outcome_not_a_hang(self) -> None:
        class Broken:
            limit = Decimal(10)
            committed = Decimal(0)

            async def reserve(self, amount: Decimal) -> bool:
                raise ConnectionError("the shared counter is down")

            async def settle(self, reserved: Decimal, charged: Decimal | None) -> None: ...

            async def release(self, reserved: Decimal) -> None: ...

            async def refund(self, amount: Decimal) -> None: ...

        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake) as client:
            with anyio.fail_after(10):
                outcomes = await client.gather([req("a"), req("b")], max_spend=Broken())
            assert engine_alive(client)
            # The client still works for everything else.
            video = await client.generate(req("after"))
        assert video.url
        for outcome in outcomes:
            assert type(outcome.error) is ShortWanError
            assert isinstance(outcome.error.__cause__, ConnectionError)
        assert fake.stats.creates_received == 1  # only "after"


class TestDownloadsInBatches:
    @pytest.mark.anyio
    async def test_a_second_item_with_the_same_output_is_refused_before_paying(
        self, tmp_path: Path
    ) -> None:
        items = [BatchItem(request=req(f"same {i}"), output="same.mp4") for i in range(2)]
        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake) as client:
            with anyio.fail_after(10):
                first, second = await client.gather(items, download_to=tmp_path)
            assert engine_alive(client)
        assert first.ok
        assert first.path == tmp_path / "same.mp4"
        assert isinstance(second.error, InvalidRequestError)
        assert "appears twice" in str(second.error)
        assert fake.stats.creates_received == 1

    @pytest.mark.anyio
    async def test_output_names_the_system_cannot_take_are_refused_before_paying(
        self, tmp_path: Path
    ) -> None:
        names = ["x" * 300 + ".mp4", chr(0xD800) + ".mp4", "ok.mp4"]
        items = [BatchItem(request=req(f"n {i}"), output=n) for i, n in enumerate(names)]
        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake) as client:
            outcomes = await client.gather(items, download_to=tmp_path)
        assert [type(o.error).__name__ for o in outcomes[:2]] == ["InvalidRequestError"] * 2
        assert outcomes[2].ok
        assert fake.stats.creates_received == 1

    @pytest.mark.anyio
    async def test_existing_file_is_claimed_only_if_it_is_the_video(self, tmp_path: Path) -> None:
        out = tmp_path / "out"
        out.mkdir()
        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake) as client:
            async with Journal(tmp_path / "j.sqlite") as journal:
                first = await client.gather(
                    [BatchItem(request=req("mine"), output="mine.mp4")], journal=journal
                )
            assert first[0].ok
            assert first[0].path is None
            whole = await client.download(first[0].video, tmp_path / "whole.mp4")  # type: ignore[arg-type]
            # A crash after the rename but before the journal noted it: the file is the video.
            (out / "mine.mp4").write_bytes(whole.read_bytes())
            # Another item's path holds something else altogether.
            (out / "theirs.mp4").write_bytes(b"somebody else's file")
            async with Journal(tmp_path / "j.sqlite") as journal:
                second = await client.gather(
                    [
                        BatchItem(request=req("mine"), output="mine.mp4"),
                        BatchItem(request=req("theirs"), output="theirs.mp4"),
                    ],
                    journal=journal,
                    download_to=out,
                )
        mine, theirs = second
        assert mine.replayed
        assert mine.ok
        assert mine.path == out / "mine.mp4"
        assert isinstance(theirs.error, DownloadError)
        assert "holds something else" in str(theirs.error)
        assert (out / "theirs.mp4").read_bytes() == b"somebody else's file"
        assert sorted(p.name for p in out.iterdir()) == ["mine.mp4", "theirs.mp4"]


class TestSharedJobs:
    @pytest.mark.anyio
    async def test_two_batches_waiting_on_one_job_each_get_their_own(self, tmp_path: Path) -> None:
        a, b = req("A"), req("B")

        def plan(args: Mapping[str, Any]) -> JobPlan:
            return JobPlan(run_time=1.0 if args["prompt"] == "A" else 0.4)

        async with (
            FakeShortAPI(plan=plan) as fake,
            client_for(fake) as client,
            Journal(tmp_path / "j.sqlite") as journal,
        ):
            second: list[Any] = []

            async def later() -> None:
                await anyio.sleep(0.2)  # B has been created by the first batch by now
                second.extend(await client.gather([b], journal=journal))

            first = []
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(later)
                    async for outcome in client.generate_many([a, b], journal=journal):
                        first.append(outcome)
            made_for = {job.id: job.prompt for job in fake.jobs.values()}
        assert sorted(o.index for o in first) == [0, 1]
        for outcome in [*first, *second]:
            assert outcome.ok
            assert outcome.request is not None
            assert made_for[outcome.job_id] == outcome.request.prompt  # type: ignore[index]
        assert len(fake.jobs) == 2


class TestLeavingEarly:
    @pytest.mark.anyio
    async def test_outcomes_left_in_the_buffer_are_named(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="shortwan")
        async with FakeShortAPI(run_time=0.1) as fake, client_for(fake) as client:
            async for _outcome in client.generate_many([req(f"p {i}") for i in range(8)]):
                await anyio.sleep(0.6)  # a slow consumer: the rest finish meanwhile
                break
            finished = {r.id for r in client.jobs if r.video is not None}
        named = [r for r in caplog.records if "were taken" in r.getMessage()]
        assert len(named) == 1
        listed = set(named[0].job_ids)  # type: ignore[attr-defined]
        assert len(listed) == 7
        assert listed <= finished
        assert len(fake.jobs) == 8

    @pytest.mark.anyio
    async def test_waiting_for_a_slot_is_not_maybe_sent(self, tmp_path: Path) -> None:
        items = [req(f"slot {i}") for i in range(4)]
        async with (
            FakeShortAPI(run_time=5) as fake,
            client_for(fake, max_in_flight=1) as client,
            Journal(tmp_path / "j.sqlite") as journal,
        ):
            with anyio.move_on_after(1.0):
                await client.gather(items, journal=journal, concurrency=4)
            assert fake.stats.creates_received == 1
            states = Counter(e.state.value for e in await journal.entries())
        # Only the create that left is on disk: the three waiting for a slot never were.
        assert states == {"submitted": 1}


class TestCreatesThatMayHaveLanded:
    @pytest.mark.anyio
    async def test_native_cancellation_keeps_the_paid_job(self) -> None:
        async with FakeShortAPI(run_time=0, slow_delay=0.5) as fake, client_for(fake) as client:
            fake.script("create", [Fault.SLOW_AFTER])
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.submit(req("web")), 0.1)
            # The create goes on in its own task; its job reaches the table when it answers.
            with anyio.fail_after(5):
                while len(client.jobs) < 1:
                    await anyio.sleep(0.05)
            (job_id,) = fake.jobs
            assert job_id in client.jobs
            video = await client.attach(job_id).result(timeout=10)
        assert video.job_id == job_id

    @pytest.mark.anyio
    async def test_close_waits_for_a_create_under_way(self) -> None:
        async with FakeShortAPI(run_time=0, slow_delay=0.4) as fake:
            client = client_for(fake)
            fake.script("create", [Fault.SLOW_AFTER])
            task = asyncio.get_running_loop().create_task(client.submit(req("leaving")))
            await anyio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await client.aclose()
            (job_id,) = fake.jobs
            assert job_id in client.jobs

    @pytest.mark.anyio
    async def test_uncertain_then_refused_stays_uncertain(self, tmp_path: Path) -> None:
        retry = RetryPolicy(attempts=2, retry_uncertain_creates=True)
        async with (
            FakeShortAPI(run_time=0) as fake,
            client_for(fake, retry=retry) as client,
            Journal(tmp_path / "j.sqlite") as journal,
        ):
            # The first attempt makes a job and loses its answer; the retry is refused.
            fake.script("create", [Fault.RESET_AFTER, Fault.UNAVAILABLE])
            (outcome,) = await client.gather([req("x")], journal=journal, max_spend="1")
            entries = await journal.entries()
        assert isinstance(outcome.error, SubmissionUncertainError)
        assert len(fake.jobs) == 1
        assert [e.state.value for e in entries] == ["uncertain"]


class TestRefusedBeforeSending:
    @pytest.mark.anyio
    async def test_a_failed_intent_gives_its_reservation_back(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real = Journal.intent
        failures = 2

        async def flaky(self: Journal, key: str, **kwargs: Any) -> None:
            nonlocal failures
            if failures:
                failures -= 1
                raise JournalError("the disk is full")
            await real(self, key, **kwargs)

        monkeypatch.setattr(Journal, "intent", flaky)
        items = [req(p) for p in ("a", "b", "c")]
        async with (
            FakeShortAPI(run_time=0.05) as fake,
            client_for(fake) as client,
            Journal(tmp_path / "j.sqlite") as journal,
        ):
            outcomes = await client.gather(
                items, concurrency=1, journal=journal, max_spend=items[0].estimated_cost * 2
            )
        assert [type(o.error).__name__ for o in outcomes[:2]] == ["JournalError"] * 2
        assert outcomes[2].ok  # the cap was not eaten by the two that never left
        assert fake.stats.creates_received == 1

    @pytest.mark.anyio
    async def test_a_refused_create_leaves_no_intent(self, tmp_path: Path) -> None:
        items = [req("a")]
        async with FakeShortAPI(run_time=0.05) as fake:
            receiver = CallbackReceiver()  # never started: it has no URL to hand out
            async with (
                client_for(fake, callbacks=receiver) as client,
                Journal(tmp_path / "j.sqlite") as journal,
            ):
                (first,) = await client.gather(items, journal=journal)
                assert isinstance(first.error, ConfigurationError)
                assert await journal.entries() == []
            async with (
                CallbackReceiver() as receiver,
                client_for(fake, callbacks=receiver) as client,
                Journal(tmp_path / "j.sqlite") as journal,
            ):
                (second,) = await client.gather(items, journal=journal)
        assert second.ok  # not refused as "maybe sent by an earlier run"
        assert fake.stats.creates_received == 1

    @pytest.mark.anyio
    async def test_cancelled_while_the_intent_is_written_sends_nothing(
        self, tmp_path: Path
    ) -> None:
        async with (
            FakeShortAPI(run_time=0.05) as fake,
            client_for(fake) as client,
            Journal(tmp_path / "j.sqlite") as journal,
        ):
            request = req("x")
            with anyio.CancelScope() as scope:

                async def before_send() -> None:
                    scope.cancel()  # the consumer left while the (shielded) write went on
                    await journal.intent("k", model=request.model, estimate=request.estimated_cost)

                await client._engine.create(request, before_send=before_send)
            assert scope.cancelled_caught
        assert fake.stats.creates_received == 0

    @pytest.mark.anyio
    async def test_a_pause_after_a_maybe_sent_attempt_stays_uncertain(self) -> None:
        set_testing(False)  # the pause is checked against the real clock here
        retry = RetryPolicy(retry_uncertain_creates=True, timeout=5, initial_delay=0.01)
        async with FakeShortAPI(run_time=0) as fake:
            client = client_for(fake, retry=retry)

            def pause_everything(event: RetryEvent) -> None:
                # A 429 elsewhere asks the whole client to wait longer than this call may.
                client._transport._paused_until = time.monotonic() + 60

            client._transport.on_retry = pause_everything
            async with client:
                fake.script("create", [Fault.RESET_AFTER])
                with pytest.raises(SubmissionUncertainError, match="pause"):
                    await client.submit(req("x"))
        assert len(fake.jobs) == 1


class TestClosing:
    @pytest.mark.anyio
    async def test_closing_during_generate_many_reports_every_job(self) -> None:
        async with FakeShortAPI(run_time=2.0) as fake:
            client = client_for(fake)
            outcomes = []
            errors: list[JobDetachedError] = []

            async def close_soon() -> None:
                await anyio.sleep(0.3)
                await client.aclose()

            async def consume() -> None:
                try:
                    # Two in flight at a time: when the client closes, four were never sent.
                    requests = [req(f"p{i}") for i in range(6)]
                    async for outcome in client.generate_many(requests, concurrency=2):
                        outcomes.append(outcome)
                except JobDetachedError as exc:
                    errors.append(exc)

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(close_soon)
                    tg.start_soon(consume)
        (error,) = errors
        assert "closed before generate_many finished" in str(error)
        assert fake.stats.creates_received == 2
        assert sorted(o.job_id for o in outcomes) == sorted(fake.jobs)  # type: ignore[type-var]
        assert all(isinstance(o.error, JobDetachedError) for o in outcomes)

    @pytest.mark.anyio
    async def test_a_create_waiting_for_a_slot_does_not_leave_after_close(self) -> None:
        async with FakeShortAPI(run_time=5.0) as fake:
            client = client_for(fake, max_in_flight=1)
            await client.submit(req("a"))
            waiter = asyncio.ensure_future(client.submit(req("b")))
            await anyio.sleep(0.05)
            await client.aclose()
            with pytest.raises(RuntimeError, match="closed"):
                await waiter
        assert fake.stats.creates_received == 1

    @pytest.mark.anyio
    async def test_close_cancelled_natively_still_shuts_everything(self) -> None:
        async with FakeShortAPI(run_time=0, slow_delay=1.0) as fake:
            client = client_for(fake)
            fake.script("create", [Fault.SLOW_AFTER])
            submit = asyncio.ensure_future(client.submit(req("slow")))
            await anyio.sleep(0.1)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.aclose(), 0.1)
            # The create was waited for all the same, and nothing is left running.
            assert client._engine._runner is None
            assert client._transport._session is None
            (job_id,) = fake.jobs
            assert job_id in client.jobs
            assert (await submit).id == job_id


class TestJournalTrouble:
    @pytest.mark.anyio
    async def test_replayed_outcome_keeps_its_job_when_the_download_note_fails(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        items = [req("a")]
        async with FakeShortAPI(run_time=0.02) as fake, client_for(fake) as client:
            async with Journal(tmp_path / "j.sqlite") as journal:
                (first,) = await client.gather(items, journal=journal)

            async def broken(self: Journal, key: str, path: Path) -> None:
                raise JournalError("the disk is full")

            monkeypatch.setattr(Journal, "downloaded", broken)
            async with Journal(tmp_path / "j.sqlite") as journal:
                (second,) = await client.gather(
                    items, journal=journal, download_to=tmp_path / "out"
                )
        assert second.replayed
        assert second.job_id == first.job_id
        assert second.video is not None
        assert first.video is not None
        assert second.video.url == first.video.url
        assert second.path == tmp_path / "out" / f"{first.job_id}.mp4"
        assert second.path.stat().st_size > 0
        assert isinstance(second.error, JournalError)


class TestArgumentsCheckedBeforePaying:
    @pytest.mark.parametrize("timeout", [math.nan, -1, "10", True])
    @pytest.mark.anyio
    async def test_a_bad_timeout_is_refused_before_the_create(self, timeout: object) -> None:
        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake) as client:
            with pytest.raises(InvalidRequestError, match="timeout"):
                await client.generate(req("t"), timeout=timeout)  # type: ignore[arg-type]
            with pytest.raises(InvalidRequestError, match="timeout"):
                await client.gather([req("g")], timeout=timeout)  # type: ignore[arg-type]
        assert fake.stats.creates_received == 0

    @pytest.mark.anyio
    async def test_odd_batch_arguments_are_invalid_requests(self) -> None:
        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake) as client:
            for kwargs in ({"concurrency": 0}, {"max_spend": math.nan}, {"max_spend": object()}):
                with pytest.raises(InvalidRequestError):
                    await client.gather([req("k")], **kwargs)  # type: ignore[arg-type]
            for source in (None, req("bare")):
                with pytest.raises(InvalidRequestError, match="iterable"):
                    await client.gather(source)  # type: ignore[arg-type]
        assert fake.stats.creates_received == 0

    @pytest.mark.anyio
    async def test_a_float_cap_is_an_amount(self) -> None:
        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake) as client:
            cost = req("f").estimated_cost
            outcomes = await client.gather(
                [req(f"f {i}") for i in range(3)], concurrency=1, max_spend=float(cost * 2)
            )
        assert [type(o.error).__name__ for o in outcomes] == ["NoneType"] * 2 + ["SpendLimitError"]
        assert fake.stats.creates_received == 2

    @pytest.mark.parametrize(
        ("make", "what"),
        [
            (lambda: PollPolicy(min_interval=math.nan), "min_interval"),
            (lambda: PollPolicy(jitter=math.inf), "jitter"),
            (lambda: PollPolicy(prior_seconds_per_video_second=1e308), "prior"),
            (lambda: Timeouts(read=math.nan), "read"),
            (lambda: Limits(max_downloads=0), "max_downloads"),
            (lambda: Limits(max_connections_per_host=-1), "max_connections_per_host"),
            (lambda: AsyncShortWan("ak-x", max_finished_jobs=-1), "max_finished_jobs"),
        ],
    )
    def test_settings_that_would_stall_are_refused(self, make: Any, what: str) -> None:
        with pytest.raises(ConfigurationError, match=what):
            make()


class TestWaitingForAConnection:
    @pytest.mark.anyio
    async def test_a_create_stuck_in_the_pool_is_not_maybe_sent(self) -> None:
        """A create still waiting for a pooled connection when its time runs out never left:
        it is retried (or refused), never reported as maybe charged."""
        async with FakeShortAPI(run_time=0, slow_delay=3) as fake:
            fake.script("query", [Fault.SLOW_AFTER])
            (job_id,) = fake.add_jobs(1)
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                # The application's own slow request holds the only connection for 3 s.
                hog = asyncio.ensure_future(
                    session.get(
                        f"{fake.url}/api/v1/job/query",
                        params={"id": job_id},
                        headers={"Authorization": f"Bearer {fake.api_key}"},
                    )
                )
                await anyio.sleep(0.1)
                timeouts = Timeouts(request=1.0, pool=1.0, connect=0.2)
                async with client_for(fake, session=session, timeouts=timeouts) as client:
                    job = await client.submit(req("pooled"))
                    assert client.jobs.uncertain == 0
                (await hog).release()
        assert fake.stats.creates_received == 1
        assert job.id in fake.jobs
