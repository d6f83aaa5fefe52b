"""Shared pieces of the benchmarks: results as tables with targets, timing, the machine.

Every benchmark returns a :class:`Section`: a table, the targets it checks, and optionally series
to plot. ``python -m benchmarks`` runs them all and writes ``benchmarks/RESULTS.md``; each module
also runs alone and prints its sections.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shortwan.testing import FakeProcess as FakeServer
from shortwan.testing import fake_process as fake_server
from shortwan.testing._redis_server import INSTALL_HINT, RedisServer, redis_server_binary

__all__ = [
    "FakeServer",
    "Section",
    "Target",
    "cpu_clock",
    "fake_server",
    "machine",
    "median",
    "num",
    "run_at_once",
    "table",
]


@dataclass
class Target:
    """A goal a figure should meet, such as 'CPU ratio ≤ 1.25'."""

    what: str
    value: float
    limit: float
    higher_is_better: bool = False

    @property
    def met(self) -> bool:
        """Whether the value is on the right side of the limit."""
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def line(self) -> str:
        """Describe the target and whether it was met, in one line."""
        sign = "≥" if self.higher_is_better else "≤"
        verdict = "met" if self.met else "**missed**"
        return f"{self.what}: {_cell(self.value)} (target {sign} {_cell(self.limit)}): {verdict}"


@dataclass
class Section:
    """One benchmark's result."""

    key: str
    title: str
    header: list[str]
    rows: list[list[object]]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Named (x, y) series for plots: {"shortwan": [(queries, lag), ...], ...}.
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def markdown(self) -> str:
        """Render the section as Markdown: table, targets, notes."""
        text = table(self.title, self.header, self.rows)
        if self.targets:
            text += "\n" + "\n".join(f"- {t.line()}" for t in self.targets) + "\n"
        if self.notes:
            text += "\n" + "\n".join(self.notes) + "\n"
        return text


def combine(runs: Sequence[Section]) -> Section:
    """Merge repeated runs of one benchmark: every numeric cell becomes the median of its runs."""
    first = runs[0]
    rows = []
    for r, row in enumerate(first.rows):
        merged: list[object] = []
        for c, cell in enumerate(row):
            values = [run.rows[r][c] for run in runs if r < len(run.rows) and c < len(run.rows[r])]
            numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            merged.append(median(numbers) if len(numbers) == len(values) > 1 else cell)
        rows.append(merged)
    targets = [
        Target(t.what, median([run.targets[i].value for run in runs]), t.limit, t.higher_is_better)
        for i, t in enumerate(first.targets)
    ]
    notes = list(first.notes)
    if len(runs) > 1:
        notes.append(f"Medians of {len(runs)} runs.")
    return Section(first.key, first.title, first.header, rows, targets, notes, first.series)


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


@contextmanager
def redis_process() -> Iterator[RedisServer]:
    """Run a redis-server on a free loopback port, persistence off, for the block."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(binary, Path(folder))
        server.start()
        try:
            yield server
        finally:
            server.stop()


def num(value: object) -> float:
    """Return a table cell as a number (cells are typed ``object``)."""
    if not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def median(values: Sequence[float]) -> float:
    """Return the median, NaN for nothing."""
    return statistics.median(values) if values else math.nan


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render a Markdown table with a title."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine() -> str:
    """Describe the machine in one line."""
    return (
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"{platform.system()}"
    )


def run_at_once(target: Callable[..., None], arguments: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run ``target(*args, start_at, results)`` in one spawned process per ``args``; return what
    each put in ``results``.

    Every process waits for ``start_at`` (a wall-clock time a few seconds ahead), so that they
    start their work together, after their imports.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 3.0
    children = [ctx.Process(target=target, args=(*args, start_at, results)) for args in arguments]
    for child in children:
        child.start()
    got = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join(30)
    return got
