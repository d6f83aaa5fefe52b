"""FakeShortAPI in a process of its own, for tests that kill clients and for benchmarks.

A client killed with SIGKILL must not take the service down with it, and a benchmark must not
count the service's CPU as the client's: both run the fake in a child process and ask it for its
counters over a pipe.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import anyio
import attrs

from ._fake import FakeShortAPI

__all__ = ["FakeProcess", "fake_process"]


def _serve(conn: Any, options: dict[str, Any], plan: str | None) -> None:
    """Run FakeShortAPI here until told to stop; answer questions sent down the pipe."""
    if plan is not None:
        module, _, func = plan.rpartition(".")
        options = {**options, "plan": getattr(__import__(module, fromlist=[func]), func)}

    async def main() -> None:
        async with FakeShortAPI(**options) as fake:
            conn.send({"url": fake.url, "api_key": fake.api_key})
            while True:
                if not await anyio.to_thread.run_sync(conn.poll, 0.2):
                    continue
                message = conn.recv()
                if message == "stop":
                    return
                if message == "jobs":
                    conn.send(
                        {
                            job_id: (job.created_at, job.run_end, job.prompt)
                            for job_id, job in fake.jobs.items()
                        }
                    )
                elif message == "stats":
                    conn.send(fake.stats.summary())
                elif isinstance(message, tuple) and message[0] == "add_jobs":
                    conn.send(fake.add_jobs(message[1], prefix=message[2]))

    anyio.run(main)


@attrs.define
class FakeProcess:
    """A handle on FakeShortAPI running in a child process.

    Attributes:
        url: where it listens.
        api_key: the key it accepts.
    """

    url: str
    api_key: str
    _conn: Any = attrs.field(repr=False, alias="conn")

    def stats(self) -> Mapping[str, Any]:
        """Return the fake's counters (see :class:`FakeStats`), ``downloads`` as a count."""
        self._conn.send("stats")
        result: dict[str, Any] = self._conn.recv()
        return result

    def add_jobs(self, count: int, *, prefix: str = "seeded") -> list[str]:
        """Create ``count`` jobs in the fake directly (see :meth:`FakeShortAPI.add_jobs`)."""
        self._conn.send(("add_jobs", count, prefix))
        result: list[str] = self._conn.recv()
        return result

    def jobs(self) -> Mapping[str, tuple[float, float, str]]:
        """Return job id → (created, run end, prompt), times on the machine's monotonic clock."""
        self._conn.send("jobs")
        result: dict[str, tuple[float, float, str]] = self._conn.recv()
        return result


@contextmanager
def fake_process(plan: str | None = None, **options: Any) -> Iterator[FakeProcess]:
    """Start FakeShortAPI in a child process and stop it when the block ends.

    Args:
        plan: a per-job plan as an importable ``"module.function"`` name (functions cannot be
            sent to the child).
        options: FakeShortAPI's keyword arguments (picklable values only).
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(child, options, plan), daemon=True)
    process.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the fake service did not start within 30 s")
        info = parent.recv()
        yield FakeProcess(url=info["url"], api_key=info["api_key"], conn=parent)
    finally:
        with suppress(OSError):  # the child may be gone already
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        parent.close()
        child.close()
