"""The multi-worker example served for real: gunicorn, four aiohttp workers on one port, a real
redis-server, and FakeShortAPI calling back on whichever worker the kernel picks.

Every request goes out on a new connection, so the kernel chooses its worker; each answer names
the process that gave it, which is how a test knows that a job submitted through one worker was
awaited through another.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_harness import RedisServer

from shortwan.testing import FakeShortAPI, Fault

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._web_workers import fresh_session, get_json, serve, worker_stats

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(180)]

ARGS = {"prompt": "a fox", "first_frame_image": "https://example.com/a.png", "duration": 2}
EVIL = "https://evil.example/planted.mp4"


@asynccontextmanager
async def backend(
    fake: FakeShortAPI, redis: RedisServer, tmp_path: Path, *, callback_interval: float = 30
) -> AsyncIterator[str]:
    env = {
        "FAKE_URL": fake.url,
        "FAKE_KEY": fake.api_key,
        "REDIS_URL": redis.url,
        "NAMESPACE": "t" + secrets.token_hex(6),
        "CALLBACK_INTERVAL": str(callback_interval),
    }
    async with serve(workers=4, env=env, log=tmp_path / "gunicorn.log") as base:
        yield base


@asynccontextmanager
async def kept_on(base: str, wanted: Callable[[int], bool]) -> AsyncIterator[aiohttp.ClientSession]:
    """Yield a session whose one kept connection is served by a worker ``wanted`` accepts."""
    while True:
        connector = aiohttp.TCPConnector(limit=1)  # one connection: every request, one worker
        async with aiohttp.ClientSession(connector=connector) as session:
            _status, me = await get_json(session, "GET", f"{base}/stats")
            if wanted(me["worker"]):
                yield session
                return


async def submit(base: str, args: dict[str, Any], on: int | None = None) -> tuple[str, int]:
    """Submit a job through worker ``on``, or through whichever the kernel picks."""
    chosen = fresh_session() if on is None else kept_on(base, lambda worker: worker == on)
    async with chosen as session:
        status, body = await get_json(session, "POST", f"{base}/videos", args)
    assert status == 202, body
    assert on is None or body["worker"] == on
    return body["job_id"], body["worker"]


async def wait_elsewhere(base: str, job_id: str, not_on: int) -> dict[str, Any]:
    """Await ``job_id`` through a worker other than ``not_on``."""
    async with kept_on(base, lambda worker: worker != not_on) as session:
        status, body = await get_json(session, "GET", f"{base}/videos/{job_id}?wait=20")
    assert status == 200, body
    assert body["worker"] != not_on
    return dict(body)


async def run_jobs(base: str, count: int, tag: str) -> list[tuple[str, int, dict[str, Any]]]:
    """Submit ``count`` jobs through each worker in turn and await each through another one;
    return what was seen."""
    workers = sorted(await worker_stats(base, 4))
    seen: list[tuple[str, int, dict[str, Any]]] = []

    async def one(i: int) -> None:
        on = workers[i % len(workers)]
        job_id, submitted_on = await submit(base, {**ARGS, "prompt": f"{tag} {i}"}, on)
        seen.append((job_id, submitted_on, await wait_elsewhere(base, job_id, submitted_on)))

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)
    return seen


async def test_four_workers_deliver_every_job(redis_server: RedisServer, tmp_path: Path) -> None:
    """Four workers, callbacks landing anywhere: no callback answered 404, every job delivered
    through a worker other than the one it was submitted through, ≤ 1.2 queries per job."""
    n = 60
    async with (
        FakeShortAPI(run_time=0.5, jitter=0.3) as fake,
        backend(fake, redis_server, tmp_path) as base,
    ):
        seen = await run_jobs(base, n, "four")
        stats = fake.stats
        figures = await worker_stats(base, 4)
    assert len(seen) == n
    assert all(body["status"] == "succeeded" for _id, _on, body in seen)
    assert all(body["url"].startswith(fake.url) for _id, _on, body in seen)
    assert len({on for _id, on, _body in seen}) == 4  # submitted through every worker
    assert stats.callbacks_sent == n, stats.summary()
    assert stats.callbacks_failed == 0, stats.summary()  # not one 404 (nor another refusal)
    assert stats.jobs_created == n
    # The worker that made each job confirmed it once; the waiter elsewhere read its end.
    assert stats.queries <= 1.2 * n, Counter(stats.queries_by_job.values())
    # Most callbacks landed on a worker that did not hold their token, and reached the one
    # that did.
    assert sum(f["forwarded"] for f in figures.values()) > 0
    assert sum(f["from_other_workers"] for f in figures.values()) > 0
    assert sum(f["rejected"] for f in figures.values()) == 0


async def test_lost_create_adopted_through_another_worker(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Creates whose answers are lost are adopted once their callbacks land, on any worker."""
    async with FakeShortAPI(run_time=0.5) as fake, backend(fake, redis_server, tmp_path) as base:
        fake.script("create", [Fault.RESET_AFTER] * 6)
        statuses = []
        # Through each worker in turn: wherever the kernel hands the callbacks (often all to
        # one worker), some land on a worker that did not send their create.
        workers = sorted(await worker_stats(base, 4))
        for i in range(6):
            on = workers[i % len(workers)]
            async with kept_on(base, lambda worker, on=on: worker == on) as session:
                status, _body = await get_json(
                    session, "POST", f"{base}/videos", {**ARGS, "prompt": f"lost {i}"}
                )
            statuses.append(status)
        assert statuses == [502] * 6  # each submit: SubmissionUncertainError
        job_ids = list(fake.jobs)
        assert len(job_ids) == 6
        log = tmp_path / "gunicorn.log"

        def adopted() -> list[str]:
            # Each adoption is logged by the worker that sent the create, wherever its
            # callback landed.
            return sorted(
                line.split("adopted job ", 1)[1].split(":", 1)[0]
                for line in log.read_text().splitlines()
                if "adopted job " in line
            )

        # Nobody asks about the jobs before their callbacks: a worker that had attached one by
        # id would rightly refuse to adopt it.
        with anyio.fail_after(20):
            while adopted() != sorted(job_ids):
                await anyio.sleep(0.1)
        results = []
        async with fresh_session() as session:
            for job_id in job_ids:
                results.append(await get_json(session, "GET", f"{base}/videos/{job_id}?wait=20"))
        stats = fake.stats
        figures = await worker_stats(base, 4)
    assert all(body["status"] == "succeeded" for _status, body in results)
    assert stats.callbacks_sent == 6
    assert stats.callbacks_failed == 0
    assert sum(f["forwarded"] for f in figures.values()) > 0  # some landed elsewhere


