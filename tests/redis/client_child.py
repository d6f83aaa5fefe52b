"""A client process of the multi-process tests: ``python client_child.py ROLE URL NAMESPACE JSON``.

Each role runs an ``AsyncShortWan`` sharing through Redis, as one worker of a deployment would,
against the fake service named in the options, and prints its observations as JSON lines.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any

import anyio

from shortwan import AsyncShortWan, ImageToVideo, PollPolicy
from shortwan.redis import SharedState, connect

URL = "https://example.com/frame.png"


def say(**fields: Any) -> None:
    """Print one observation as a JSON line, at once."""
    print(json.dumps(fields, default=str), flush=True)


def client(shared: SharedState, options: dict[str, Any]) -> AsyncShortWan:
    """Return a client of the fake named in ``options``, sharing through ``shared``."""
    return AsyncShortWan(
        options["api_key"],
        base_url=options["base_url"],
        poll=PollPolicy(**options["poll"]),
        shared=shared,
    )


def request(prompt: str) -> ImageToVideo:
    """Return a request of the default duration with ``prompt``."""
    return ImageToVideo(prompt=prompt, first_frame_image=URL)


async def create(shared: SharedState, options: dict[str, Any]) -> None:
    """Create jobs, say each id at once, then wait for them all and say how each ended."""
    async with client(shared, options) as sw:
        jobs = []
        for prompt in options["prompts"]:
            job = await sw.submit(request(prompt))
            jobs.append(job)
            say(created=job.id)
        for job in jobs:
            video = await job.result(timeout=options.get("timeout", 30))
            say(done=job.id, url=video.url)
        say(queries=sw.statistics().polling.queries_sent, shared=sw.statistics().shared)
        if options.get("linger"):
            await anyio.sleep_forever()


async def attach(shared: SharedState, options: dict[str, Any]) -> None:
    """Attach job ids (at ``start``, a wall-clock time, if given), wait for each, and say what
    came back and what it cost here."""
    async with client(shared, options) as sw:
        say(ready=shared.worker_id)
        await anyio.sleep(max(0.0, options.get("start", 0.0) - time.time()))
        jobs = [sw.attach(job_id) for job_id in options["job_ids"]]
        urls = {}
        for job in jobs:
            urls[job.id] = (await job.result(timeout=options.get("timeout", 30))).url
        stats = sw.statistics()
        say(urls=urls, queries=stats.polling.queries_sent, shared=stats.shared)


async def batch(shared: SharedState, options: dict[str, Any]) -> None:
    """Run a batch under the shared cap and say what became of every request."""
    async with client(shared, options) as sw:
        outcomes = await sw.gather(
            [request(prompt) for prompt in options["prompts"]],
            concurrency=options.get("concurrency", 4),
            max_spend=options["max_spend"],
        )
    say(
        created=[o.job_id for o in outcomes if o.job_id is not None],
        errors=Counter(type(o.error).__name__ for o in outcomes if o.error is not None),
        spent=str(sw.jobs.spent),
    )


ROLES = {"create": create, "attach": attach, "batch": batch}


async def main() -> None:
    """Connect, play the role, close."""
    role, url, namespace, raw = sys.argv[1:5]
    options = json.loads(raw)
    async with await connect(
        url, namespace=namespace, heartbeat=options.get("heartbeat", 2.0)
    ) as shared:
        await ROLES[role](shared, options)


if __name__ == "__main__":
    anyio.run(main)
