"""Stalled answers: a service that, at random, holds an answer far past the attempt's limit.

Run: ``python -m benchmarks.stalls [--quick]``. The fake service runs in its own process. At
random, 5 % of creates and 8 % of queries are answered only after 30 s (the job is created all
the same), while the client allows an attempt half a second. Each attempt's length is timed
with an aiohttp trace on a session the client borrows; the same batch against the same service
without stalls is the baseline.
"""

from __future__ import annotations

import argparse
import logging
import time
from types import SimpleNamespace
from typing import Any

import aiohttp
import anyio

from benchmarks._harness import FakeServer, Section, Target, fake_server, machine, median
from benchmarks.engine import plan_for, requests, scaled
from shortwan import (
    AsyncShortWan,
    ImageToVideo,
    PollPolicy,
    RetryPolicy,
    SubmissionUncertainError,
    Timeouts,
)
from shortwan.testing import Fault

QUERY_STALLS = 0.08
CREATE_STALLS = 0.05
STALL = 30.0  # seconds a stalled answer waits: far past any attempt's limit
LIMIT = 0.5  # Timeouts.request: the whole attempt's limit


def _tracing(failed: list[float]) -> aiohttp.TraceConfig:
    """Time every request from its start; record how long the failed ones lasted."""
    trace = aiohttp.TraceConfig()

    async def started(_s: Any, context: SimpleNamespace, _p: Any) -> None:
        context.started = time.monotonic()

    async def failed_at(_s: Any, context: SimpleNamespace, _p: Any) -> None:
        failed.append(time.monotonic() - context.started)

    trace.on_request_start.append(started)
    trace.on_request_exception.append(failed_at)
    return trace


async def run(
    server: FakeServer, reqs: list[ImageToVideo], poll: PollPolicy, failed: list[float]
) -> dict[str, Any]:
    """Run the batch through a session that times each attempt; count its outcomes."""
    timeouts = Timeouts(request=LIMIT, read=LIMIT)
    retry = RetryPolicy(initial_delay=0.02, max_delay=0.2)
    connector = aiohttp.TCPConnector(limit=100)
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession(connector=connector, trace_configs=[_tracing(failed)]) as session,
        AsyncShortWan(
            server.api_key,
            base_url=server.url,
            poll=poll,
            timeouts=timeouts,
            retry=retry,
            session=session,
        ) as client,
    ):
        outcomes = await client.gather(reqs, concurrency=64)
        wall = time.perf_counter() - started
        queries = client.statistics().polling.queries_sent
    uncertain = sum(isinstance(o.error, SubmissionUncertainError) for o in outcomes)
    return {
        "videos": sum(o.ok for o in outcomes),
        "uncertain": uncertain,
        "other": sum(1 for o in outcomes if not o.ok) - uncertain,
        "wall": wall,
        "queries": queries,
    }


def bench(quick: bool) -> Section:
    """Compare a batch against a service that stalls answers at random with the same batch
    against one that answers every request at once."""
    n = 150 if quick else 300
    plan, scale = plan_for(quick)
    poll = scaled(PollPolicy(), 1 / scale)
    faults = {
        "query": {Fault.SLOW_AFTER: QUERY_STALLS},
        "create": {Fault.SLOW_AFTER: CREATE_STALLS},
    }
    rows: list[list[object]] = []
    figures: dict[str, dict[str, Any]] = {}
    for name, stalls in (("no stalls", False), ("stalls", True)):
        options: dict[str, Any] = {"plan": plan, "seed": 11, "slow_delay": STALL}
        if stalls:
            options["fault_rates"] = faults
        failed: list[float] = []
        with fake_server(**options) as server:
            # The same requests, so the same job lengths: only the stalls differ.
            result = anyio.run(run, server, requests(n, "stalls"), poll, failed)
            stats = server.stats()
        stalled = stats["faults"]
        result.update(
            creates=stats["creates_received"],
            jobs=stats["jobs_created"],
            stalled_creates=stalled.get("create:SLOW_AFTER", 0),
            stalled_queries=stalled.get("query:SLOW_AFTER", 0),
            longest=max(failed, default=0.0),
            typical=median(failed) if failed else 0.0,
        )
        figures[name] = result
        rows.append(
            [
                name,
                result["stalled_creates"],
                result["stalled_queries"],
                result["creates"],
                result["videos"],
                result["uncertain"],
                result["other"],
                result["typical"],
                result["longest"],
                result["queries"] / n,
                result["wall"],
            ]
        )
    hit, calm = figures["stalls"], figures["no stalls"]
    answered = n - hit["stalled_creates"]
    targets = [
        Target("creates sent per request, stalled ones never resent", hit["creates"] / n, 1.0),
        Target(
            "stalled creates reported as maybe charged, of those stalled",
            hit["uncertain"] / max(hit["stalled_creates"], 1),
            1.0,
            higher_is_better=True,
        ),
        Target(
            "videos delivered, of the jobs whose create was answered",
            hit["videos"] / answered,
            1.0,
            higher_is_better=True,
        ),
        Target("longest stalled attempt / Timeouts.request", hit["longest"] / LIMIT, 1.2),
        Target("wall time with stalls / without", hit["wall"] / calm["wall"], 1.5),
    ]
    return Section(
        key="stalls",
        title=f"Stalled answers: {CREATE_STALLS:.0%} of creates and {QUERY_STALLS:.0%} of "
        f"queries held {STALL:g} s, attempts limited to {LIMIT:g} s ({n} jobs, concurrency 64)",
        header=[
            "service",
            "creates stalled",
            "queries stalled",
            "creates received",
            "videos",
            "maybe charged",
            "other errors",
            "median failed attempt, s",
            "longest failed attempt, s",
            "queries per job",
            "wall s",
        ],
        rows=rows,
        targets=targets,
        notes=[
            "A stalled create is created at the fake before its answer stalls: the client must "
            "report it as maybe charged and never send it again. A stalled query is asked "
            "again. Failed attempts are timed from aiohttp's request start to its exception."
        ],
    )


def main() -> None:
    """Run the benchmark and print its section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    logging.getLogger("shortwan").setLevel(logging.ERROR)  # maybe-charged creates are expected
    print(f"shortwan stalls benchmark — {machine()}\n")
    print(bench(args.quick).markdown())


if __name__ == "__main__":
    main()