async def test_forged_and_duplicate_callbacks_never_accepted(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Fuzzed forged, near-miss and duplicate callbacks spread over the workers: unknown tokens
    are 404, no forged body plants its URL, and every job ends with the fake's own video."""
    async with (
        FakeShortAPI(run_time=3.0, callback_duplicate=1.0) as fake,
        backend(fake, redis_server, tmp_path) as base,
    ):
        jobs = [await submit(base, {**ARGS, "prompt": f"fuzz {i}"}) for i in range(4)]
        urls = {job_id: fake.jobs[job_id].callback_url for job_id, _on in jobs}
        tokens = {job_id: str(url).rsplit("/", 1)[1] for job_id, url in urls.items()}
        prefix = f"{base}/shortwan/callbacks"
        answers: list[tuple[str, int]] = []
        async with fresh_session() as session:

            @settings(
                max_examples=60,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture],
                database=None,
            )
            @given(
                pick=st.integers(0, 3),
                how=st.sampled_from(["real", "flip", "short", "long", "random", "case"]),
                status=st.sampled_from([1, 2, 3, 7]),
                shape=st.sampled_from(["envelope", "bare", "junk"]),
            )
            def forge(pick: int, how: str, status: int, shape: str) -> None:
                job_id = jobs[pick][0]
                token = tokens[job_id]
                wrong = {
                    "real": token,
                    "flip": token[:-1] + ("A" if token[-1] != "A" else "B"),
                    "short": token[:-1],
                    "long": token + "x",
                    "random": secrets.token_urlsafe(32),
                    "case": token.swapcase(),
                }[how]
                data = {"id": job_id, "status": status, "result": {"videos": [{"url": EVIL}]}}
                body = {
                    "envelope": json.dumps({"code": 0, "data": data}).encode(),
                    "bare": json.dumps(data).encode(),
                    "junk": b"\x00not json",
                }[shape]

                async def send() -> int:
                    async with session.post(f"{prefix}/{wrong}", data=body) as response:
                        await response.read()
                        return response.status

                answers.append((how, anyio.from_thread.run(send)))

            await anyio.to_thread.run_sync(forge)
            results = [
                await get_json(session, "GET", f"{base}/videos/{job_id}?wait=20")
                for job_id, _on in jobs
            ]
        stats = fake.stats
    assert answers
    assert all(status == 404 for how, status in answers if how != "real")
    assert all(status == 200 for how, status in answers if how == "real")
    assert all(body["status"] == "succeeded" for _status, body in results)
    assert all(body["url"].startswith(fake.url) and body["url"] != EVIL for _s, body in results)
    # Each job's callback came twice: the first always finds its token (wherever it lands); a
    # duplicate after the job ended finds it let go, as on a single worker.
    assert stats.callbacks_sent >= 4
    assert stats.callbacks_sent + stats.callbacks_failed == 8


async def test_redis_stopped_the_safety_net_delivers(
    restartable_redis: RedisServer, tmp_path: Path
) -> None:
    """Redis stopped before the jobs end: foreign callbacks cannot be routed (503), and the
    safety-net poll still delivers every job."""
    n = 12
    async with (
        FakeShortAPI(run_time=1.0) as fake,
        backend(fake, restartable_redis, tmp_path, callback_interval=1.0) as base,
    ):
        # Through each worker in turn: wherever the kernel hands the callbacks (often all to
        # one worker), most of them land on a worker that did not make their job.
        workers = sorted(await worker_stats(base, 4))
        jobs = [
            await submit(base, {**ARGS, "prompt": f"down {i}"}, workers[i % len(workers)])
            for i in range(n)
        ]
        assert len({on for _id, on in jobs}) == 4
        restartable_redis.stop()
        results = []
        async with fresh_session() as session:
            for job_id, _on in jobs:
                results.append(await get_json(session, "GET", f"{base}/videos/{job_id}?wait=30"))
        stats = fake.stats
        restartable_redis.start()
    assert all(body["status"] == "succeeded" for _status, body in results)
    assert stats.callbacks_sent + stats.callbacks_failed == n
    assert stats.callbacks_failed > 0  # some landed on a worker that could not route them
