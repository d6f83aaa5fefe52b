"""The asyncio helpers: the deadline watch that ends many tasks' waits with one timer."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import anyio
import pytest

from shortwan._aio import DeadlineWatch


async def _sleeper(watch: DeadlineWatch, seconds: float, wait: float) -> tuple[bool, bool]:
    """Watch the current task for ``seconds`` and sleep ``wait``; return whether the sleep was
    cancelled and whether the watch took the cancellation for its own alone."""
    loop = asyncio.get_running_loop()
    token = watch.watch(loop.time() + seconds)
    assert token is not None
    try:
        await asyncio.sleep(wait)
    except asyncio.CancelledError as exc:
        return True, watch.leave(token, exc)
    return False, watch.leave(token)


class TestDeadlineWatch:
    @pytest.mark.anyio
    async def test_a_wait_past_its_deadline_is_cancelled_by_the_watch_alone(self) -> None:
        """A task still waiting at its deadline is cancelled, and the cancellation is the
        watch's own: the task's cancellation count is back where it was."""
        watch = DeadlineWatch()
        start = anyio.current_time()
        passed, own = await asyncio.get_running_loop().create_task(_sleeper(watch, 0.05, 5))
        assert (passed, own) == (True, True)
        assert 0.04 <= anyio.current_time() - start < 1.0
        watch.close()

    @pytest.mark.anyio
    async def test_a_wait_that_ends_first_is_left_alone(self) -> None:
        """A wait that ends before its deadline is not cancelled, and the timer is disarmed."""
        watch = DeadlineWatch()
        assert await _sleeper(watch, 5, 0.01) == (False, False)
        assert watch._live == {}
        watch.close()
        assert watch._timer is None

    @pytest.mark.anyio
    async def test_many_watches_share_one_timer_and_each_ends_at_its_deadline(self) -> None:
        """Fifty tasks with staggered deadlines: one timer at a time serves them, the ones whose
        wait outlasts the deadline are cancelled, the others are not."""
        watch = DeadlineWatch()
        loop = asyncio.get_running_loop()
        tasks = []
        timers = set()
        for n in range(50):
            # Even tasks wait past their deadline, odd ones end before it.
            wait = 0.2 if n % 2 == 0 else 0.001
            tasks.append(loop.create_task(_sleeper(watch, 0.02 + n * 0.001, wait)))
            await asyncio.sleep(0)
            timers.add(id(watch._timer))
        results = await asyncio.gather(*tasks)
        assert len(timers) == 1
        assert [passed for passed, _ in results] == [n % 2 == 0 for n in range(50)]
        assert all(own for passed, own in results if passed)
        assert watch._live == {}
        assert watch._passed == {}
        watch.close()

    @pytest.mark.anyio
    async def test_a_deadline_earlier_than_a_watched_one_is_refused(self) -> None:
        """Deadlines must come in order: an earlier one is left for the caller to time."""
        watch = DeadlineWatch()
        now = asyncio.get_running_loop().time()
        first = watch.watch(now + 10)
        assert first is not None
        assert watch.watch(now + 5) is None
        assert watch.leave(first) is False
        watch.close()

    @pytest.mark.skipif(sys.version_info < (3, 11), reason="Python 3.10 counts no cancellations")
    @pytest.mark.anyio
    async def test_a_cancellation_from_outside_at_the_deadline_is_not_taken_for_the_watch(
        self,
    ) -> None:
        """When someone else cancels the task as its deadline passes, the watch takes back only
        its own cancellation: the other one is left to propagate."""
        watch = DeadlineWatch()
        loop = asyncio.get_running_loop()
        seen: list[bool] = []

        deadline = loop.time() + 10

        async def victim() -> None:
            token = watch.watch(deadline)
            assert token is not None
            try:
                await asyncio.sleep(20)
            except asyncio.CancelledError as exc:
                seen.append(watch.leave(token, exc))
                raise

        task = loop.create_task(victim())
        await asyncio.sleep(0.01)
        # Both in one step of the loop, before the task runs again: someone else's cancellation
        # and the deadline passing (the timer's callback, called as the loop would call it).
        task.cancel()
        watch._passing(deadline)
        await asyncio.sleep(0.05)
        assert task.cancelled()
        assert seen == [False]
        watch.close()

    @pytest.mark.anyio
    async def test_a_watch_after_the_timer_found_nothing_left_still_fires(self) -> None:
        """Once the timer has fired on an empty watch, the next watch arms it again."""
        watch = DeadlineWatch()
        # Ends first, leaving the timer armed for its deadline.
        assert await _sleeper(watch, 0.02, 0.001) == (False, False)
        await asyncio.sleep(0.05)  # the timer fires and finds nothing to cancel
        passed, own = await _sleeper(watch, 0.02, 5)
        assert (passed, own) == (True, True)
        watch.close()

    @pytest.mark.anyio
    async def test_deadlines_that_passed_while_the_loop_was_busy_all_end_at_once(self) -> None:
        """A timer that fires late ends every deadline already past, in that one call."""
        watch = DeadlineWatch()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(_sleeper(watch, 0.01 + n * 0.0001, 5)) for n in range(100)]
        await asyncio.sleep(0)  # every task is watched
        time.sleep(0.05)  # noqa: ASYNC251 - the loop is held up on purpose
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # one loop iteration has run the timer
        assert watch._live == {}
        results = await asyncio.gather(*tasks)
        assert all(passed and own for passed, own in results)
        watch.close()

    @pytest.mark.skipif(sys.version_info < (3, 11), reason="Python 3.10 counts no cancellations")
    @pytest.mark.anyio
    async def test_a_cancellation_swallowed_below_is_taken_back(self) -> None:
        """When the code below swallows the watch's cancellation, leaving takes it back: the
        task's count of cancellations is where it was."""
        watch = DeadlineWatch()
        loop = asyncio.get_running_loop()

        async def swallower() -> int:
            token = watch.watch(loop.time() + 0.02)
            assert token is not None
            with contextlib.suppress(asyncio.CancelledError):  # as a careless library might
                await asyncio.sleep(5)
            assert watch.leave(token) is False  # no cancellation came out: nothing to turn
            task = asyncio.current_task()
            assert task is not None
            return task.cancelling()

        assert await loop.create_task(swallower()) == 0
        assert watch._passed == {}
        watch.close()

    @pytest.mark.anyio
    async def test_close_leaves_the_deadlines_of_waits_under_way(self) -> None:
        """Closing the watch does not take away the limit of a wait still under way."""
        watch = DeadlineWatch()
        loop = asyncio.get_running_loop()
        task = loop.create_task(_sleeper(watch, 0.05, 5))
        await asyncio.sleep(0)
        watch.close()
        with anyio.fail_after(2):
            assert await task == (True, True)
        watch.close()
        assert watch._timer is None
