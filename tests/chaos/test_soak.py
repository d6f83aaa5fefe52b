"""Chaos soak: thousands of jobs through every fault the fake knows, with and without callbacks.

Run alone with ``python -m pytest -m chaos``. Whatever the faults, every request gets exactly one
outcome, every job the fake created is accounted for by the client, and no prompt is paid twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from shortwan import (
    AsyncShortWan,
    ImageToVideo,
    PollPolicy,
    RetryPolicy,
    SubmissionUncertainError,
    Timeouts,
)
from shortwan.callbacks import CallbackReceiver
from shortwan.journal import Journal
from shortwan.testing import FakeShortAPI, Fault

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

COUNT = 2000
POLL = PollPolicy(
    min_interval=0.02,
    max_interval=0.2,
    prior_seconds_per_video_second=0.01,
    max_queries_per_second=5000,
    max_concurrent_queries=32,
    callback_interval=0.5,
)
# Every fault kind on every endpoint. The rates are per request, and queries and downloads are
# retried, so each job meets several faults on its way.
FAULTS = {
    "create": {
        Fault.RATE_LIMIT: 0.02,
        Fault.UNAVAILABLE: 0.02,
        Fault.CODE_3000: 0.02,
        Fault.RESET_BEFORE: 0.01,
        Fault.RESET_AFTER: 0.01,
        Fault.SLOW_AFTER: 0.005,
        Fault.HTML_502: 0.01,
        Fault.TRUNCATED_JSON: 0.01,
    },
    "query": {
        Fault.RATE_LIMIT: 0.02,
        Fault.UNAVAILABLE: 0.02,
        Fault.CODE_3000: 0.02,
        Fault.RESET_BEFORE: 0.02,
        Fault.RESET_AFTER: 0.02,
        Fault.SLOW_AFTER: 0.005,
        Fault.HTML_502: 0.02,
        Fault.TRUNCATED_JSON: 0.02,
    },
    "download": {
        Fault.UNAVAILABLE: 0.03,
        Fault.RESET_BEFORE: 0.03,
        Fault.TRUNCATED_JSON: 0.03,
        Fault.HTML_502: 0.03,
    },
}


def fake_options(seed: int) -> dict[str, Any]:
    """Return the fake's settings for one soak: the jobs, their failures and every fault."""
    return {
        "queue_time": 0.02,
        "run_time": 0.15,
        "jitter": 0.8,
        "failure_rate": 0.05,
        "seed": seed,
        "fault_rates": FAULTS,
        "slow_delay": 0.6,
        "retry_after": "0",
        "callback_drop": 0.2,
        "callback_duplicate": 0.2,
        "callback_delay": 0.05,
    }


