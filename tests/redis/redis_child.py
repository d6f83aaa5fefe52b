"""A worker process of the multi-process tests: ``python redis_child.py ROLE URL NAMESPACE JSON``.

Each role talks to the shared state like one worker of a real deployment would, and prints its
observations as JSON lines on stdout for the test to check.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

import anyio

from shortwan.redis import JobEnd, SharedState, connect


def say(**fields: Any) -> None:
    """Print one observation as a JSON line, at once."""
    print(json.dumps(fields, default=str), flush=True)


async def spend(shared: SharedState, options: dict[str, Any]) -> None:
    """Run a plan of reservations, settles, releases and refunds against the shared cap."""
    cap = await shared.spend_counter(
        None, name=options.get("name", "default"), lease=options.get("lease", 60.0)
    )
    charged = refunded = Decimal(0)
    granted = refused = 0
    worst = Decimal(0)
    for step in options["plan"]:
        estimate = Decimal(step["estimate"])
        if not await cap.reserve(estimate):
            refused += 1
            worst = max(worst, cap.committed)
            continue
        granted += 1
        worst = max(worst, cap.committed)
        await anyio.sleep(step["pause"])
        if step["charge"] is None:
            await cap.release(estimate)
        else:
            charge = Decimal(step["charge"])
            await cap.settle(estimate, charge)
            charged += charge
            if step["refund"]:
                await cap.refund(charge)
                refunded += charge
        worst = max(worst, cap.committed)
    say(charged=charged, refunded=refunded, granted=granted, refused=refused, worst=worst)


async def burst(shared: SharedState, options: dict[str, Any]) -> None:
    """Run many creates at once against the shared cap, as a batch does: each reserves, waits,
    then settles (with a charge, maybe refunded) or releases; report the totals."""
    cap = await shared.spend_counter(None, name=options["name"], lease=options.get("lease", 60.0))
    totals = {"charged": Decimal(0), "refunded": Decimal(0), "granted": 0, "refused": 0}
    worst = Decimal(0)
    steps = iter(options["plan"])
    limiter = anyio.Semaphore(options["concurrency"])

    async def one(step: dict[str, Any]) -> None:
        nonlocal worst
        estimate = Decimal(step["estimate"])
        try:
            if not await cap.reserve(estimate):
                totals["refused"] += 1
                return
            totals["granted"] += 1
            worst = max(worst, cap.committed)
            await anyio.sleep(step["pause"])
            if step["charge"] is None:
                await cap.release(estimate)
                return
            charge = Decimal(step["charge"])
            await cap.settle(estimate, charge)
            totals["charged"] += charge
            if step["refund"]:
                await cap.refund(charge)
                totals["refunded"] += charge
        finally:
            limiter.release()

    async with anyio.create_task_group() as tg:
        for step in steps:
            await limiter.acquire()
            tg.start_soon(one, step)
    worst = max(worst, (await cap.read()).committed)
    say(**totals, worst=worst, held=cap.held)


async def hold(shared: SharedState, options: dict[str, Any]) -> None:
    """Reserve and then hang, renewing the leases, until killed."""
    cap = await shared.spend_counter(None, lease=options["lease"])
    held = 0
    for _ in range(options["count"]):
        held += await cap.reserve(Decimal(options["amount"]))
    say(held=held, committed=cap.committed)
    await anyio.sleep_forever()


async def publish(shared: SharedState, options: dict[str, Any]) -> None:
    """Publish one job end, after an optional delay."""
    await anyio.sleep(options.get("delay", 0))
    first = await shared.jobs.publish(JobEnd(**options["end"]))
    say(published=first)


async def wait(shared: SharedState, options: dict[str, Any]) -> None:
    """Wait for the end of a job another process publishes."""
    say(waiting=options["job_id"])
    end = await shared.jobs.wait(options["job_id"], timeout=options["timeout"])
    say(job_id=end.job_id, state=end.state, url=end.url, seen_by=end.seen_by, amount=end.amount)


async def ends(shared: SharedState, options: dict[str, Any]) -> None:
    """Say which of the given jobs have a published end, and how each ended."""
    found = await shared.jobs.get_many(options["job_ids"])
    say(ends={job_id: end.state for job_id, end in found.items()})


async def bucket(shared: SharedState, options: dict[str, Any]) -> None:
    """Send as fast as the shared bucket lets, and report when each send was allowed."""
    rate_bucket = shared.rate_bucket("rate-test", rate=options["rate"])
    stamps: list[float] = []
    start = options["start"]
    await anyio.sleep(max(0.0, start - time.time()))
    while time.time() < start + options["seconds"]:
        delay = await rate_bucket.take()
        await anyio.sleep(delay)
        stamps.append(time.time())
    say(stamps=stamps)


async def owner(shared: SharedState, options: dict[str, Any]) -> None:
    """Hold callback tokens and print every callback forwarded here."""
    for token in options["tokens"]:
        await shared.tokens.hold(token, kind="job", job_id=f"job-{token[:6]}")
    got = anyio.Event()
    seen: list[dict[str, Any]] = []

    def take(message: Any) -> None:
        seen.append(
            {"digest": message.digest.hex(), "body": message.body.decode(), "from": message.sender}
        )
        if len(seen) >= options["expect"]:
            got.set()

    shared.tokens.on_forwarded(take)
    say(ready=shared.worker_id)
    with anyio.fail_after(options.get("timeout", 20)):
        await got.wait()
    say(forwarded=seen)
    if options.get("linger"):
        await anyio.sleep_forever()


ROLES = {
    "spend": spend,
    "burst": burst,
    "hold": hold,
    "publish": publish,
    "wait": wait,
    "ends": ends,
    "bucket": bucket,
    "owner": owner,
}


Role = Callable[[SharedState, dict[str, Any]], Awaitable[None]]


async def main(roles: Mapping[str, Role] = ROLES) -> None:
    """Connect, play the role named on the command line, close."""
    role, url, namespace, raw = sys.argv[1:5]
    options = json.loads(raw)
    async with await connect(
        url, namespace=namespace, heartbeat=options.get("heartbeat", 2.0)
    ) as s:
        await roles[role](s, options)


if __name__ == "__main__":
    anyio.run(main)
