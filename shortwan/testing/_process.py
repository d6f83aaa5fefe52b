"""FakeShortAPI in a process of its own, for tests that kill clients and for benchmarks.

A client killed with SIGKILL must not take the service down with it, and a benchmark must not
count the service's CPU as the client's: both run the fake in a child process and ask it for its
counters over a pipe.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import anyio
import attrs

from ._fake import Endpoint, FakeShortAPI, Fault

__all__ = ["FAULT_LEVELS", "FakeProcess", "fake_process", "fault_rates", "serve_forever"]

FAULT_LEVELS = ("none", "flaky", "chaos")


def fault_rates(level: str) -> dict[Endpoint, dict[Fault, float]]:
    """Return the fault mix of a named level: ``none``, ``flaky`` (safe trouble) or ``chaos``.

    ``flaky`` only adds trouble a client can retry without risk (refusals, 503s, broken query
    answers, cut downloads); ``chaos`` also loses create answers after the job was made, which
    a careful client must report as uncertain rather than resend.
    """
    if level == "none":
        return {}
    safe: dict[Endpoint, dict[Fault, float]] = {
        "create": {Fault.RATE_LIMIT: 0.03, Fault.UNAVAILABLE: 0.03, Fault.CODE_3000: 0.03},
        "query": {
            Fault.RATE_LIMIT: 0.03,
            Fault.UNAVAILABLE: 0.03,
            Fault.HTML_502: 0.03,
            Fault.RESET_BEFORE: 0.03,
        },
        "download": {Fault.TRUNCATED_JSON: 0.1, Fault.UNAVAILABLE: 0.05},
    }
    if level == "flaky":
        return safe
    if level == "chaos":
        safe["create"].update({Fault.RESET_AFTER: 0.02, Fault.HTML_502: 0.02})
        safe["query"].update({Fault.TRUNCATED_JSON: 0.05, Fault.RESET_AFTER: 0.05})
        return safe
    raise ValueError(f"fault level must be one of {', '.join(FAULT_LEVELS)}, got {level!r}")


async def serve_forever(
    *,
    ready: Callable[[str, str], None],
    faults: str = "none",
    **options: Any,
) -> None:
    """Run FakeShortAPI until cancelled; ``ready(url, api_key)`` is called once it listens."""
    options.setdefault("queue_time", 2.0)
    options.setdefault("run_time", 8.0)
    options.setdefault("jitter", 0.3)
    if faults == "chaos":
        options.setdefault("failure_rate", 0.1)
    async with FakeShortAPI(fault_rates=fault_rates(faults), **options) as fake:
        ready(fake.url, fake.api_key)
        await anyio.sleep_forever()


def _stats(fake: Any) -> dict[str, Any]:
    stats = fake.stats
    return {
        "creates_received": stats.creates_received,
        "jobs_created": stats.jobs_created,
        "jobs_by_prompt": dict(stats.jobs_by_prompt),
        "creates_rejected": stats.creates_rejected,
        "queries": stats.queries,
        "rate_limited": stats.rate_limited,
        "callbacks_sent": stats.callbacks_sent,
        "downloads": len(stats.downloads),
        "faults": dict(stats.faults),
    }


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
                    conn.send(_stats(fake))
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
