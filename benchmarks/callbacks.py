"""Callbacks against polling: queries per job and the time from a job's end to its result.

Run: ``python -m benchmarks.callbacks [--quick]``. The fake service runs in its own process and
calls back into a standalone :class:`CallbackReceiver` in this one; the same jobs (same prompts,
same lognormal running times) go through shortwan with callbacks on and with polling only.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from functools import partial

import anyio

from benchmarks._harness import Section, Target, machine, median, num
from benchmarks.engine import MEDIAN_JOB, SIGMA, plan_for, requests, scaled
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


def bench(quick: bool) -> Section:
    """Measure both contenders on the same jobs."""
    n = 300 if quick else 1000
    plan, scale = plan_for(quick)
    poll = scaled(PollPolicy(), 1 / scale)
    rows: list[list[object]] = []
    with fake_process(plan=plan, callback_delay=CALLBACK_DELAY) as server:
        for name, callbacks in (("polling only", False), ("callbacks", True)):
            reqs = requests(n, f"cb-{callbacks}")
            detected: dict[str, float] = {}
            queries = anyio.run(partial(run, server, reqs, poll, detected, callbacks=callbacks))
            jobs = server.jobs()
            after_end = [at - jobs[job_id][1] for job_id, at in detected.items()]
            rows.append([name, queries / n, median(after_end) * 1000])
    base = num(rows[0][1])
    for row in rows:
        row.insert(2, num(row[1]) / base)
    return Section(
        key="callbacks",
        title=f"Callbacks vs polling: {n} jobs, lognormal running time (median "
        f"{MEDIAN_JOB:.0f} s, σ {SIGMA}, time scaled {scale:.0f}×), callbacks "
        f"{CALLBACK_DELAY * 1000:.0f} ms after each job's end",
        header=["client", "queries per job", "× polling", "median ms from job end to result"],
        rows=rows,
        targets=[
            Target("queries per job with callbacks", num(rows[1][1]), 1.1),
            Target(
                "median ms from job end to result with callbacks",
                num(rows[1][3]),
                CALLBACK_DELAY * 1000 + 50,
            ),
        ],
    )


def main() -> None:
    """Parse the arguments and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 jobs instead of 1,000")
    print(f"shortwan callback benchmarks — {machine()}\n")
    print(bench(parser.parse_args().quick).markdown())


if __name__ == "__main__":
    main()
