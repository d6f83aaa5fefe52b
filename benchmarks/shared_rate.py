"""Four worker processes under one service limit: a query budget shared through Redis or not.

Run: ``python -m benchmarks.shared_rate [--quick]``. The fake service (with a query rate limit of
R a second) runs in a process of its own, as does a throwaway redis-server; four worker processes
each collect their share of already finished jobs, so every job costs one query and the query
rate is all that limits them. Each worker's ceiling is R: shared through Redis, that is R for
all four; with local limiters, it is R each, 4R together.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import time
from typing import Any

import anyio

from benchmarks._harness import (
    Section,
    Target,
    fake_server,
    machine,
    num,
    redis_process,
    run_at_once,
)
from shortwan import AsyncShortWan, PollPolicy
from shortwan.testing._redis_server import INSTALL_HINT, redis_server_binary

WORKERS = 4
LIMIT = 40.0


def worker(  # noqa: PLR0917 - a process target takes its arguments by position
    url: str,
    api_key: str,
    redis_url: str | None,
    namespace: str,
    ids: list[str],
    start_at: float,
    results: Any,
) -> None:
    """Collect ``ids`` through one client; put (first answer, last answer, videos) in results."""
    logging.getLogger("shortwan").setLevel(logging.ERROR)

    async def main() -> tuple[float, float, int]:
        poll = PollPolicy(
            min_interval=0.05,
            max_interval=0.5,
            max_queries_per_second=LIMIT,
            max_concurrent_queries=8,
            jitter=0.0,
        )
        state = None
        if redis_url is not None:
            from shortwan.redis import connect

            state = await connect(redis_url, namespace=namespace)
        try:
            budget = None if state is None else state.query_budget(LIMIT)
            async with AsyncShortWan(
                api_key, base_url=url, poll=poll, query_budget=budget
            ) as client:
                await anyio.sleep(max(0.0, start_at - time.time()))
                started = time.monotonic()
                jobs = [client.attach(job_id) for job_id in ids]
                videos = 0
                for job in jobs:
                    await job.result(timeout=300)
                    videos += 1
                return started, time.monotonic(), videos
        finally:
            if state is not None:
                await state.aclose()

    results.put(anyio.run(main))


def run(server: Any, redis_url: str | None, per_worker: int) -> dict[str, float]:
    """Run the four workers on fresh jobs; return the figures of the run."""
    ids = server.add_jobs(WORKERS * per_worker, prefix=f"shared{secrets.token_hex(3)}")
    before = server.stats()
    namespace = "bench" + secrets.token_hex(4)
    common = (server.url, server.api_key, redis_url, namespace)
    spans = run_at_once(worker, [(*common, ids[i::WORKERS]) for i in range(WORKERS)])
    after = server.stats()
    queries = after["queries"] - before["queries"]
    refused = after["rate_limited"] - before["rate_limited"]
    wall = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    return {
        "videos": sum(v for _, _, v in spans),
        "queries": queries,
        "refused": refused,
        "wall": wall,
        "accepted_rate": (queries - refused) / wall,
    }


def bench(quick: bool) -> Section:
    """Measure the four workers with a shared budget and with local limiters."""
    per_worker = 100 if quick else 250
    title = (
        f"{WORKERS} worker processes, each with a ceiling of {LIMIT:.0f} queries/s, against the "
        f"service's limit of {LIMIT:.0f}/s: {WORKERS * per_worker} finished jobs, one query each"
    )
    header = [
        "query budget",
        "videos",
        "queries",
        "429 answers",
        "429 share %",
        "combined accepted rate /s",
        "vs the limit",
        "wall s",
    ]
    binary = redis_server_binary()
    if binary is None:
        return Section(key="shared-rate", title=title, header=header, rows=[], notes=[INSTALL_HINT])
    rows: list[list[object]] = []
    with redis_process() as redis, fake_server(run_time=0, query_rate_limit=LIMIT) as server:
        for name, redis_url in (("shared through Redis", redis.url), ("local", None)):
            figures = run(server, redis_url, per_worker)
            rows.append(
                [
                    name,
                    figures["videos"],
                    figures["queries"],
                    figures["refused"],
                    figures["refused"] / max(figures["queries"], 1) * 100,
                    figures["accepted_rate"],
                    figures["accepted_rate"] / LIMIT,
                    figures["wall"],
                ]
            )
    shared = rows[0]
    return Section(
        key="shared-rate",
        title=title,
        header=header,
        rows=rows,
        targets=[
            Target("429 share with the budget shared through Redis, %", num(shared[4]), 2.0),
            Target(
                "combined rate off the limit with the budget shared, %",
                abs(num(shared[6]) - 1) * 100,
                10.0,
            ),
        ],
        notes=[
            "With local limiters each worker allows itself the whole limit: together they ask "
            "for four times what the service takes, and the rate controller in each has to find "
            "the limit from its 429s."
        ],
    )


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    args = parser.parse_args()
    print(f"shortwan shared query budget — {machine()}\n")
    print(bench(args.quick).markdown(), flush=True)


if __name__ == "__main__":
    main()
