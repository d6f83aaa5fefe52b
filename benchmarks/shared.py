"""Sharing through Redis: what one process pays to share its cap and its job ends.

Run: ``python -m benchmarks.shared [--quick]``. The fake service runs in its own process and a
real ``redis-server`` in another (a free loopback port, persistence off); the same instant jobs go
through a client that shares nothing and one that shares through Redis (``shared=``: the spend
cap reserved and settled on the server, every job claimed and its end published), with a cap and
without, round after round in the same run. The figure is the client process's CPU per job; the
server's is shown beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import time
from pathlib import Path

import anyio

from benchmarks._harness import (
    FakeServer,
    Section,
    Target,
    fake_server,
    machine,
    median,
    redis_process,
)
from benchmarks.engine import INSTANT_POLL, requests
from shortwan import AsyncShortWan, ImageToVideo
from shortwan.testing._redis_server import RedisServer

# A cap no round comes near: both contenders check one, neither is stopped by it.
CAP = "1000000"


def redis_cpu(server: RedisServer) -> float:
    """Return the CPU seconds redis-server has used so far (0 where /proc is missing)."""
    if server.process is None:
        return 0.0
    try:
        fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_round(
    server: FakeServer,
    reqs: list[ImageToVideo],
    concurrency: int,
    redis_url: str | None,
    cap: str | None,
) -> tuple[float, int, int]:
    """Run a batch; return the client's CPU seconds, the videos and the queries sent.

    The CPU is counted from the client's creation to its close: connecting to Redis (once per
    process in real use) is left out.
    """
    state = None
    if redis_url is not None:
        from shortwan.redis import connect

        state = await connect(redis_url, namespace="bench" + secrets.token_hex(4))
    try:
        cpu = time.process_time()
        async with AsyncShortWan(
            server.api_key, base_url=server.url, poll=INSTANT_POLL, shared=state
        ) as client:
            outcomes = await client.gather(reqs, concurrency=concurrency, max_spend=cap)
            queries = client.statistics().polling.queries_sent
        cpu = time.process_time() - cpu
    finally:
        if state is not None:
            await state.aclose()
    return cpu, sum(1 for o in outcomes if o.ok), queries


# (name, through Redis, with a cap): the target compares the first two.
CONTENDERS = (
    ("alone, in-memory cap", False, CAP),
    ("shared=: cap, claims and job ends in Redis", True, CAP),
    ("alone, no cap", False, None),
    ("shared=: claims and job ends only", True, None),
)


def against(place: int) -> int:
    """Return the place in CONTENDERS of the client that the one at ``place`` is measured
    against: each shared contender against the alone one above it (with the same cap)."""
    return place - place % 2


def bench_overhead(quick: bool) -> Section:
    """Measure the contenders side by side, round after round (medians of per-round ratios)."""
    n, concurrency, rounds = (600, 32, 3) if quick else (1000, 32, 7)
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in CONTENDERS}
    server_cpu: dict[str, list[float]] = {name: [] for name, _, _ in CONTENDERS}
    queries: dict[str, float] = {}
    with fake_server(run_time=0) as server, redis_process() as redis:
        anyio.run(one_round, server, requests(50, "warm"), concurrency, redis.url, CAP)
        for r in range(rounds):
            for i, (name, shared, cap) in enumerate(CONTENDERS):
                before = redis_cpu(redis)
                url = redis.url if shared else None
                seconds, ok, asked = anyio.run(
                    one_round, server, requests(n, f"c{i}r{r}"), concurrency, url, cap
                )
                assert ok == n
                cpu[name].append(seconds / n * 1e6)
                server_cpu[name].append((redis_cpu(redis) - before) / n * 1e6)
                queries[name] = asked / n
    rows: list[list[object]] = []
    ratios: dict[str, float] = {}
    for i, (name, _, _) in enumerate(CONTENDERS):
        base = CONTENDERS[against(i)][0]
        ratios[name] = median([a / b for a, b in zip(cpu[name], cpu[base], strict=True)])
        rows.append(
            [name, median(cpu[name]), ratios[name], queries[name], median(server_cpu[name])]
        )
    full, view = CONTENDERS[1][0], CONTENDERS[3][0]
    return Section(
        key="shared",
        title=f"Client CPU per job, sharing through Redis or not, instant jobs ({n} jobs × "
        f"{rounds} rounds, concurrency {concurrency}; medians of the rounds, ratios of each "
        "round's pair)",
        header=["client", "µs CPU per job", "× alone", "queries per job", "redis-server µs/job"],
        rows=rows,
        targets=[Target("CPU per job sharing through Redis / alone", ratios[full], 1.3)],
        notes=[
            "With the cap in Redis, each create reserves before it leaves and settles after; "
            "every query takes its slot from the shared query budget; claims and job ends go in "
            "batches. Whatever a process asks at once goes out together, as one command that "
            "runs each call in turn on the server. Without a cap, sharing costs "
            f"{ratios[view]:.2f}× alone. redis-py reads replies in Python unless hiredis is "
            "installed (`shortwan[redis-fast]`); this run "
            + ("had it." if _has_hiredis() else "did not.")
        ],
    )


def _has_hiredis() -> bool:
    return importlib.util.find_spec("hiredis") is not None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(machine())
    print(bench_overhead(args.quick).markdown())
