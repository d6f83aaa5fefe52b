"""A JSONL batch through the ``shortwan`` command against the same batch through the library.

Run: ``python -m benchmarks.cli [--quick]``. Both contenders run as child processes (so their CPU
is measured the same way) against the fake service in a third: the command line with its
progress bar, journal, downloads and ``results.jsonl``; the library with ``generate_many`` doing
the same journaled, downloading run from a short script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from benchmarks._harness import Section, Target, fake_server, machine, num
from shortwan.testing import fast_poll


def write_batch(path: Path, n: int, tag: str) -> None:
    """Write ``n`` request lines."""
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            line = {
                "prompt": f"{tag} {i}",
                "first_frame_image": "https://example.com/a.png",
                "duration": 2 + i % 4,
            }
            handle.write(json.dumps(line) + "\n")


async def library_run(source: Path, out: Path, url: str, key: str) -> int:
    """Do what ``shortwan batch`` does, with the library: journal, downloads, results."""
    from shortwan import AsyncShortWan
    from shortwan.journal import Journal

    def lines() -> list[dict[str, object]]:
        with source.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    ok = 0
    async with (
        Journal(out / "journal.sqlite") as journal,
        AsyncShortWan(key, base_url=url, poll=fast_poll()) as client,
    ):
        with (out / "results.jsonl").open("w", encoding="utf-8") as results:
            async for outcome in client.generate_many(
                lines(), concurrency=16, journal=journal, download_to=out
            ):
                ok += outcome.ok
                row = {"key": outcome.key, "job_id": outcome.job_id, "ok": outcome.ok}
                results.write(json.dumps(row) + "\n")
    return ok


def child_cpu() -> float:
    """Return the CPU seconds used so far by this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``command``; return its wall and CPU seconds."""
    cpu, wall = child_cpu(), time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - wall, child_cpu() - cpu


def bench(quick: bool) -> Section:
    """Run the same batch through both contenders and return the table."""
    n = 300 if quick else 1000
    rows: list[list[object]] = []
    with (
        tempfile.TemporaryDirectory(prefix="shortwan-cli-") as tmp,
        fake_server(queue_time=0.05, run_time=0.3, jitter=0.5) as server,
    ):
        env = {
            **os.environ,
            "SHORTAPI_KEY": server.api_key,
            "SHORTWAN_BASE_URL": server.url,
            "SHORTWAN_POLL": "fast",
            "COLUMNS": "120",
        }
        for name in ("library generate_many()", "shortwan batch"):
            folder = Path(tmp) / name.split()[0]
            folder.mkdir()
            source = folder / "in.jsonl"
            write_batch(source, n, name.split()[0])
            if name == "shortwan batch":
                command = [
                    sys.executable,
                    "-m",
                    "shortwan",
                    "batch",
                    str(source),
                    "-o",
                    str(folder),
                ]
            else:
                command = [
                    sys.executable,
                    "-m",
                    "benchmarks.cli",
                    "--library",
                    str(source),
                    str(folder),
                ]
            wall, cpu = run_child(command, env)
            files = len(list(folder.glob("*.mp4")))
            if files != n:
                raise RuntimeError(f"{name}: {files} videos of {n}")
            rows.append([name, n, wall, n / wall, cpu / n * 1e3])
    base = num(rows[0][4])
    for row in rows:
        row.append(num(row[4]) / base)
    return Section(
        key="cli",
        title=f"A {n}-line JSONL batch with journal and downloads, jobs of about 0.35 s, "
        "concurrency 16",
        header=["run", "lines", "wall s", "lines per s", "CPU ms per line", "CPU vs library"],
        rows=rows,
        targets=[Target("CLI CPU per line vs the library", num(rows[1][5]), 1.5)],
        notes=["CPU includes interpreter start-up and imports (about half a second per process)."],
    )


def main() -> None:
    """Parse the arguments; run the benchmark, or the library side of it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 lines instead of 1,000")
    parser.add_argument("--library", nargs=2, metavar=("SOURCE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.library:
        source, out = (Path(p) for p in args.library)
        anyio.run(
            library_run, source, out, os.environ["SHORTWAN_BASE_URL"], os.environ["SHORTAPI_KEY"]
        )
        return
    print(f"shortwan command-line benchmark — {machine()}\n")
    print(bench(args.quick).markdown())


if __name__ == "__main__":
    main()
