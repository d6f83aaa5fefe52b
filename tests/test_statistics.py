"""statistics(): frozen snapshots of the client's figures, and counters nobody can overwrite."""

from __future__ import annotations

import anyio
import attrs
import pytest
from helpers import client_for, req

from shortwan import ClientStatistics, JobState
from shortwan.callbacks import CallbackReceiver
from shortwan.testing import FakeShortAPI


class TestClientStatistics:
    @pytest.mark.anyio
    async def test_a_snapshot_holds_the_figures_of_its_moment(self) -> None:
        """Two finished jobs: counted, charged and queried; a later job leaves it as it was."""
        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake) as client:
            before = client.statistics()
            outcomes = await client.gather([req("a", duration=2), req("b", duration=4)])
            assert all(o.ok for o in outcomes)
            after = client.statistics()
            await client.generate(req("c"))
        assert isinstance(after, ClientStatistics)
        assert before.jobs.jobs == 0
        assert before.polling.queries_sent == 0
        assert after.jobs.jobs == 2
        assert after.jobs.counts == {JobState.SUCCEEDED: 2}
        assert after.jobs.spent == after.jobs.committed == req(duration=6).estimated_cost
        assert after.polling.queries_sent >= 2
        assert after.polling.jobs_learned_from == 2
        assert after.polling.seconds_per_video_second > 0
        assert after.callbacks is None
        assert client.statistics().jobs.jobs == 3

    @pytest.mark.anyio
    async def test_a_snapshot_cannot_be_changed(self) -> None:
        """The snapshot and its parts are frozen, its counts too."""
        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake) as client:
            await client.generate(req("x"))
            snapshot = client.statistics()
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            snapshot.jobs = snapshot.jobs  # type: ignore[misc]
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            snapshot.polling.queries_sent = 0  # type: ignore[misc]
        with pytest.raises(TypeError):
            snapshot.jobs.counts[JobState.FAILED] = 1  # type: ignore[index]

    @pytest.mark.anyio
    async def test_callback_figures_come_with_a_receiver(self) -> None:
        """With a receiver, the snapshot counts its callbacks and its live tokens: one while a
        job runs, none once it has ended."""
        async with (
            FakeShortAPI(run_time=0.5) as fake,
            CallbackReceiver() as receiver,
            client_for(fake, callbacks=receiver) as client,
        ):
            with anyio.fail_after(10):
                job = await client.submit(req("called back"))
                live = client.statistics().callbacks
                assert live is not None
                assert live.listening == 1
                await job.result()
            stats = client.statistics().callbacks
        assert stats is not None
        assert stats.received >= 1
        assert stats.rejected == 0
        assert stats.listening == 0


class TestReadOnlyCounters:
    @pytest.mark.anyio
    async def test_counters_are_read_only(self) -> None:
        """The table's, the poller's and the receiver's counters can be read, not set."""
        receiver = CallbackReceiver("https://api.example.com")
        async with FakeShortAPI(run_time=0.05) as fake, client_for(fake) as client:
            table = client.jobs
            for name in ("uncertain", "adopted", "committed", "refunded", "events_dropped"):
                with pytest.raises(AttributeError):
                    setattr(table, name, 0)
            await client.generate(req("counted"))
            poller = client._engine.poller
            sent = poller.queries_sent
            assert sent >= 1
            with pytest.raises(AttributeError):
                poller.queries_sent = 0  # type: ignore[misc]
            assert poller.queries_sent == sent
        for name in ("received", "rejected"):
            with pytest.raises(AttributeError):
                setattr(receiver, name, 0)
        assert receiver.statistics().received == receiver.received == 0
