"""Rate-control benchmarks: a service that throttles at random, and one with a hidden limit.

Run: ``python -m benchmarks.throttle [--quick]``. The fake service runs in its own process;
every contender is measured in the same run and reported as a ratio to its baseline.
"""

from __future__ import annotations

import argparse
import logging
import time
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
from benchmarks.engine import MEDIAN_JOB, SIGMA, plan_for, raw_create, requests, scaled
from shortwan import AsyncShortWan, ImageToVideo, PollPolicy, RetryPolicy
from shortwan.testing import Fault

# What a shared upstream under load does: refuse a share of requests whatever the rate, with
# a Retry-After of one second (scaled with the rest of time).
QUERY_REFUSALS = 0.08
CREATE_REFUSALS = 0.05
RETRY_AFTER = 1.0
# A plain loop's gap between queries, in unscaled seconds: what the provider recommends.
PLAIN_GAP = 15.0


async def plain_loop(
    server: FakeServer,
    reqs: list[ImageToVideo],
    gap: float,
    deadline: float,
    detected: dict[str, float],
) -> int:
    """Poll every job every ``gap`` seconds; after a 429, wait its Retry-After and ask again."""
    headers = {"Authorization": f"Bearer {server.api_key}"}

    async def one(session: aiohttp.ClientSession, request: ImageToVideo) -> None:
        while True:
            try:
                job_id = await raw_create(session, server, request)
                break
            except (KeyError, TypeError, aiohttp.ContentTypeError):
                await anyio.sleep(gap / 10)  # refused (429): try again shortly
        with anyio.move_on_after(deadline):
            while True:
                await anyio.sleep(gap)
                while True:
                    async with session.get(
                        f"{server.url}/api/v1/job/query", params={"id": job_id}, headers=headers
                    ) as r:
                        if r.status != 429:
                            status = (await r.json())["data"]["status"]
                            break
                        await anyio.sleep(float(r.headers.get("Retry-After", "0")))
                if status >= 2:
                    detected[job_id] = time.monotonic()
                    return

    connector = aiohttp.TCPConnector(limit=64)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        anyio.create_task_group() as tg,
    ):
        for request in reqs:
            tg.start_soon(one, session, request)
    return len(detected)


async def shortwan_run(
    server: FakeServer,
    reqs: list[ImageToVideo],
    poll: PollPolicy,
    deadline: float,
    detected: dict[str, float],
) -> dict[str, Any]:
    """Run the batch through shortwan; return the rate controller's figures at the end."""
    retry = RetryPolicy(timeout=deadline)
    async with AsyncShortWan(server.api_key, base_url=server.url, poll=poll, retry=retry) as c:
        async for out in c.generate_many(reqs, concurrency=len(reqs), timeout=deadline):
            if out.ok and out.job_id is not None:
                detected[out.job_id] = time.monotonic()
        stats = c.statistics().rate
        return {"rate": stats.rate, "cuts": stats.cuts, "undone": stats.undone}


def bench_throttled(quick: bool) -> Section:
    """Compare a batch against a service refusing 8 % of queries and 5 % of creates at random
    with the same batch against a service that refuses nothing."""
    n = 150 if quick else 300
    plan, scale = plan_for(quick)
    poll = scaled(PollPolicy(), 1 / scale)
    deadline = 20 * MEDIAN_JOB / scale
    faults = {
        "query": {Fault.RATE_LIMIT: QUERY_REFUSALS},
        "create": {Fault.RATE_LIMIT: CREATE_REFUSALS},
    }
    retry_after = f"{RETRY_AFTER / scale:.4f}"
    rows: list[list[object]] = []

    def measure(name: str, throttled: bool, run: Any) -> None:
        options: dict[str, Any] = {"plan": plan, "retry_after": retry_after, "seed": 7}
        if throttled:
            options["fault_rates"] = faults
        with fake_server(**options) as server:
            detected: dict[str, float] = {}
            result = run(server, detected)
            extra = result if isinstance(result, dict) else {}
            stats = server.stats()
            jobs = server.jobs()
        lags = [(at - jobs[j][1]) / (jobs[j][1] - jobs[j][0]) for j, at in detected.items()]
        rows.append(
            [
                name,
                len(detected),
                stats["queries"] / n,
                stats["rate_limited"],
                median(lags) * 100 if lags else float("nan"),
                extra.get("cuts", "–"),
                extra.get("undone", "–"),
            ]
        )

    reqs = requests(n, "throttled")
    for name, throttled in (("shortwan, no refusals", False), ("shortwan, refusals", True)):
        measure(
            name,
            throttled,
            lambda server, d: anyio.run(shortwan_run, server, reqs, poll, deadline, d),
        )
    measure(
        f"plain {PLAIN_GAP:g} s loop, refusals",
        True,
        lambda server, d: anyio.run(plain_loop, server, reqs, PLAIN_GAP / scale, deadline, d),
    )
    calm, rough = rows[0], rows[1]
    for row in rows:
        row.append(num(row[4]) / num(calm[4]))
        row.append(num(row[2]) / num(calm[2]))
    return Section(
        key="throttled",
        title=f"A service that throttles at random: {n} jobs, lognormal running time (median "
        f"{MEDIAN_JOB:.0f} s, σ {SIGMA}), time scaled down {scale:.0f}×; "
        f"{QUERY_REFUSALS:.0%} of queries and {CREATE_REFUSALS:.0%} of creates answered 429 "
        f"with Retry-After {RETRY_AFTER:g} s (scaled)",
        header=[
            "client",
            "videos",
            "queries per job",
            "429 answers",
            "median lag, % of job time",
            "cuts",
            "cuts undone",
            "lag vs no refusals",
            "queries vs no refusals",
        ],
        rows=rows,
        targets=[
            Target("videos delivered with refusals, of the batch", num(rough[1]) / n, 1.0, True),
            Target("median lag with refusals / without", num(rough[7]), 1.5),
            Target("queries per job with refusals / without", num(rough[8]), 1.5),
        ],
        notes=[
            "Queries per job count every query the service received, refused ones included. "
            "A cut undone is one the controller took back because the refusals did not fall "
            "with the rate: they were noise."
        ],
    )


