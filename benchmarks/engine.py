"""Job-engine benchmarks: overhead per job, polling efficiency, scale (rate control: throttle).

Run: ``python -m benchmarks.engine [--quick]``. The fake service runs in its own process; every
comparison is measured side by side in the same run and reported as a ratio to its baseline.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import logging
import math
import random
import time
import tracemalloc
from collections.abc import Mapping
from typing import Any

import aiohttp
import anyio

from benchmarks._harness import (
    FakeServer,
    Section,
    Target,
    cpu_clock,
    fake_server,
    machine,
    median,
    num,
)
from shortwan import AsyncShortWan, ImageToVideo, PollPolicy
from shortwan import _json as shortwan_json
from shortwan.testing import JobPlan

URL = "https://example.com/frame.png"
# Time scale of the polling benchmark: real jobs of about 90 s run in 3 s here.
SCALE = 30.0
MEDIAN_JOB = 90.0
SIGMA = 0.5


QUICK_SCALE = 60.0


def lognormal_seconds(args: Mapping[str, Any]) -> float:
    """Return the unscaled running time of a prompt: lognormal, the same for every contender."""
    seed = int.from_bytes(hashlib.sha256(str(args.get("prompt", "")).encode()).digest()[:8], "big")
    rng = random.Random(seed)
    return MEDIAN_JOB * math.exp(rng.gauss(0.0, SIGMA))


def lognormal_plan(args: Mapping[str, Any]) -> JobPlan:
    """Plan a job of lognormal length, time scaled down ``SCALE`` times."""
    return JobPlan(run_time=lognormal_seconds(args) / SCALE)


def lognormal_plan_quick(args: Mapping[str, Any]) -> JobPlan:
    """Plan a job of lognormal length, time scaled down ``QUICK_SCALE`` times (quick runs)."""
    return JobPlan(run_time=lognormal_seconds(args) / QUICK_SCALE)


def plan_for(quick: bool) -> tuple[str, float]:
    """Return the plan's importable name and its time scale."""
    if quick:
        return "benchmarks.engine.lognormal_plan_quick", QUICK_SCALE
    return "benchmarks.engine.lognormal_plan", SCALE


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


def run_on(speed: bool, func: Any, *args: Any) -> Any:
    """Run ``func(*args)`` in a new event loop: uvloop's when ``speed``, else stock asyncio."""
    return anyio.run(func, *args, backend_options={"use_uvloop": True} if speed else {})


async def shortwan_batch(
    server: FakeServer, reqs: list[ImageToVideo], concurrency: int, poll: PollPolicy
) -> tuple[int, int]:
    async with AsyncShortWan(server.api_key, base_url=server.url, poll=poll) as client:
        ok = sum(1 for o in await client.gather(reqs, concurrency=concurrency) if o.ok)
        return ok, client.statistics().polling.queries_sent


def run_instant(
    server: FakeServer, reqs: list[ImageToVideo], concurrency: int, *, raw: bool, speed: bool
) -> int:
    """Run instant jobs through the raw loop, or through shortwan's ``gather()`` (on uvloop with
    orjson when ``speed``); return how many ended with a video."""
    if raw:
        done: int = anyio.run(raw_loop, server, reqs, concurrency)
        return done
    with shortwan_json.backend("orjson" if speed else "stdlib"):
        ok, _ = run_on(speed, shortwan_batch, server, reqs, concurrency, INSTANT_POLL)
    return int(ok)


def speed_available() -> bool:
    """Whether the speed extra (orjson and uvloop) is installed."""
    return bool(shortwan_json.orjson_available()) and importlib.util.find_spec("uvloop") is not None


def overhead_round(
    server: FakeServer, n: int, concurrency: int, tag: str, speed: bool
) -> dict[str, list[float]]:
    """Run the raw loop and shortwan once each; return CPU µs and wall s per contender."""
    out: dict[str, list[float]] = {}
    reqs = requests(n, f"raw{tag}")  # built before the clocks start: not the client's work
    with cpu_clock() as raw:
        assert anyio.run(raw_loop, server, reqs, concurrency) == n
    out["raw"] = [raw["cpu"] / n * 1e6, raw["wall"]]
    contenders = [("stock", False)] + ([("speed", True)] if speed else [])
    for name, fast in contenders:
        reqs = requests(n, f"{name}{tag}")
        with shortwan_json.backend("orjson" if fast else "stdlib"), cpu_clock() as sw:
            ok, queries = run_on(fast, shortwan_batch, server, reqs, concurrency, INSTANT_POLL)
            assert ok == n
        out[name] = [sw["cpu"] / n * 1e6, sw["wall"], queries / n]
    return out