async def plain_loop(fake: FakeShortAPI, reqs: list[ImageToVideo]) -> int:
    """Make the videos the way a hand-written loop would, without a single retry: one create,
    a query every 50 ms until the job ends, one download. Return the videos it got."""
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    videos = 0
    limit = anyio.Semaphore(256)

    async def one(session: aiohttp.ClientSession, request: ImageToVideo) -> None:
        nonlocal videos
        async with limit:
            try:
                body = {
                    "model": request.model,
                    "args": {
                        "prompt": request.prompt,
                        "first_frame_image": request.first_frame_image,
                        "duration": request.duration,
                    },
                }
                async with session.post(
                    f"{fake.url}/api/v1/job/create", json=body, headers=headers
                ) as r:
                    job_id = (await r.json())["data"]["job_id"]
                while True:
                    await anyio.sleep(0.05)
                    async with session.get(
                        f"{fake.url}/api/v1/job/query", params={"id": job_id}, headers=headers
                    ) as r:
                        data = (await r.json())["data"]
                    if data["status"] >= 2:
                        break
                if data["status"] != 2:
                    return
                async with session.get(data["result"]["videos"][0]["url"]) as r:
                    if r.status == 200 and await r.read():
                        videos += 1
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError):
                return  # no retries: this job is lost to the loop

    timeout = aiohttp.ClientTimeout(total=2, sock_read=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session, anyio.create_task_group() as tg:
        for request in reqs:
            tg.start_soon(one, session, request)
    return videos


def requests() -> list[ImageToVideo]:
    return [
        ImageToVideo(prompt=f"soak {i}", first_frame_image="https://e.com/a.png", duration=2)
        for i in range(COUNT)
    ]


@pytest.mark.parametrize("callbacks", [False, True], ids=["polling", "callbacks"])
@pytest.mark.anyio
async def test_soak(tmp_path: Path, callbacks: bool) -> None:
    """2,000 jobs under every fault: one outcome each, every fake job accounted for, none twice."""
    before = asyncio.all_tasks()
    receiver = CallbackReceiver() if callbacks else None
    outcomes = []
    async with FakeShortAPI(**fake_options(11 + callbacks)) as fake:
        if receiver is not None:
            await receiver.__aenter__()
        try:
            async with (
                Journal(tmp_path / "soak.sqlite", synchronous="normal") as journal,
                AsyncShortWan(
                    fake.api_key,
                    base_url=fake.url,
                    poll=POLL,
                    timeouts=Timeouts(read=0.3, request=2),
                    retry=RetryPolicy(attempts=8, timeout=20),
                    callbacks=receiver,
                ) as client,
            ):
                async for outcome in client.generate_many(
                    requests(),
                    concurrency=256,
                    timeout=30,
                    journal=journal,
                    download_to=tmp_path / "videos",
                ):
                    outcomes.append(outcome)
                tracked = {record.id for record in client.jobs}
                adopted = client.jobs.adopted
        finally:
            if receiver is not None:
                await receiver.aclose()
        fake_jobs = {job.id: job.prompt for job in fake.jobs.values()}
        per_prompt = Counter(fake.stats.jobs_by_prompt)

    # Exactly one outcome per request.
    assert sorted(o.index for o in outcomes) == list(range(COUNT))
    by_prompt = {o.request.prompt: o for o in outcomes if o.request is not None}
    assert len(by_prompt) == COUNT
    # No prompt paid twice.
    assert max(per_prompt.values()) == 1
    # Every job the fake made is one the client reported, or belongs to a request it flagged
    # uncertain (and, with callbacks, possibly adopted since).
    reported = {o.job_id for o in outcomes if o.job_id is not None}
    uncertain = {
        o.request.prompt
        for o in outcomes
        if isinstance(o.error, SubmissionUncertainError) and o.request is not None
    }
    for job_id, prompt in fake_jobs.items():
        assert job_id in reported or prompt in uncertain, (job_id, by_prompt[prompt].error)
    assert reported <= set(fake_jobs)
    assert len(reported) <= len(fake_jobs) <= len(reported) + len(uncertain)
    # Reported jobs are tracked by the client (the table keeps up to 10,000 finished jobs).
    assert reported <= tracked
    # Most requests made it through, and every success has its file.
    kinds = Counter(type(o.error).__name__ if o.error else "ok" for o in outcomes)
    mode = f"callbacks ({adopted} adopted)" if callbacks else "polling"
    print(f"{mode}: {dict(kinds)}, {len(fake_jobs)} jobs made")
    assert kinds["ok"] >= 0.85 * COUNT, kinds
    for outcome in outcomes:
        if outcome.ok:
            assert outcome.path is not None
            assert outcome.path.stat().st_size > 0
    if callbacks:
        assert adopted <= len(uncertain)
    # Nothing left running in this loop but the test itself.
    await asyncio.sleep(0)
    others = asyncio.all_tasks() - before
    assert not others, others


@pytest.mark.anyio
async def test_soak_delivers_more_than_a_plain_loop(tmp_path: Path) -> None:
    """Under the same faults, the SDK delivers more videos than a loop without retries, which
    still delivers some (so the faults leave both something to do)."""
    async with FakeShortAPI(**fake_options(21)) as fake:
        plain = await plain_loop(fake, requests())
    async with (
        FakeShortAPI(**fake_options(21)) as fake,
        AsyncShortWan(
            fake.api_key,
            base_url=fake.url,
            poll=POLL,
            timeouts=Timeouts(read=0.3, request=2),
            retry=RetryPolicy(attempts=8, timeout=20),
        ) as client,
    ):
        ours = 0
        async for outcome in client.generate_many(
            requests(), concurrency=256, timeout=30, download_to=tmp_path / "videos"
        ):
            ours += outcome.ok
    print(f"videos: shortwan {ours}, plain loop without retries {plain}, of {COUNT}")
    assert 0 < plain < ours
    assert ours >= 0.85 * COUNT
