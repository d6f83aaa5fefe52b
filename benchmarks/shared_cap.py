"""Four batch processes under one spend cap shared through Redis, against a service in trouble.

Run: ``python -m benchmarks.shared_cap [--quick]``. The fake service runs in a process of its own
and throws random faults at the rates a real one shows: 429s on 5 % of creates and queries, 503s
on 2 % of creates, and 1 % of creates whose connection drops after the job was made (the client
cannot know it was charged, so it counts it as charged). A throwaway redis-server runs in another
process. Four batch processes (``gather()`` with ``max_spend``, ``shared=``) ask together for
about three times what the cap allows; each stops at its first refusal. The money figure is the
fake's: every job it made, at $0.425 each, whatever the clients believe. For contrast, one
process alone with an in-memory cap runs the same demand, and so do four processes that each
keep their own cap of the same amount.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import time
from decimal import Decimal
from typing import Any

import anyio

from benchmarks._harness import Section, Target, fake_server, machine, redis_process, run_at_once
from benchmarks.engine import INSTANT_POLL, requests
from shortwan import AsyncShortWan
from shortwan.testing import Fault
from shortwan.testing._redis_server import INSTALL_HINT, redis_server_binary

WORKERS = 4
CAP = Decimal(100)
PRICE = Decimal("0.425")  # a 5 s job
FAULTS = {
    "create": {
        Fault.RATE_LIMIT: 0.05,
        Fault.UNAVAILABLE: 0.02,
        Fault.RESET_AFTER: 0.01,
    },
    "query": {Fault.RATE_LIMIT: 0.05},
}


def worker(  # noqa: PLR0917 - a process target takes its arguments by position
    url: str,
    api_key: str,
    redis_url: str | None,
    namespace: str,
    jobs: int,
    tag: str,
    start_at: float,
    results: Any,
) -> None:
    """Run one batch under the cap; put (start, end, videos, refused by the cap) in results."""
    logging.getLogger("shortwan").setLevel(logging.CRITICAL)

    async def main() -> tuple[float, float, int, int]:
        state = None
        if redis_url is not None:
            from shortwan.redis import connect

            state = await connect(redis_url, namespace=namespace)
        try:
            async with AsyncShortWan(
                api_key, base_url=url, poll=INSTANT_POLL, shared=state
            ) as client:
                await anyio.sleep(max(0.0, start_at - time.time()))
                started = time.monotonic()
                outcomes = await client.gather(requests(jobs, tag), concurrency=32, max_spend=CAP)
                ended = time.monotonic()
        finally:
            if state is not None:
                await state.aclose()
        videos = sum(1 for o in outcomes if o.ok)
        unsent = sum(1 for o in outcomes if o.job_id is None and o.error is not None)
        return started, ended, videos, unsent

    results.put(anyio.run(main))


def run(server: Any, redis_url: str | None, processes: int, per_process: int) -> dict[str, float]:
    """Run the batches at once; return the figures of the run."""
    before = server.stats()
    namespace = "bench" + secrets.token_hex(4)
    tag = secrets.token_hex(3)
    common = (server.url, server.api_key, redis_url, namespace, per_process)
    spans = run_at_once(worker, [(*common, f"{tag}-{i}") for i in range(processes)])
    after = server.stats()
    made = after["jobs_created"] - before["jobs_created"]
    return {
        "made": made,
        "spent": float(made * PRICE),
        "videos": sum(s[2] for s in spans),
        "unsent": sum(s[3] for s in spans),
        "faults": sum(after["faults"].values()) - sum(before["faults"].values()),
        "wall": max(s[1] for s in spans) - min(s[0] for s in spans),
    }


def bench(quick: bool) -> Section:
    """Measure four processes sharing the cap through Redis, and one process alone."""
    demand = int(CAP / PRICE) * 3
    title = (
        f"A ${CAP} cap asked for ${demand * PRICE:.0f} of jobs, with random faults on 8 % of "
        f"creates and 5 % of queries: {WORKERS} processes sharing it through Redis, one process "
        "alone, and four with a cap each"
    )
    header = [
        "batches",
        "jobs made (paid)",
        "spent $",
        "share of the cap spent %",
        "videos",
        "requests stopped by the cap",
        "faults thrown",
        "wall s",
    ]
    if redis_server_binary() is None:
        return Section(key="shared-cap", title=title, header=header, rows=[], notes=[INSTALL_HINT])
    rounds = 1 if quick else 3
    rows: list[list[object]] = []
    worst = 0.0
    lowest = 100.0
    with redis_process() as redis, fake_server(run_time=0.05, fault_rates=FAULTS) as server:
        for _ in range(rounds):
            for name, url, processes in (
                (f"{WORKERS} processes, cap shared through Redis", redis.url, WORKERS),
                ("1 process alone, in-memory cap", None, 1),
                (f"{WORKERS} processes, each its own in-memory cap", None, WORKERS),
            ):
                figures = run(server, url, processes, demand // processes)
                share = figures["spent"] / float(CAP) * 100
                if url is not None:
                    worst, lowest = max(worst, share), min(lowest, share)
                rows.append(
                    [
                        name,
                        figures["made"],
                        figures["spent"],
                        share,
                        figures["videos"],
                        figures["unsent"],
                        figures["faults"],
                        figures["wall"],
                    ]
                )
    return Section(
        key="shared-cap",
        title=title,
        header=header,
        rows=rows,
        targets=[
            Target("most of the cap spent by the shared batches (every round), %", worst, 100.0),
            Target(
                "least of the cap spent by the shared batches (every round), %",
                lowest,
                95.0,
                higher_is_better=True,
            ),
        ],
        notes=[
            "Spent is counted at the service: every job it made, charged or not. Each process "
            "holds room for its creates on the server ahead of need and hands it back when a "
            "create of its own is refused, or after a quiet second; near the cap, room a peer "
            "still holds can refuse a create that would fit, which is why a shared batch may "
            f"stop a little short of the cap (a job costs ${PRICE})."
        ],
    )


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round")
    args = parser.parse_args()
    print(f"shortwan shared spend cap — {machine()}\n")
    print(bench(args.quick).markdown(), flush=True)


if __name__ == "__main__":
    main()
