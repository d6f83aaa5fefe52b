"""Callback delivery: each job's end POSTed to its callback URL, late, twice or never if asked."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import random
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any, Final, Literal

import aiohttp
import attrs

from ._jobs import FakeJob
from ._stats import FakeStats

__all__ = ["CALLBACK_SHAPES", "CallbackShape", "Callbacks"]

CallbackShape = Literal["envelope", "bare"]
CALLBACK_SHAPES: Final = ("envelope", "bare")
# A duplicate follows its original this soon: close enough to race with it.
_DUPLICATE_GAP: Final = 0.01


@attrs.define(kw_only=True, eq=False)
class Callbacks:
    """Deliver callbacks from one task, in due order, with the trouble the knobs ask for.

    Args:
        jobs: every job, by id.
        stats: where deliveries are counted.
        rng: the fake's seeded random source.
        describe: the ``data`` of a job, as a query would answer it.
        envelope: wraps ``data`` in the envelope.
        spawn: runs a coroutine as a background task of the fake.
        drop: share of callbacks never sent.
        duplicate: share of callbacks sent twice.
        delay: seconds between a job's end and its callback.
        shape: ``envelope`` (``{"code":0,"data":...}``) or ``bare`` (the data alone).
    """

    _jobs: Mapping[str, FakeJob]
    _stats: FakeStats
    _rng: random.Random
    _describe: Callable[[FakeJob], dict[str, Any]]
    _envelope: Callable[[int, Any], dict[str, Any]]
    _spawn: Callable[[Coroutine[Any, Any, None]], None]
    drop: float
    duplicate: float
    delay: float
    shape: CallbackShape
    _due: list[tuple[float, int, str, bool]] = attrs.field(init=False, factory=list)
    _order: Iterator[int] = attrs.field(init=False, factory=itertools.count)
    _wake: asyncio.Event | None = attrs.field(init=False, default=None)
    _session: aiohttp.ClientSession | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if not (0 <= self.drop <= 1 and 0 <= self.duplicate <= 1):
            raise ValueError("callback_drop and callback_duplicate must be shares from 0 to 1")
        if not self.delay >= 0:
            raise ValueError(f"callback_delay must be seconds >= 0, not {self.delay!r}")
        if self.shape not in CALLBACK_SHAPES:
            raise ValueError(f"callback_shape must be envelope or bare, not {self.shape!r}")

    def job_created(self, job: FakeJob) -> None:
        """Plan the callback of ``job``, if it asked for one."""
        if job.callback_url:
            self._schedule(job.id, job.run_end + self.delay)

    def _schedule(self, job_id: str, due: float, *, duplicate: bool = False) -> None:
        heapq.heappush(self._due, (due, next(self._order), job_id, duplicate))
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Send callbacks as they fall due, until cancelled."""
        self._wake = wake = asyncio.Event()
        while True:
            if not self._due:
                wake.clear()
                await wake.wait()
                continue
            due, _order, job_id, duplicate = self._due[0]
            wait = due - time.monotonic()
            if wait > 0:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)
                continue
            heapq.heappop(self._due)
            if not duplicate:
                if self._rng.random() < self.drop:
                    continue
                if self._rng.random() < self.duplicate:
                    self._schedule(job_id, time.monotonic() + _DUPLICATE_GAP, duplicate=True)
            self._spawn(self._send(self._jobs[job_id]))

    async def _send(self, job: FakeJob) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        data = self._describe(job)
        body = data if self.shape == "bare" else self._envelope(0, data)
        assert job.callback_url is not None  # noqa: S101 - only scheduled with one
        try:
            async with self._session.post(
                job.callback_url,
                data=json.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response:
                await response.read()
                ok = response.status < 400
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            self._stats.callbacks_sent += 1
        else:
            self._stats.callbacks_failed += 1

    async def aclose(self) -> None:
        """Close the session callbacks were sent with (the tasks are the fake's to end)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
