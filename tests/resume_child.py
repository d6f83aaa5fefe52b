"""A bulk run that a test kills with SIGKILL and runs again: ``python resume_child.py URL KEY DB``.

Prints one JSON line per outcome, flushed at once, so the parent knows how far it got.
"""

from __future__ import annotations

import json
import sys

import anyio
from helpers import POLL

from shortwan import AsyncShortWan, BatchItem, ImageToVideo
from shortwan.journal import Journal

COUNT = 200


def items() -> list[BatchItem]:
    """Return the batch: prompt ``job i`` under key ``job-i``."""
    return [
        BatchItem(
            request=ImageToVideo(
                prompt=f"job {i}", first_frame_image="https://example.com/a.png", duration=2
            ),
            key=f"job-{i}",
        )
        for i in range(COUNT)
    ]


async def main(url: str, key: str, db: str, resubmit: bool) -> None:
    """Run the batch with its journal, printing outcomes as they come."""
    async with Journal(db) as journal, AsyncShortWan(key, base_url=url, poll=POLL) as client:
        async for out in client.generate_many(
            items(), concurrency=32, journal=journal, resubmit_uncertain=resubmit, timeout=60
        ):
            line = {
                "index": out.index,
                "key": out.key,
                "job_id": out.job_id,
                "ok": out.ok,
                "error": type(out.error).__name__ if out.error else None,
                "replayed": out.replayed,
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:] == ["--resubmit"])