def bench_overhead(quick: bool) -> Section:
    """Compare shortwan's CPU and wall time per job with a raw aiohttp loop, instant jobs.

    The raw loop is the floor a hand-written client sets: stock asyncio, stdlib json, one task
    per worker creating and then querying. shortwan runs stock (stdlib json, asyncio's loop) and,
    when the speed extra is installed, on uvloop with orjson: both are compared with the same
    stock raw loop, measured in the same rounds.
    """
    n, rounds = (600, 3) if quick else (2000, 5)
    speed = speed_available()
    rows: list[list[object]] = []
    targets: list[Target] = []
    with fake_server(run_time=0) as server:
        anyio.run(raw_loop, server, requests(50, "warm"), 32)
        for concurrency in (32, 200):
            runs = [
                overhead_round(server, n, concurrency, f"{concurrency}-{r}", speed)
                for r in range(rounds)
            ]
            base_cpu = median([run["raw"][0] for run in runs])
            base_wall = median([run["raw"][1] for run in runs])
            rows.append(
                [
                    concurrency,
                    "raw aiohttp loop (create + query)",
                    base_cpu,
                    1.0,
                    base_wall,
                    1.0,
                    1.0,
                ]
            )
            for name, label in (
                ("stock", "shortwan gather()"),
                ("speed", "shortwan gather(), uvloop + orjson"),
            ):
                if name not in runs[0]:
                    continue
                cpu = median([run[name][0] for run in runs])
                wall = median([run[name][1] for run in runs])
                cpu_ratio = median([run[name][0] / run["raw"][0] for run in runs])
                wall_ratio = median([run[name][1] / run["raw"][1] for run in runs])
                queries = median([run[name][2] for run in runs])
                rows.append([concurrency, label, cpu, cpu_ratio, wall, wall_ratio, queries])
                limit = 1.25 if name == "stock" else 1.0
                what = "shortwan" if name == "stock" else "shortwan with the speed extra"
                targets.append(
                    Target(
                        f"{what} CPU per job / raw loop, concurrency {concurrency}",
                        cpu_ratio,
                        limit,
                    )
                )
                if name == "stock" and concurrency == 200:
                    targets.append(
                        Target("shortwan wall time / raw loop, concurrency 200", wall_ratio, 1.2)
                    )
    notes = [
        "Ratios are medians of the per-round ratios (each round runs the raw loop, then "
        "shortwan, against the same fake service). The raw loop always runs on stock asyncio "
        "with the stdlib json module."
    ]
    if not speed:
        notes.append("The speed extra (orjson, uvloop) is not installed: its rows are missing.")
    return Section(
        key="overhead",
        title=f"Client CPU and wall time per job, instant jobs ({n} jobs × {rounds} rounds "
        "per concurrency; medians of the rounds)",
        header=[
            "concurrency",
            "client",
            "µs CPU per job",
            "× raw loop",
            "wall s",
            "wall × raw loop",
            "queries per job",
        ],
        rows=rows,
        targets=targets,
        notes=notes,
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
        return client.statistics().polling.queries_sent


def lag_stats(server: FakeServer, detected: dict[str, float]) -> tuple[float, float]:
    jobs = server.jobs()
    lags = [(at - jobs[j][1]) / (jobs[j][1] - jobs[j][0]) for j, at in detected.items()]
    absolute = [at - jobs[j][1] for j, at in detected.items()]
    return median(lags), median(absolute)


def bench_polling(quick: bool) -> Section:
    """Compare shortwan's poller with a fixed and a stepped loop on the same lognormal jobs.

    The table holds each contender's usual setting; the full run also sweeps each one's interval
    (the plot's curves: fewer queries cost more lag, and the question is which curve is lower).
    """
    n = 150 if quick else 400
    fixed_s = (5.0,) if quick else (2.5, 5.0, 10.0)
    stepped_x = (1.0,) if quick else (0.5, 1.0, 2.0)
    growths = (0.12,) if quick else (0.06, 0.12, 0.24)
    steps = (1, 1, 2, 2, 2, 4, 4, 4, 5)
    rows: list[list[object]] = []
    series: dict[str, list[tuple[float, float]]] = {
        "fixed-interval loop": [],
        "stepped loop": [],
        "shortwan": [],
    }
    plan, scale = plan_for(quick)
    with fake_server(plan=plan) as server:
        # The same prompts for everyone, so every contender waits on the same job durations.
        reqs = requests(n, "lag")

        def measure(name: str, curve: str, run: Any, main: bool) -> None:
            detected: dict[str, float] = {}
            queries = run(detected)
            lag, absolute = lag_stats(server, detected)
            series[curve].append((queries / n, lag * 100))
            if main:
                rows.append([name, queries / n, lag * 100, absolute * scale])

        for gap in fixed_s:
            gaps = [gap / scale]
            measure(
                f"fixed {gap:g} s loop",
                "fixed-interval loop",
                lambda d, g=gaps: anyio.run(interval_loop, server, reqs, g, d),
                gap == 5.0,
            )
        for factor in stepped_x:
            gaps = [factor * s / scale for s in steps]
            measure(
                "stepped 1,1,2,2,2,4,4,4,5 s loop",
                "stepped loop",
                lambda d, g=gaps: anyio.run(interval_loop, server, reqs, g, d),
                factor == 1.0,
            )
        for growth in growths:
            poll = scaled(PollPolicy(growth=growth), 1 / scale)
            measure(
                "shortwan (defaults, learning as it goes)",
                "shortwan",
                lambda d, p=poll: anyio.run(shortwan_detect, server, reqs, p, d),
                growth == 0.12,
            )
    base = rows[0][1]
    for row in rows:
        row.append(num(row[1]) / num(base))
    return Section(
        key="polling",
        title=f"Polling: {n} jobs, lognormal running time (median {MEDIAN_JOB:.0f} s, "
        f"σ {SIGMA}), time scaled down {scale:.0f}×",
        header=[
            "poller",
            "queries per job",
            "median lag, % of job time",
            "median lag, s (unscaled)",
            "queries vs fixed loop",
        ],
        rows=rows,
        targets=[
            Target("shortwan queries per job", num(rows[2][1]), 4.0),
            Target("shortwan median lag, % of job time", num(rows[2][2]), 10.0),
        ],
        series=series,
    )


# --- 3. scale: jobs in flight --------------------------------------------------------------


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


def rss_bytes() -> int:
    """Return this process's resident set size, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def attached_run(server: FakeServer, ids: list[str], poll: PollPolicy) -> tuple[float, float]:
    """Attach ``ids`` and wait for each one's first answer: CPU µs and resident bytes per job."""
    async with AsyncShortWan(server.api_key, base_url=server.url, poll=poll) as client:
        gc.collect()
        rss, cpu = rss_bytes(), time.process_time()
        for job_id in ids:
            client.attach(job_id)
        while client.statistics().polling.queries_sent < len(ids):  # noqa: ASYNC110 - it watches progress
            await anyio.sleep(0.05)
        cpu_per_job = (time.process_time() - cpu) / len(ids) * 1e6
        gc.collect()
        return cpu_per_job, (rss_bytes() - rss) / len(ids)


def bench_scale(quick: bool) -> Section:
    n = 2000 if quick else 10_000
    attached = 20_000 if quick else 100_000
    job_seconds = 2.0 if quick else 4.0
    # (jobs, window): a window of 100 moves 25 jobs a second, so it gets fewer jobs in all.
    runs = (
        [(min(n, 1000), 100), (min(n, 1000), 1000), (n, n)]
        if not quick
        else [
            (min(n, 1000), 100),
            (n, n),
        ]
    )
    poll = PollPolicy(
        min_interval=0.5,
        max_interval=2.0,
        prior_seconds_per_video_second=1.0,
        max_queries_per_second=5000,
        max_concurrent_queries=32,
    )
    rows: list[list[object]] = []
    # 4 s jobs for CPU: with a window of n, every job is in flight at once. Memory is read on
    # jobs long enough to be all waiting together, then the run is abandoned.
    with fake_server(run_time=job_seconds) as server, fake_server(run_time=3600.0) as slow:
        anyio.run(in_flight_run, server, 200, 100, poll)
        for jobs, window in runs:
            cpu = anyio.run(in_flight_run, server, jobs, window, poll)
            tracemalloc.start()
            per_job = anyio.run(memory_run, slow, window, poll)
            tracemalloc.stop()
            rows.append([f"{window:,}", jobs, cpu, per_job / 1024])
        ids = slow.add_jobs(attached, prefix="attached")
        # Attaching asks about every job at once: the poller's rate ceiling sets the pace.
        cpu, per_job = anyio.run(attached_run, slow, ids, poll)
        rows.append([f"{attached:,} (attached, first query)", attached, cpu, per_job / 1024])
    base = num(rows[0][2])
    for row in rows:
        row.insert(3, num(row[2]) / base)
    widest = rows[len(runs) - 1]
    return Section(
        key="scale",
        title=f"Jobs of {job_seconds:g} s through one client, by jobs in flight",
        header=["jobs in flight", "jobs", "µs CPU per job", "vs 100 in flight", "KiB per job"],
        rows=rows,
        targets=[
            Target(f"CPU per job, {n:,} vs 100 in flight", num(widest[3]), 1.2),
            Target(f"KiB per tracked job, {n:,} in flight", num(widest[4]), 2.0),
        ],
        notes=[
            "KiB per job: Python allocations (tracemalloc) while every job of the window waits, "
            "divided by the window (the client's fixed costs weigh on small windows); resident "
            "memory growth for the attached jobs. The attached row's CPU covers attach plus one "
            "query per job."
        ],
        series={
            "shortwan": [(float(w), num(r[2])) for (_j, w), r in zip(runs, rows, strict=False)]
        },
    )


BENCHES = {
    "overhead": bench_overhead,
    "polling": bench_polling,
    "scale": bench_scale,
}


def main() -> None:
    """Run the engine benchmarks and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, about a minute")
    parser.add_argument("--only", choices=sorted(BENCHES))
    args = parser.parse_args()
    logging.getLogger("shortwan").setLevel(logging.ERROR)  # runs are stopped on purpose
    print(f"shortwan engine benchmarks — {machine()}\n")
    for name, bench in BENCHES.items():
        if args.only in (None, name):
            print(bench(args.quick).markdown(), flush=True)


if __name__ == "__main__":
    main()
