"""Shared pieces of the benchmarks: the fake service in its own process, timing, tables."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio

Plan = Callable[[Mapping[str, Any]], Any]


def _serve(conn: Any, options: dict[str, Any], plan_name: str | None) -> None:
    """Run FakeShortAPI in this process until told to stop; answer stats requests."""
    from shortwan.testing import FakeShortAPI

    if plan_name is not None:
        module, _, func = plan_name.rpartition(".")
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
                        {job_id: (job.created_at, job.run_end) for job_id, job in fake.jobs.items()}
                    )
                elif message == "stats":
                    stats = fake.stats
                    conn.send(
                        {
                            "creates_received": stats.creates_received,
                            "jobs_created": stats.jobs_created,
                            "queries": stats.queries,
                            "rate_limited": stats.rate_limited,
                            "max_jobs_per_prompt": max(stats.jobs_by_prompt.values(), default=0),
                        }
                    )

    anyio.run(main)


@dataclass
class FakeServer:
    """A handle on the fake service running in a child process."""

    url: str
    api_key: str
    _conn: Any

    def jobs(self) -> dict[str, tuple[float, float]]:
        """Return job id → (created, run end), on the shared monotonic clock."""
        self._conn.send("jobs")
        result: dict[str, tuple[float, float]] = self._conn.recv()
        return result

    def stats(self) -> dict[str, int]:
        """Return the service's counters."""
        self._conn.send("stats")
        result: dict[str, int] = self._conn.recv()
        return result


@contextmanager
def fake_server(plan: str | None = None, **options: Any) -> Iterator[FakeServer]:
    """Start FakeShortAPI in a separate process (so its CPU is not counted as the client's)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(child, options, plan), daemon=True)
    process.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the fake service did not start")
        info = parent.recv()
        yield FakeServer(url=info["url"], api_key=info["api_key"], _conn=parent)
    finally:
        parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


@contextmanager
def cpu_clock() -> Iterator[dict[str, float]]:
    """Measure this process's CPU seconds and wall seconds inside the block."""
    result: dict[str, float] = {}
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        yield result
    finally:
        result["cpu"] = time.process_time() - cpu
        result["wall"] = time.perf_counter() - wall


def median(values: Sequence[float]) -> float:
    """Return the median, NaN for nothing."""
    return statistics.median(values) if values else math.nan


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render a Markdown table with a title."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine() -> str:
    """Describe the machine in one line."""
    return f"{os.cpu_count()} cores, Python {os.sys.version.split()[0]}"
