"""The overhead benchmark counted in instructions: a figure that the machine's noise leaves alone.

Run: ``python -m benchmarks.instructions [--concurrency 32 200] [--jobs N] [--shared]``. It needs
valgrind (``apt-get install valgrind``). Each contender (the raw aiohttp loop, shortwan's
``gather()`` stock, and with the speed extra when it is installed) runs instant jobs against the
fake service in a child process under ``valgrind --tool=callgrind``, which counts the
instructions the client executes. The fake service is a process of its own, started by the child
and not counted. Every contender runs twice, with ``--jobs`` and with a tenth of them, and the
difference divided by the jobs between the two is its count per job: start-up and imports cancel
out. ``--shared`` adds the client of ``benchmarks.shared``, alone and sharing through a
redis-server of its own (not counted either), with a cap and without: the difference between
the two ratios is what sharing the cap costs. The kernel's work for each round trip to Redis is
left out of the count.

The count is repeatable (two runs of the same code differ by well under 1 %) where CPU seconds
on a shared machine swing by a third, so it tells whether a change to the hot path helps. It is
not the CPU figure: an instruction that waits for memory costs more than one that does not, and
valgrind's slowness changes how answers bunch up between loop iterations. The targets stay with
the CPU figures of ``python -m benchmarks --only overhead``; this is the yardstick for the steps
toward them.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import anyio

from benchmarks._harness import fake_server, machine, redis_process, table
from benchmarks.engine import requests, run_instant, speed_available
from benchmarks.shared import CONTENDERS as SHARED_CONTENDERS
from benchmarks.shared import against, one_round

_CONTENDERS = ("raw", "stock", "speed")
# With --shared: the clients of ``benchmarks.shared`` (alone and sharing through Redis, with a
# cap and without), by their place there.
_SHARED = {f"shared-{place}": place for place in range(len(SHARED_CONTENDERS))}
_COLLECTED = re.compile(r"Collected\s*:\s*([\d,]+)")


def child(contender: str, jobs: int, concurrency: int) -> None:
    """Run one contender's jobs (the process valgrind counts)."""
    reqs = requests(jobs, f"{contender}-{jobs}-{concurrency}")
    if contender in _SHARED:
        # The shared benchmark's batch, alone or through a redis-server of its own.
        _, through_redis, cap = SHARED_CONTENDERS[_SHARED[contender]]
        with fake_server(run_time=0) as server, redis_process() as redis:
            url = redis.url if through_redis else None
            _, ok, _ = anyio.run(one_round, server, reqs, concurrency, url, cap)
    else:
        with fake_server(run_time=0) as server:
            raw = contender == "raw"
            ok = run_instant(server, reqs, concurrency, raw=raw, speed=contender == "speed")
    assert ok == jobs


def count(valgrind: str, contender: str, jobs: int, concurrency: int) -> int:
    """Return the instructions one child run executed."""
    command = [
        valgrind,
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        contender,
        str(jobs),
        str(concurrency),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{contender} under valgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_job(valgrind: str, contender: str, jobs: int, few: int, concurrency: int) -> float:
    """Return the instructions per job of ``contender``: ``jobs`` less ``few``, so that
    start-up is taken out."""
    with ThreadPoolExecutor(2) as pool:
        small = pool.submit(count, valgrind, contender, few, concurrency)
        large = pool.submit(count, valgrind, contender, jobs, concurrency)
        return (large.result() - small.result()) / (jobs - few)


def main() -> None:
    """Count every contender at each concurrency and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 200])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument(
        "--shared",
        action="store_true",
        help="also a client sharing through Redis, with a cap and without",
    )
    parser.add_argument("--child", nargs=3, metavar=("CONTENDER", "JOBS", "CONCURRENCY"))
    args = parser.parse_args()
    if args.child:
        contender, jobs, concurrency = args.child
        child(contender, int(jobs), int(concurrency))
        return
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind is not installed: apt-get install valgrind (or your system's package)")
    contenders = [c for c in _CONTENDERS if c != "speed" or speed_available()]
    if args.shared:
        contenders += list(_SHARED)
    labels = {
        "raw": "raw aiohttp loop",
        "stock": "shortwan gather()",
        "speed": "shortwan gather(), uvloop + orjson",
        **{key: SHARED_CONTENDERS[place][0] for key, place in _SHARED.items()},
    }
    few = max(args.jobs // 10, 1)
    print(f"shortwan instruction counts — {machine()}\n")
    rows: list[list[object]] = []
    for concurrency in args.concurrency:
        counts = {c: per_job(valgrind, c, args.jobs, few, concurrency) for c in contenders}
        for contender in contenders:
            place = _SHARED.get(contender)
            base = "raw" if place is None else f"shared-{against(place)}"
            ratio = counts[contender] / counts[base]
            row = [concurrency, labels[contender], round(counts[contender]), labels[base], ratio]
            rows.append(row)
    print(
        table(
            f"Instructions per job, instant jobs ({args.jobs} jobs less {few})",
            ["concurrency", "client", "instructions per job", "against", "ratio"],
            rows,
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
