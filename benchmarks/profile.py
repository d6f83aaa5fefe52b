"""Where a job's CPU goes: the overhead benchmark's runs under cProfile, summed per file.

Run: ``python -m benchmarks.profile [--jobs N] [--concurrency 32 200] [--speed]``. Each contender
(the raw aiohttp loop and shortwan's ``gather()``) runs the same instant jobs against the fake
service (in its own process) once without the profiler, to measure its CPU per job, and once
under cProfile with a CPU clock. The own time of every function is summed by the file it lives in
(shortwan's files one by one, the libraries as a whole) and the column is scaled to the CPU per
job measured without the profiler. cProfile's own cost grows with the number of calls, so the
split leans toward code that makes many small calls: read it as a split, not as exact figures.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections import defaultdict
from pathlib import Path

from benchmarks._harness import FakeServer, cpu_clock, fake_server, machine, table
from benchmarks.engine import requests, run_instant
from shortwan import ImageToVideo

# Library roots shown as one line each; anything else in site-packages or the stdlib is "other".
_GROUPS = (
    "aiohttp",
    "asyncio",
    "anyio",
    "json",
    "orjson",
    "uvloop",
    "yarl",
    "multidict",
    "attrs",
    "attr",
    "cattrs",
    "decimal",
)


def group_of(filename: str) -> str:
    """Name the row a function's own time is added to, from the file it lives in."""
    if filename.startswith(("~", "<")):
        return "builtins (C calls)"
    path = Path(filename)
    parts = path.parts
    if "shortwan" in parts:
        return "shortwan/" + "/".join(parts[parts.index("shortwan") + 1 :])
    for name in _GROUPS:
        if name in parts or path.stem == name:
            return name
    return "other Python"


def profile_run(
    contender: str, jobs: int, concurrency: int, speed: bool
) -> tuple[dict[str, float], float, pstats.Stats]:
    """Profile one contender's run.

    Returns:
        µs of own time per job by group (scaled to the unprofiled CPU), the unprofiled CPU per
        job in µs, and the raw statistics.
    """
    raw = contender == "raw"

    def run(server: FakeServer, reqs: list[ImageToVideo], concurrency: int) -> None:
        run_instant(server, reqs, concurrency, raw=raw, speed=speed and not raw)

    with fake_server(run_time=0) as server:
        run(server, requests(50, f"warm-{contender}"), concurrency)
        # Requests are built before the clocks start: making them is not the client's work.
        reqs = requests(jobs, f"plain-{contender}-{concurrency}")
        with cpu_clock() as plain:
            run(server, reqs, concurrency)
        reqs = requests(jobs, f"profiled-{contender}-{concurrency}")
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        run(server, reqs, concurrency)
        profiler.disable()
    stats = pstats.Stats(profiler)
    groups: dict[str, float] = defaultdict(float)
    for (filename, _line, _name), row in stats.stats.items():  # type: ignore[attr-defined]
        groups[group_of(filename)] += row[2]  # own time, callees excluded
    cpu = plain["cpu"] / jobs * 1e6
    scale = cpu / (sum(groups.values()) / jobs * 1e6)
    per_job = {name: seconds / jobs * 1e6 * scale for name, seconds in groups.items()}
    return per_job, cpu, stats


def top_functions(stats: pstats.Stats, jobs: int, count: int) -> list[list[object]]:
    """Return the ``count`` functions with the most own time: name, calls and µs per job (as
    profiled, unscaled)."""
    rows: list[tuple[str, float, float]] = []
    for (filename, line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((f"{group_of(filename)}:{line} {name}", row[1] / jobs, row[2] / jobs * 1e6))
    rows.sort(key=lambda r: -r[2])
    return [list(r) for r in rows[:count]]


def main() -> None:
    """Profile both contenders at each concurrency and print the split."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 200])
    parser.add_argument("--speed", action="store_true", help="shortwan on uvloop with orjson")
    parser.add_argument("--top", type=int, default=30, help="rows shown per table")
    parser.add_argument(
        "--functions", type=int, default=0, help="also list shortwan's N costliest functions"
    )
    args = parser.parse_args()
    print(f"shortwan CPU profile — {machine()}\n")
    label = "shortwan (uvloop + orjson)" if args.speed else "shortwan gather()"
    for concurrency in args.concurrency:
        raw, raw_cpu, _ = profile_run("raw", args.jobs, concurrency, False)
        sw, sw_cpu, sw_stats = profile_run("shortwan", args.jobs, concurrency, args.speed)
        names = sorted(set(raw) | set(sw), key=lambda n: -max(raw.get(n, 0.0), sw.get(n, 0.0)))
        rows: list[list[object]] = [
            [name, raw.get(name, 0.0), sw.get(name, 0.0)] for name in names[: args.top]
        ]
        rows.append(["total (CPU per job without the profiler)", raw_cpu, sw_cpu])
        print(
            table(
                f"CPU per job by file, µs ({args.jobs} instant jobs, concurrency {concurrency})",
                ["file", "raw aiohttp loop", label],
                rows,
            ),
            flush=True,
        )
        if args.functions:
            print(
                table(
                    f"shortwan run's costliest functions, concurrency {concurrency} (as profiled)",
                    ["function", "calls per job", "own µs per job"],
                    top_functions(sw_stats, args.jobs, args.functions),
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
