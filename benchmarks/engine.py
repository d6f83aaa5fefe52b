"""Job-engine benchmarks: overhead per job, polling efficiency, a query-rate cap, scale.

Run: ``python -m benchmarks.engine [--quick]``. The fake service runs in its own process; every
comparison is measured side by side in the same run and reported as a ratio to its baseline.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import math
import random
import time
import tracemalloc
from collections.abc import Mapping
from typing import Any

import aiohttp
import anyio

from benchmarks._harness import FakeServer, cpu_clock, fake_server, machine, median, table
from shortwan import AsyncShortWan, ImageToVideo, PollPolicy
from shortwan.testing import JobPlan

URL = "https://example.com/frame.png"
# Time scale of the polling benchmark: real jobs of about 90 s run in 3 s here.
SCALE = 30.0
MEDIAN_JOB = 90.0
SIGMA = 0.5


def lognormal_plan(args: Mapping[str, Any]) -> JobPlan:
    """Give each prompt a lognormal running time, the same for every contender."""
    seed = int.from_bytes(hashlib.sha256(str(args.get("prompt", "")).encode()).digest()[:8], "big")
    rng = random.Random(seed)
    return JobPlan(run_time=MEDIAN_JOB * math.exp(rng.gauss(0.0, SIGMA)) / SCALE)


def requests(n: int, tag: str, duration: int = 5) -> list[ImageToVideo]:
    return [
        ImageToVideo(prompt=f"{tag} {i}", first_frame_image=URL, duration=duration)
        for i in range(n)
    ]


def scaled(policy: PollPolicy, factor: float, **changes: Any) -> PollPolicy:
    """Return ``policy`` with every duration multiplied by ``factor`` (and rates divided)."""
    import attrs

    return attrs.evolve(
        policy,
        min_interval=policy.min_interval * factor,
        max_interval=policy.max_interval * factor,
        prior_seconds_per_video_second=policy.prior_seconds_per_video_second * factor,
        max_queries_per_second=policy.max_queries_per_second / factor,
        **changes,
    )


INSTANT_POLL = PollPolicy(
    min_interval=0.001,
    max_interval=0.05,
    prior_seconds_per_video_second=1e-6,
    max_queries_per_second=1e6,
    max_concurrent_queries=64,
    jitter=0.0,
)


# --- 1. overhead per job against a raw aiohttp loop -------------------------------------------


async def raw_create(
    session: aiohttp.ClientSession, server: FakeServer, request: ImageToVideo
) -> str:
    """Create a job the way a hand-written client would: a dict, a POST, a key lookup."""
    body = {
        "model": request.model,
        "args": {
            "prompt": request.prompt,
            "first_frame_image": request.first_frame_image,
            "duration": request.duration,
            "resolution": request.resolution,
        },
    }
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with session.post(f"{server.url}/api/v1/job/create", json=body, headers=headers) as r:
        job_id: str = (await r.json())["data"]["job_id"]
        return job_id


async def raw_loop(server: FakeServer, reqs: list[ImageToVideo], concurrency: int) -> int:
    """A hand-written client: create, then query until done, with plain aiohttp."""
    headers = {"Authorization": f"Bearer {server.api_key}"}
    pending = iter(reqs)
    done = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        for request in pending:
            job_id = await raw_create(session, server, request)
            while True:
                async with session.get(
                    f"{server.url}/api/v1/job/query", params={"id": job_id}, headers=headers
                ) as r:
                    if (await r.json())["data"]["status"] >= 2:
                        break
            done += 1

    async with aiohttp.ClientSession() as session, anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker, session)
    return done


async def shortwan_batch(
    server: FakeServer, reqs: list[ImageToVideo], concurrency: int, poll: PollPolicy
) -> tuple[int, int]:
    async with AsyncShortWan(server.api_key, base_url=server.url, poll=poll) as client:
        ok = sum(1 for o in await client.gather(reqs, concurrency=concurrency) if o.ok)
        return ok, client._engine.poller.queries_sent


def bench_overhead(quick: bool) -> str:
    n, concurrency, rounds = (600, 32, 3) if quick else (2000, 32, 5)
    raw_cpu: list[float] = []
    sw_cpu: list[float] = []
    queries = 0
    with fake_server() as server:
        anyio.run(raw_loop, server, requests(50, "warm"), concurrency)
        for r in range(rounds):
            with cpu_clock() as raw:
                assert anyio.run(raw_loop, server, requests(n, f"raw{r}"), concurrency) == n
            with cpu_clock() as sw:
                ok, queries = anyio.run(
                    shortwan_batch, server, requests(n, f"sw{r}"), concurrency, INSTANT_POLL
                )
                assert ok == n
            raw_cpu.append(raw["cpu"] / n * 1e6)
            sw_cpu.append(sw["cpu"] / n * 1e6)
    ratio = median(sw_cpu) / median(raw_cpu)
    return (
        table(
            f"Client CPU per job, instant jobs ({n} jobs × {rounds} rounds, "
            f"concurrency {concurrency})",
            ["client", "µs CPU per job (median)", "ratio", "queries per job"],
            [
                ["raw aiohttp loop (create + query)", median(raw_cpu), 1.0, 1.0],
                ["shortwan gather()", median(sw_cpu), ratio, queries / n],
            ],
        )
        + f"\nTarget ≤ 1.25×: {'met' if ratio <= 1.25 else 'missed'} ({ratio:.2f}×).\n"
    )


# --- 2. queries per job and detection lag --------------------------------------------------------


async def interval_loop(
    server: FakeServer, reqs: list[ImageToVideo], gaps: list[float], detected: dict[str, float]
) -> int:
    """A hand-written poller: one task per job, sleeping ``gaps`` (the last one repeats)."""
    headers = {"Authorization": f"Bearer {server.api_key}"}
    queries = 0

    async def one(session: aiohttp.ClientSession, request: ImageToVideo) -> None:
        nonlocal queries
        job_id = await raw_create(session, server, request)
        step = 0
        while True:
            await anyio.sleep(gaps[min(step, len(gaps) - 1)])
            step += 1
            queries += 1
            async with session.get(
                f"{server.url}/api/v1/job/query", params={"id": job_id}, headers=headers
            ) as r:
                if (await r.json())["data"]["status"] >= 2:
                    detected[job_id] = time.monotonic()
                    return

    connector = aiohttp.TCPConnector(limit=64)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        anyio.create_task_group() as tg,
    ):
        for request in reqs:
            tg.start_soon(one, session, request)
    return queries


async def shortwan_detect(
    server: FakeServer, reqs: list[ImageToVideo], poll: PollPolicy, detected: dict[str, float]
) -> int:
    async with AsyncShortWan(server.api_key, base_url=server.url, poll=poll) as client:
        async for out in client.generate_many(reqs, concurrency=len(reqs)):
            assert out.ok, out.error
            assert out.job_id is not None
            detected[out.job_id] = time.monotonic()
        return client._engine.poller.queries_sent


def lag_stats(server: FakeServer, detected: dict[str, float]) -> tuple[float, float]:
    jobs = server.jobs()
    lags = [(at - jobs[j][1]) / (jobs[j][1] - jobs[j][0]) for j, at in detected.items()]
    absolute = [at - jobs[j][1] for j, at in detected.items()]
    return median(lags), median(absolute)


def bench_polling(quick: bool) -> str:
    n = 150 if quick else 400
    fixed = [5.0 / SCALE]
    stepped = [s / SCALE for s in (1, 1, 2, 2, 2, 4, 4, 4, 5)]
    poll = scaled(PollPolicy(), 1 / SCALE)
    rows = []
    with fake_server(plan="benchmarks.engine.lognormal_plan") as server:
        # The same prompts for everyone, so every contender waits on the same job durations.
        reqs = requests(n, "lag")
        for name, run in (
            ("fixed 5 s loop", lambda d: anyio.run(interval_loop, server, reqs, fixed, d)),
            (
                "stepped 1,1,2,2,2,4,4,4,5 s loop",
                lambda d: anyio.run(interval_loop, server, reqs, stepped, d),
            ),
            (
                "shortwan (first run, learning)",
                lambda d: anyio.run(shortwan_detect, server, reqs, poll, d),
            ),
        ):
            detected: dict[str, float] = {}
            queries = run(detected)
            lag, absolute = lag_stats(server, detected)
            rows.append([name, queries / n, lag * 100, absolute * SCALE])
    base = rows[0][1]
    for row in rows:
        row.append(row[1] / base)
    return table(
        f"Polling: {n} jobs, lognormal running time (median {MEDIAN_JOB:.0f} s, σ {SIGMA}), "
        f"time scaled down {SCALE:.0f}×",
        [
            "poller",
            "queries per job",
            "median lag, % of job time",
            "median lag, s (unscaled)",
            "queries vs fixed loop",
        ],
        rows,
    )


# --- 3. a query-rate cap --------------------------------------------------------------------------


def bench_rate_cap(quick: bool) -> str:
    n = 200 if quick else 400
    cap = 40.0
    rows = []
    for ceiling in (cap, 2.5 * cap):
        poll = PollPolicy(
            min_interval=0.05,
            max_interval=0.5,
            prior_seconds_per_video_second=1e-6,
            max_queries_per_second=ceiling,
            jitter=0.0,
        )
        with fake_server(query_rate_limit=cap) as server:
            with cpu_clock() as clock:
                ok, _queries = anyio.run(shortwan_batch, server, requests(n, "cap"), 64, poll)
            stats = server.stats()
        ideal = n / cap
        share = stats["rate_limited"] / max(stats["queries"], 1)
        rows.append(
            [
                f"{ceiling:.0f}/s",
                ok,
                stats["queries"],
                stats["rate_limited"],
                f"{share:.1%}",
                clock["wall"],
                ideal,
                clock["wall"] / ideal,
            ]
        )
    return (
        table(
            f"Under the service's {cap:.0f} queries/s cap: {n} instant jobs",
            [
                "client ceiling",
                "videos",
                "queries",
                "429 answers",
                "429 share",
                "wall s",
                "ideal s",
                "wall / ideal",
            ],
            rows,
        )
        + "\nTargets (client ceiling set to the cap): 429 share ≤ 2 %, wall ≤ 1.15× ideal.\n"
    )


# --- 4. scale: jobs in flight --------------------------------------------------------------


async def in_flight_run(server: FakeServer, n: int, window: int, poll: PollPolicy) -> float:
    """Push ``n`` jobs through a window of ``window``; return client CPU µs per job."""
    reqs = requests(n, f"scale{n}-{window}-{time.monotonic()}", duration=2)
    async with AsyncShortWan(server.api_key, base_url=server.url, poll=poll) as client:
        cpu = time.process_time()
        async for out in client.generate_many(reqs, concurrency=window, timeout=120):
            assert out.ok, out.error
        return (time.process_time() - cpu) / n * 1e6


async def memory_run(server: FakeServer, window: int, poll: PollPolicy) -> float:
    """Return the bytes the client holds per job once ``window`` long jobs are all waiting."""
    reqs = requests(window, f"memory{window}-{time.monotonic()}", duration=2)
    async with AsyncShortWan(server.api_key, base_url=server.url, poll=poll) as client:
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]

        async def consume() -> None:
            async for _ in client.generate_many(reqs, concurrency=window, timeout=600):
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            while len(client.jobs) < window:  # noqa: ASYNC110 - a benchmark watching the table
                await anyio.sleep(0.05)
            await anyio.sleep(0.5)  # let the last creates' buffers go
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - base
            tg.cancel_scope.cancel()
        return held / window


def bench_scale(quick: bool) -> str:
    n = 2000 if quick else 10_000
    # (jobs, window): a window of 100 moves 25 jobs a second, so it gets fewer jobs in all.
    runs = [(min(n, 1000), 100), (n, n)]
    poll = PollPolicy(
        min_interval=0.5,
        max_interval=2.0,
        prior_seconds_per_video_second=1.0,
        max_queries_per_second=5000,
        max_concurrent_queries=32,
    )
    rows = []
    # 4 s jobs for CPU: with a window of n, every job is in flight at once. Memory is read on
    # jobs long enough to be all waiting together, then the run is abandoned.
    with fake_server(run_time=4.0) as server, fake_server(run_time=600.0) as slow:
        anyio.run(in_flight_run, server, 200, 100, poll)
        for jobs, window in runs:
            cpu = anyio.run(in_flight_run, server, jobs, window, poll)
            tracemalloc.start()
            per_job = anyio.run(memory_run, slow, window, poll)
            tracemalloc.stop()
            rows.append([window, jobs, cpu, per_job / 1024])
    base = rows[0][2]
    for row in rows:
        row.insert(3, row[2] / base)
    return (
        table(
            "Jobs of 4 s through one client, by jobs in flight",
            ["jobs in flight", "jobs", "µs CPU per job", "vs 100 in flight", "KiB per tracked job"],
            rows,
        )
        + "\nTargets: CPU per job with 10,000 in flight ≤ 1.2× that with 100; "
        "≤ 2 KiB per tracked job.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, about a minute")
    parser.add_argument("--only", choices=["overhead", "polling", "cap", "scale"])
    args = parser.parse_args()
    print(f"shortwan engine benchmarks — {machine()}\n")
    for name, bench in (
        ("overhead", bench_overhead),
        ("polling", bench_polling),
        ("cap", bench_rate_cap),
        ("scale", bench_scale),
    ):
        if args.only in (None, name):
            print(bench(args.quick), flush=True)


if __name__ == "__main__":
    main()