async def capped_batch(
    server: FakeServer, reqs: list[ImageToVideo], poll: PollPolicy
) -> dict[str, Any]:
    async with AsyncShortWan(server.api_key, base_url=server.url, poll=poll) as client:
        ok = sum(1 for o in await client.gather(reqs, concurrency=64) if o.ok)
        stats = client.statistics().rate
        return {"ok": ok, "cuts": stats.cuts, "limit": stats.limit}


def bench_rate_cap(quick: bool) -> Section:
    """Instant jobs under the service's query limit, with the client's ceiling at the limit and
    15× above it (Retry-After exact, then rounded up to whole seconds)."""
    n = 400 if quick else 1000
    cap = 40.0
    rows = []
    runs = [(cap, "exact"), (15 * cap, "exact"), (15 * cap, "seconds")]
    for ceiling, retry_after in runs:
        poll = PollPolicy(
            min_interval=0.05,
            max_interval=0.5,
            prior_seconds_per_video_second=1e-6,
            max_queries_per_second=ceiling,
            jitter=0.0,
        )
        with fake_server(
            run_time=0, query_rate_limit=cap, rate_limit_retry_after=retry_after
        ) as server:
            with cpu_clock() as clock:
                result = anyio.run(capped_batch, server, requests(n, "cap"), poll)
            stats = server.stats()
        ideal = n / cap
        share = stats["rate_limited"] / max(stats["queries"], 1)
        rows.append(
            [
                f"{ceiling:.0f}/s",
                retry_after,
                result["ok"],
                stats["queries"],
                stats["rate_limited"],
                share * 100,
                result["cuts"],
                clock["wall"],
                ideal,
                clock["wall"] / ideal,
            ]
        )
    return Section(
        key="cap",
        title=f"Under the service's {cap:.0f} queries/s limit: {n} instant jobs",
        header=[
            "client ceiling",
            "Retry-After",
            "videos",
            "queries",
            "429 answers",
            "429 share %",
            "cuts",
            "wall s",
            "ideal s",
            "wall / ideal",
        ],
        rows=rows,
        targets=[
            Target("429 share with the ceiling at the limit, %", num(rows[0][5]), 2.0),
            Target("wall / ideal with the ceiling at the limit", num(rows[0][9]), 1.15),
            Target("429 share, ceiling 15× the limit, exact Retry-After, %", num(rows[1][5]), 2.0),
            Target("wall / ideal, ceiling 15× the limit, exact Retry-After", num(rows[1][9]), 1.15),
            Target("429 share, ceiling 15× the limit, whole seconds, %", num(rows[2][5]), 2.0),
            Target("wall / ideal, ceiling 15× the limit, whole seconds", num(rows[2][9]), 1.15),
        ],
    )


BENCHES = {"throttled": bench_throttled, "cap": bench_rate_cap}


def main() -> None:
    """Run the rate-control benchmarks and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--only", choices=sorted(BENCHES))
    args = parser.parse_args()
    logging.getLogger("shortwan").setLevel(logging.ERROR)
    print(f"shortwan rate-control benchmarks — {machine()}\n")
    for name, bench in BENCHES.items():
        if args.only in (None, name):
            print(bench(args.quick).markdown(), flush=True)


if __name__ == "__main__":
    main()
