"""The journal on its own, and generate_many resuming from it against FakeShortAPI."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import URL, client_for

from shortwan import (
    BatchItem,
    ImageToVideo,
    InvalidRequestError,
    JobFailedError,
    Outcome,
    ShortWanError,
    SpendLimitError,
    SubmissionUncertainError,
    Video,
)
from shortwan.journal import EntryState, Journal, JournalError, request_key
from shortwan.testing import FakeShortAPI, Fault, JobPlan


def reqs(n: int, tag: str = "p") -> list[ImageToVideo]:
    return [
        ImageToVideo(prompt=f"{tag} {i}", first_frame_image=URL, duration=2 + i % 3)
        for i in range(n)
    ]


async def run(fake: FakeShortAPI, items: list[object], **kwargs: object) -> list[Outcome]:
    async with client_for(fake) as client:
        return await client.gather(items, **kwargs)  # type: ignore[arg-type]


class TestJournalRows:
    @pytest.mark.anyio
    async def test_lifecycle(self, tmp_path: Path) -> None:
        """A row moves intent → submitted → finished → downloaded and survives reopening."""
        path = tmp_path / "j.db"
        async with Journal(path) as journal:
            entry = await journal.intent("a", model="m", estimate=Decimal("0.17"))
            assert entry.state is EntryState.INTENT
            assert entry.attempts == 1
            await journal.submitted("a", job_id="job1", amount=Decimal("0.17"))
            video = Video(job_id="job1", url="http://x/1.mp4")
            await journal.finished("a", video=video)
            await journal.downloaded("a", tmp_path / "1.mp4")
        async with Journal(path) as journal:
            entry = await journal.get("a")
            assert entry is not None
            assert entry.state is EntryState.DOWNLOADED
            assert entry.job_id == "job1"
            assert entry.amount == Decimal("0.17")
            assert entry.video == Video(job_id="job1", url="http://x/1.mp4", urls=(video.url,))
            assert entry.path == tmp_path / "1.mp4"
            assert entry.error is None
            assert await journal.get("missing") is None

    @pytest.mark.anyio
    async def test_failure_replays_as_job_failed(self, tmp_path: Path) -> None:
        """A failed job's reason, refund and status come back as a JobFailedError."""
        async with Journal(tmp_path / "j.db") as journal:
            await journal.intent("a", model="m", estimate=Decimal(1))
            await journal.submitted("a", job_id="job1", amount=Decimal(1))
            error = JobFailedError("job1", "nsfw", refunded=True, status=3)
            await journal.finished("a", error=error)
            entry = await journal.get("a")
        assert entry is not None
        replay = entry.error
        assert isinstance(replay, JobFailedError)
        assert (replay.job_id, replay.reason, replay.refunded, replay.status) == (
            "job1",
            "nsfw",
            True,
            3,
        )
        assert entry.video is None

    @pytest.mark.anyio
    async def test_spent_counts_charges_and_maybe_charges(self, tmp_path: Path) -> None:
        """Spend = charged jobs not refunded + estimates of creates whose outcome is unknown."""
        async with Journal(tmp_path / "j.db") as journal:
            for key in "abcd":
                await journal.intent(key, model="m", estimate=Decimal("0.5"))
            await journal.submitted("a", job_id="1", amount=Decimal("0.425"))
            await journal.submitted("b", job_id="2", amount=Decimal("1"))
            await journal.finished("b", error=JobFailedError("2", "x", refunded=True))
            await journal.uncertain("c")
            # d stays an intent: maybe sent.
            assert await journal.spent() == Decimal("1.425")
            counts = await journal.counts()
        assert counts[EntryState.SUBMITTED] == 1
        assert counts[EntryState.FINISHED] == 1
        assert counts[EntryState.UNCERTAIN] == 1
        assert counts[EntryState.INTENT] == 1

    @pytest.mark.anyio
    async def test_second_intent_counts_an_attempt(self, tmp_path: Path) -> None:
        """Resending a request clears its old job and counts a second attempt."""
        async with Journal(tmp_path / "j.db") as journal:
            await journal.intent("a", model="m", estimate=Decimal(1))
            await journal.uncertain("a")
            entry = await journal.intent("a", model="m", estimate=Decimal(1))
            assert entry.attempts == 2
            assert entry.state is EntryState.INTENT
            await journal.forget("a")
            assert await journal.get("a") is None

    @pytest.mark.anyio
    async def test_concurrent_writes_all_land(self, tmp_path: Path) -> None:
        """Hundreds of writes at once are all committed (in groups) and readable by SQLite."""
        async with Journal(tmp_path / "j.db") as journal, anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(lambda i=i: journal.intent(f"k{i}", model="m", estimate=1))  # type: ignore[misc]
        conn = sqlite3.connect(tmp_path / "j.db")
        try:
            assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (300,)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            conn.close()

    @pytest.mark.anyio
    async def test_update_of_unknown_key_is_an_error(self, tmp_path: Path) -> None:
        """Recording a job for a key that has no intent is refused, not silently dropped."""
        async with Journal(tmp_path / "j.db") as journal:
            with pytest.raises(ShortWanError, match="no journal entry"):
                await journal.submitted("nope", job_id="1", amount=None)
            # The writer is still alive after a failed operation.
            await journal.intent("a", model="m", estimate=Decimal(1))

    @pytest.mark.anyio
    async def test_closed_journal_refuses_use_and_leaves_no_thread(self, tmp_path: Path) -> None:
        """After aclose the writer thread is gone and further use raises RuntimeError."""

        def writers() -> int:
            return sum(t.name.startswith("shortwan-journal") for t in threading.enumerate())

        journal = Journal(tmp_path / "j.db")
        await journal.intent("a", model="m", estimate=Decimal(1))
        assert writers() == 1
        await journal.aclose()
        await journal.aclose()
        assert writers() == 0
        with pytest.raises(RuntimeError, match="closed"):
            await journal.get("a")

    @pytest.mark.anyio
    async def test_foreign_file_is_refused(self, tmp_path: Path) -> None:
        """A file that is not SQLite gives a ShortWanError naming it."""
        path = tmp_path / "j.db"
        path.write_bytes(b"not a database at all" * 100)
        journal = Journal(path)
        with pytest.raises(ShortWanError, match=r"j\.db"):
            await journal.get("a")
        await journal.aclose()

    def test_request_key_is_stable_and_discriminating(self) -> None:
        """Equal requests share a key; any different argument changes it."""
        a = ImageToVideo(prompt="fox", first_frame_image=URL)
        assert request_key(a) == request_key(ImageToVideo(prompt="fox", first_frame_image=URL))
        assert request_key(a) != request_key(
            ImageToVideo(prompt="fox", first_frame_image=URL, duration=6)
        )
        assert request_key(a).startswith("sha256:")


@contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the journal's write lock from another connection, as another process would."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        if other.in_transaction:
            other.rollback()
        other.close()


@contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """Collect what the event loop reports to its exception handler ("Exception in callback")."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)


async def entry_of(journal: Journal, key: str) -> tuple[EntryState, str | None] | None:
    entry = await journal.get(key)
    return None if entry is None else (entry.state, entry.job_id)


class TestJournalFailures:
    @pytest.mark.anyio
    async def test_one_run_at_a_time(self, tmp_path: Path) -> None:
        """Two runs of one batch would both pay for its requests: the second is refused."""
        path = tmp_path / "j.sqlite"
        async with Journal(path) as first:
            await first.intent("k", model="m", estimate=Decimal("0.17"))
            with pytest.raises(JournalError, match="in use by another run"):
                async with Journal(path) as second:
                    await second.get("k")
        async with Journal(path) as again:  # free once the first is closed
            entry = await again.get("k")
        assert entry is not None

    @pytest.mark.anyio
    async def test_status_beyond_int64_is_stored_clamped(self, tmp_path: Path) -> None:
        """A raw status too big for SQLite INTEGER is stored clamped; the writer lives on."""
        async with Journal(tmp_path / "j.db") as journal:
            for key, status in (("big", 2**70), ("small", -(2**70))):
                await journal.intent(key, model="m", estimate=Decimal(1))
                await journal.submitted(key, job_id=key, amount=Decimal(1))
                await journal.finished(key, error=JobFailedError(key, "x", status=status))
            big, small = await journal.get("big"), await journal.get("small")
            await journal.intent("later", model="m", estimate=Decimal(1))
        assert big is not None
        assert small is not None
        assert (big.state, big.raw_status) == (EntryState.FINISHED, 2**63 - 1)
        assert small.raw_status == -(2**63)
        assert isinstance(big.error, JobFailedError)

    @pytest.mark.anyio
    async def test_locked_file_fails_the_writes_then_recovers(self, tmp_path: Path) -> None:
        """A lock held past busy_timeout fails the waiting writes, records none; later ones land."""
        path = tmp_path / "j.db"
        async with Journal(path, busy_timeout=0.1) as journal:
            await journal.intent("a", model="m", estimate=Decimal(1))
            with write_lock(path):
                results = await asyncio.gather(
                    journal.submitted("a", job_id="j1", amount=Decimal(1)),
                    journal.intent("b", model="m", estimate=Decimal(1)),
                    return_exceptions=True,
                )
            for result in results:
                assert isinstance(result, JournalError)
                assert "locked" in str(result)
                assert "busy_timeout=0.1 s" in str(result)
                assert isinstance(result.__cause__, sqlite3.OperationalError)
            assert await entry_of(journal, "a") == (EntryState.INTENT, None)
            assert await journal.get("b") is None
            # The writer survived: the same writes succeed once the lock is gone.
            await journal.submitted("a", job_id="j1", amount=Decimal(1))
            await journal.intent("b", model="m", estimate=Decimal(1))
            assert await entry_of(journal, "a") == (EntryState.SUBMITTED, "j1")
            assert await entry_of(journal, "b") == (EntryState.INTENT, None)

    @pytest.mark.anyio
    async def test_failed_operation_is_undone_alone(self, tmp_path: Path) -> None:
        """An operation that raises mid-group is rolled back; its neighbours are committed."""
        path = tmp_path / "j.db"

        def bad(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO requests (key, state, model, estimate, updated) "
                "VALUES ('bad', 'intent', 'm', '1', 0)"
            )
            raise RuntimeError("boom")  # any exception, not only sqlite3's

        async with Journal(path, busy_timeout=5) as journal:
            await journal.get("warm-up")
            with write_lock(path) as other:
                # The writer waits on the lock with the first write alone in its group, so the
                # next three queue up and run as one group.
                first = asyncio.ensure_future(journal.intent("a", model="m", estimate=Decimal(1)))
                await asyncio.sleep(0.1)
                group = asyncio.gather(
                    journal.intent("b", model="m", estimate=Decimal(1)),
                    journal._call(bad, write=True),
                    journal.intent("c", model="m", estimate=Decimal(1)),
                    return_exceptions=True,
                )
                await asyncio.sleep(0.05)
                other.rollback()
                await first
                b, failed, c = await group
            assert not isinstance(b, BaseException)
            assert not isinstance(c, BaseException)
            assert (b.state, c.state) == (EntryState.INTENT, EntryState.INTENT)
            assert isinstance(failed, JournalError)
            assert isinstance(failed.__cause__, RuntimeError)
            assert "boom" in str(failed)
            assert await journal.get("bad") is None
            assert {e.key for e in await journal.entries()} == {"a", "b", "c"}
            await journal.forget("c")  # and the writer goes on
            assert await journal.get("c") is None

    @pytest.mark.anyio
    async def test_native_cancel_waits_for_the_write(self, tmp_path: Path) -> None:
        """asyncio.wait_for cancelling a write returns once it is on disk, with no loop error."""
        path = tmp_path / "j.db"
        async with Journal(path, busy_timeout=5) as journal:
            await journal.intent("a", model="m", estimate=Decimal(1))
            with loop_errors() as errors:
                with write_lock(path) as other:
                    asyncio.get_running_loop().call_later(0.3, other.rollback)
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(
                            journal.submitted("a", job_id="j1", amount=None), timeout=0.01
                        )
                    # The cancellation came through only after the write was recorded.
                    assert not other.in_transaction
                    assert await entry_of(journal, "a") == (EntryState.SUBMITTED, "j1")
                # A read behind a blocked write can be abandoned; its answer comes later, unread.
                with write_lock(path) as other:
                    asyncio.get_running_loop().call_later(0.2, other.rollback)
                    write = asyncio.ensure_future(journal.uncertain("a"))
                    await asyncio.sleep(0.02)
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(journal.get("a"), timeout=0.01)
                    await write
                await journal.intent("b", model="m", estimate=Decimal(1))
                await asyncio.sleep(0.05)
            assert errors == []
            assert await entry_of(journal, "a") == (EntryState.UNCERTAIN, "j1")

    def test_busy_timeout_is_checked(self, tmp_path: Path) -> None:
        """A negative or infinite busy_timeout is refused at construction."""
        for bad in (-1.0, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="busy_timeout"):
                Journal(tmp_path / "j.db", busy_timeout=bad)


class TestResume:
    @pytest.mark.anyio
    async def test_rerun_replays_without_sending(self, tmp_path: Path) -> None:
        """A finished batch rerun with its journal creates nothing and replays every outcome."""
        async with FakeShortAPI(run_time=0, failure_rate=0.3, seed=3) as fake:
            items = reqs(20)
            async with Journal(tmp_path / "j.db") as journal:
                first = await run(fake, items, journal=journal)
            assert fake.stats.jobs_created == 20
            async with Journal(tmp_path / "j.db") as journal:
                second = await run(fake, items, journal=journal)
            assert fake.stats.jobs_created == 20
        assert all(o.replayed for o in second)
        assert [(o.job_id, o.ok, o.key) for o in first] == [(o.job_id, o.ok, o.key) for o in second]
        failed = [o for o in second if not o.ok]
        assert failed
        assert all(isinstance(o.error, JobFailedError) for o in failed)
        assert [o.video.url for o in first if o.video] == [o.video.url for o in second if o.video]

    @pytest.mark.anyio
    async def test_interrupted_run_reattaches_created_jobs(self, tmp_path: Path) -> None:
        """Jobs created before the consumer left are collected by id on the rerun, not recreated."""
        # Half the jobs are slow, so they are still running when the first run stops.
        plan = lambda args: JobPlan(run_time=0.6 if int(args["prompt"].split()[1]) % 2 else 0.0)  # noqa: E731
        async with FakeShortAPI(plan=plan) as fake:
            items = reqs(30)
            async with Journal(tmp_path / "j.db") as journal, client_for(fake) as client:
                seen = 0
                async for _outcome in client.generate_many(items, journal=journal, concurrency=30):
                    seen += 1
                    if seen == 10:
                        break
                counts = await journal.counts()
            assert counts[EntryState.SUBMITTED] > 0
            created = fake.stats.jobs_created
            async with Journal(tmp_path / "j.db") as journal:
                outcomes = await run(fake, items, journal=journal, concurrency=30)
            assert fake.stats.jobs_created == created
            assert max(fake.stats.jobs_by_prompt.values()) == 1
        assert [o.index for o in outcomes] == list(range(30))
        assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
        assert len({o.job_id for o in outcomes}) == 30

    @pytest.mark.anyio
    async def test_maybe_sent_is_reported_unless_opted_in(self, tmp_path: Path) -> None:
        """An intent without a job is an uncertain outcome; resubmit_uncertain sends it again."""
        items = reqs(3)
        async with FakeShortAPI(run_time=0) as fake:
            async with Journal(tmp_path / "j.db") as journal:
                # As if the process died right after writing the intent of the second request.
                await journal.intent(request_key(items[1]), model="m", estimate=Decimal(1))
                outcomes = await run(fake, items, journal=journal)
                assert fake.stats.jobs_created == 2
                assert isinstance(outcomes[1].error, SubmissionUncertainError)
                assert outcomes[1].job_id is None
                assert [o.ok for o in outcomes] == [True, False, True]
                again = await run(fake, items, journal=journal, resubmit_uncertain=True)
                entry = await journal.get(request_key(items[1]))
            assert fake.stats.jobs_created == 3
        assert all(o.ok for o in again)
        assert [o.replayed for o in again] == [True, False, True]
        assert entry is not None
        assert entry.attempts == 2

    @pytest.mark.anyio
    async def test_lost_create_answer_is_journaled_uncertain(self, tmp_path: Path) -> None:
        """A create whose answer was lost is marked uncertain; a refused one is forgotten."""
        items = reqs(2)
        async with FakeShortAPI(run_time=0) as fake:
            fake.script("create", [Fault.RESET_AFTER, Fault.CODE_3000] + [Fault.CODE_3000] * 10)
            async with Journal(tmp_path / "j.db") as journal:
                outcomes = await run(fake, items, journal=journal, concurrency=1)
                uncertain = await journal.get(request_key(items[0]))
                refused = await journal.get(request_key(items[1]))
        assert isinstance(outcomes[0].error, SubmissionUncertainError)
        assert uncertain is not None
        assert uncertain.state is EntryState.UNCERTAIN
        assert outcomes[1].job_id is None
        assert outcomes[1].error is not None
        assert refused is None

    @pytest.mark.anyio
    async def test_equal_requests_get_distinct_keys(self, tmp_path: Path) -> None:
        """Asking twice for the same request makes two videos, and a rerun recognises both."""
        item = reqs(1)[0]
        async with FakeShortAPI(run_time=0) as fake:
            async with Journal(tmp_path / "j.db") as journal:
                first = await run(fake, [item, item], journal=journal)
                second = await run(fake, [item, item], journal=journal)
            assert fake.stats.jobs_created == 2
        assert first[0].key != first[1].key
        assert [o.job_id for o in first] == [o.job_id for o in second]

    @pytest.mark.anyio
    async def test_caller_keys(self, tmp_path: Path) -> None:
        """Caller keys name the rows; a key used twice in one batch is refused before sending."""
        a, b = reqs(2)
        items = [
            BatchItem(request=a, key="first"),
            {"prompt": "p 9", "first_frame_image": URL, "key": "second"},
            BatchItem(request=b, key="first"),
        ]
        async with FakeShortAPI(run_time=0) as fake:
            async with Journal(tmp_path / "j.db") as journal:
                outcomes = await run(fake, items, journal=journal, concurrency=1)
                assert {e.key for e in await journal.entries()} == {"first", "second"}
            assert fake.stats.jobs_created == 2
        assert [o.key for o in outcomes[:2]] == ["first", "second"]
        assert isinstance(outcomes[2].error, InvalidRequestError)

    @pytest.mark.anyio
    async def test_cap_covers_earlier_runs(self, tmp_path: Path) -> None:
        """With a journal, max_spend counts what earlier runs of the batch already spent."""
        items = reqs(6)  # durations 2,3,4,2,3,4 s: 0.17 + 0.255 + 0.34 per three
        async with FakeShortAPI(run_time=0) as fake:
            async with Journal(tmp_path / "j.db") as journal:
                await run(fake, items[:3], journal=journal)
                outcomes = await run(fake, items, journal=journal, max_spend="1.0", concurrency=1)
            assert fake.stats.jobs_created == 4
        assert [o.ok for o in outcomes] == [True] * 4 + [False] * 2
        assert all(isinstance(o.error, SpendLimitError) for o in outcomes[4:])


class TestBatchDownloads:
    @pytest.mark.anyio
    async def test_download_to_saves_and_resumes(self, tmp_path: Path) -> None:
        """Videos land in the folder by output name or job id; a rerun downloads nothing again."""
        out = tmp_path / "videos"
        a, b = reqs(2)
        items = [BatchItem(request=a, output="fox.mp4"), b]
        async with FakeShortAPI(run_time=0) as fake:
            async with Journal(tmp_path / "j.db") as journal:
                first = await run(fake, items, journal=journal, download_to=out)
                downloads = len(fake.stats.downloads)
                second = await run(fake, items, journal=journal, download_to=out)
                counts = await journal.counts()
            assert len(fake.stats.downloads) == downloads
        assert first[0].path == (out / "fox.mp4").resolve()
        assert first[1].path == (out / f"{first[1].job_id}.mp4").resolve()
        assert [o.path for o in second] == [o.path for o in first]
        assert counts[EntryState.DOWNLOADED] == 2
        for outcome in first:
            assert outcome.path is not None
            assert outcome.path.read_bytes()[4:8] == b"ftyp"

    @pytest.mark.anyio
    async def test_escaping_output_is_refused_before_paying(self, tmp_path: Path) -> None:
        """An output name that leaves the download folder gets an error and no job is created."""
        items = [{"prompt": "p", "first_frame_image": URL, "output": "../../evil.mp4"}]
        async with FakeShortAPI(run_time=0) as fake:
            outcomes = await run(fake, items, download_to=tmp_path / "out")
            assert fake.stats.creates_received == 0
        assert isinstance(outcomes[0].error, InvalidRequestError)
        assert not (tmp_path / "evil.mp4").exists()

    @pytest.mark.anyio
    async def test_failed_download_keeps_the_video(self, tmp_path: Path) -> None:
        """A download that fails leaves the video in the outcome, with a DownloadError."""
        async with FakeShortAPI(run_time=0) as fake:
            fake.set_fault_rates("download", {Fault.UNAVAILABLE: 1.0})
            outcomes = await run(fake, reqs(1), download_to=tmp_path)
        outcome = outcomes[0]
        assert outcome.video is not None
        assert not outcome.ok
        assert type(outcome.error).__name__ == "DownloadError"
        assert outcome.error is not None
        assert outcome.error.job_id == outcome.job_id

    @pytest.mark.anyio
    async def test_counter_of_prompts_is_one(self, tmp_path: Path) -> None:
        """Without a journal every request is still sent exactly once."""
        async with FakeShortAPI(run_time=0) as fake:
            await run(fake, reqs(10), download_to=tmp_path)
            assert Counter(fake.stats.jobs_by_prompt.values()) == Counter({1: 10})
