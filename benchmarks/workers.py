"""A web backend of four workers against one: callbacks that land on any worker.

Run: ``python -m benchmarks.workers [--quick]``. The fake service runs in its own process, a real
``redis-server`` in another, and ``examples/multiworker_backend.py`` under gunicorn with one
worker, then with four on one port. The same jobs (same prompts, same lognormal running times)
are submitted through the backend, each on a new connection (so the kernel picks the worker), and
each is awaited through a worker other than the one it was submitted through (with one worker,
through that one). The service calls back on whichever worker the kernel picks. Figures: the
median time from a job's end to its result reaching the waiter, and queries per job (counted at
the fake).
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from benchmarks._harness import FakeServer, Section, Target, fake_server, machine, median, num
from benchmarks._web_workers import fresh_session, get_json, redis_server, serve, worker_stats
from benchmarks.engine import MEDIAN_JOB, SIGMA, plan_for
from shortwan import PollPolicy

CALLBACK_DELAY = 0.1
DEFAULT_SAFETY_NET = PollPolicy().callback_interval
ARGS = {"first_frame_image": "https://example.com/frame.png", "duration": 5}


async def submit_and_wait(base: str, prompt: str, workers: int) -> tuple[str, float, int]:
    """Submit one job, await it through another worker; return its id, when its result came,
    and how many other workers were tried before one was found."""
    async with fresh_session() as session:
        status, created = await get_json(
            session, "POST", f"{base}/videos", {**ARGS, "prompt": prompt}
        )
    assert status == 202, created
    tries = 0
    while True:
        # One kept connection: the worker that says who it is also answers the wait.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            _status, me = await get_json(session, "GET", f"{base}/stats")
            if workers > 1 and me["worker"] == created["worker"]:
                tries += 1
                continue
            status, done = await get_json(
                session, "GET", f"{base}/videos/{created['job_id']}?wait=60"
            )
            seen = time.monotonic()
        assert done["status"] == "succeeded", done
        return str(created["job_id"]), seen, tries


async def run(
    server: FakeServer, redis_url: str, *, workers: int, n: int, safety_net: float, log: Path
) -> dict[str, Any]:
    """Run ``n`` jobs through a backend of ``workers`` workers; return what was measured."""
    env = {
        "FAKE_URL": server.url,
        "FAKE_KEY": server.api_key,
        "REDIS_URL": redis_url,
        "NAMESPACE": "bench" + secrets.token_hex(4),
        "CALLBACK_INTERVAL": str(safety_net),
    }
    async with serve(workers=workers, env=env, log=log) as base:
        before = server.stats()
        seen: dict[str, float] = {}

        async def one(i: int) -> None:
            job_id, at, _tries = await submit_and_wait(base, f"workers {i}", workers)
            seen[job_id] = at

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        after = server.stats()
        figures = await worker_stats(base, workers)
    jobs = server.jobs()
    lags = [at - jobs[job_id][1] for job_id, at in seen.items()]
    return {
        "lag": median(lags),
        "queries": (after["queries"] - before["queries"]) / n,
        "refused": after["callbacks_failed"] - before["callbacks_failed"],
        "forwarded": sum(f["forwarded"] for f in figures.values()),
    }


def bench(quick: bool) -> Section:
    """Measure one worker and four on the same jobs, in one run."""
    n = 100 if quick else 200
    plan, scale = plan_for(quick)
    # As in the callbacks benchmark, the safety net keeps its default (120 s, unscaled): every
    # result comes through a callback. The last row scales it like the jobs (the production
    # ratio), which shows what the waiters' own safety-net queries cost.
    contenders = [
        ("1 worker", 1, DEFAULT_SAFETY_NET),
        ("4 workers", 4, DEFAULT_SAFETY_NET),
        ("4 workers, safety net scaled", 4, DEFAULT_SAFETY_NET / scale),
    ]
    rows: list[list[object]] = []
    with (
        tempfile.TemporaryDirectory() as folder,
        redis_server() as redis_url,
        fake_server(plan=plan, callback_delay=CALLBACK_DELAY) as server,
    ):
        for name, workers, safety_net in contenders:
            log = Path(folder) / f"gunicorn-{len(rows)}.log"
            got = anyio.run(
                partial(
                    run, server, redis_url, workers=workers, n=n, safety_net=safety_net, log=log
                )
            )
            rows.append(
                [
                    name,
                    safety_net,
                    got["queries"],
                    got["lag"] * 1000,
                    got["refused"],
                    got["forwarded"],
                ]
            )
    one, four = rows[0], rows[1]
    ratio = num(four[3]) / num(one[3])
    return Section(
        key="workers",
        title=f"A backend of 4 workers against 1: {n} jobs each, lognormal running time (median "
        f"{MEDIAN_JOB:.0f} s, σ {SIGMA}, time scaled {scale:.0f}×), callbacks "
        f"{CALLBACK_DELAY * 1000:.0f} ms after each job's end on whichever worker the kernel "
        "picks, each job awaited through another worker",
        header=[
            "backend",
            "safety net, s",
            "queries per job",
            "median ms from job end to result",
            "callbacks refused",
            "callbacks forwarded",
        ],
        rows=rows,
        targets=[
            Target("median lag, 4 workers ÷ 1 worker", ratio, 1.5),
            Target("queries per job with 4 workers", num(four[2]), 1.2),
        ],
        notes=[
            "With the safety net scaled like the jobs, a waiter on another worker asks about "
            "its job once per safety-net interval while the worker that made it is alive: "
            "jobs longer than that interval cost those queries."
        ],
    )


def main() -> None:
    """Parse the arguments and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 jobs instead of 200")
    print(f"shortwan multi-worker benchmark — {machine()}\n")
    print(bench(parser.parse_args().quick).markdown())


if __name__ == "__main__":
    main()
