"""Callbacks against polling: queries per job and the time from a job's end to its result.

Run: ``python -m benchmarks.callbacks [--quick]``. The fake service runs in its own process and
calls back into a standalone :class:`CallbackReceiver` in this one; the same jobs (same prompts,
same lognormal running times) go through shortwan with callbacks on and with polling only.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import anyio

from benchmarks._harness import machine, median, table
from benchmarks.engine import MEDIAN_JOB, SCALE, SIGMA, requests, scaled
from shortwan import AsyncShortWan, ImageToVideo, PollPolicy
from shortwan.callbacks import CallbackReceiver
from shortwan.testing import FakeProcess, fake_process

CALLBACK_DELAY = 0.1


async def run(
    server: FakeProcess,
    reqs: list[ImageToVideo],
    poll: PollPolicy,
    detected: dict[str, float],
    *,
    callbacks: bool,
) -> int:
    """Run every request to its end; record when each result reached the caller."""
    receiver = CallbackReceiver() if callbacks else None
    async with contextlib.AsyncExitStack() as stack:
        if receiver is not None:
            await stack.enter_async_context(receiver)
        client = await stack.enter_async_context(
            AsyncShortWan(server.api_key, base_url=server.url, poll=poll, callbacks=receiver)
        )
        before = server.stats()["queries"]
        async for out in client.generate_many(reqs, concurrency=len(reqs)):
            assert out.ok, out.error
            assert out.job_id is not None
            detected[out.job_id] = time.monotonic()
    return int(server.stats()["queries"]) - int(before)


def bench(quick: bool) -> str:
    """Measure both contenders on the same jobs and return a Markdown table."""
    n = 300 if quick else 1000
    poll = scaled(PollPolicy(), 1 / SCALE)
    rows = []
    with fake_process(
        plan="benchmarks.engine.lognormal_plan", callback_delay=CALLBACK_DELAY
    ) as server:
        for name, callbacks in (("polling only", False), ("callbacks", True)):
            reqs = requests(n, f"cb-{callbacks}")
            detected: dict[str, float] = {}
            queries = anyio.run(
                lambda r=reqs, d=detected, c=callbacks: run(server, r, poll, d, callbacks=c)
            )
            jobs = server.jobs()
            after_end = [at - jobs[job_id][1] for job_id, at in detected.items()]
            rows.append([name, queries / n, median(after_end) * 1000])
    base = rows[0][1]
    for row in rows:
        row.insert(2, row[1] / base)
    cb_queries, cb_ms = rows[1][1], rows[1][3]
    target_ms = CALLBACK_DELAY * 1000 + 50
    return (
        table(
            f"Callbacks vs polling: {n} jobs, lognormal running time (median {MEDIAN_JOB:.0f} s, "
            f"σ {SIGMA}, time scaled {SCALE:.0f}×), callbacks {CALLBACK_DELAY * 1000:.0f} ms "
            f"after each job's end; {machine()}",
            ["client", "queries per job", "× polling", "median ms from job end to result"],
            rows,
        )
        + f"\nTargets: ≤ 1.1 queries per job ({cb_queries:.3f}: "
        f"{'met' if cb_queries <= 1.1 else 'missed'}); median ≤ {target_ms:.0f} ms "
        f"({cb_ms:.0f} ms: {'met' if cb_ms <= target_ms else 'missed'}).\n"
    )


def main() -> None:
    """Parse the arguments and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 jobs instead of 1,000")
    print(bench(parser.parse_args().quick))


if __name__ == "__main__":
    main()
