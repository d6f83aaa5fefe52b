"""Run every benchmark and write ``benchmarks/RESULTS.md`` (and plots, with matplotlib).

    python -m benchmarks            # the full suite, about 15 minutes on 2 cores
    python -m benchmarks --quick    # smaller runs, under 2 minutes
    python -m benchmarks --only polling --only scale --runs 3

Each benchmark runs the fake service in its own process and measures shortwan side by side with
its baseline in the same run. ``--runs N`` repeats each benchmark and reports the median of every
figure. The README's "Performance" section is generated from the same results
(``--readme`` rewrites it).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import (
    callbacks,
    cli,
    download,
    engine,
    shared,
    shared_cap,
    shared_rate,
    stalls,
    throttle,
    workers,
)
from benchmarks._harness import Section, combine, machine

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
README = HERE.parent / "README.md"
START = "<!-- performance:start -->"
END = "<!-- performance:end -->"

BENCHES: dict[str, Callable[[bool], Section]] = {
    "overhead": engine.bench_overhead,
    "polling": engine.bench_polling,
    "cap": throttle.bench_rate_cap,
    "throttled": throttle.bench_throttled,
    "stalls": stalls.bench,
    "shared-rate": shared_rate.bench,
    "shared-cap": shared_cap.bench,
    "scale": engine.bench_scale,
    "callbacks": callbacks.bench,
    "workers": workers.bench,
    "download": download.bench,
    "cli": cli.bench,
    "shared": shared.bench_overhead,
}


def plot(sections: dict[str, Section], folder: Path) -> list[str]:
    """Draw the plots that read better as pictures; return their file names (none without
    matplotlib)."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    polling = sections.get("polling")
    if polling is not None and polling.series:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for (name, series), marker in zip(polling.series.items(), "osD", strict=False):
            ordered = sorted(series)
            ax.plot([p[0] for p in ordered], [p[1] for p in ordered], marker=marker, label=name)
        ax.set_xlabel("queries per job")
        ax.set_ylabel("median detection lag, % of job time")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([2, 3, 5, 10, 20, 40])
        ax.set_title("Polling: cost against lag (lower left is better)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "polling.png", dpi=110)
        plt.close(fig)
        made.append("polling.png")
    scale = sections.get("scale")
    if scale is not None and scale.series:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        points = sorted(scale.series["shortwan"])
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="shortwan")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
        ax.set_xlabel("jobs in flight")
        ax.set_ylabel("client CPU per job, µs")
        ax.set_ylim(bottom=0)
        ax.set_title("CPU per job against jobs in flight")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / "scale.png", dpi=110)
        plt.close(fig)
        made.append("scale.png")
    return made


def targets_table(sections: dict[str, Section]) -> list[str]:
    """Return the Markdown lines of a table of every target and whether it was met."""
    lines = ["| benchmark | figure | value | target | |", "|---|---|---|---|---|"]
    for key, section in sections.items():
        for target in section.targets:
            sign = "≥" if target.higher_is_better else "≤"
            verdict = "met" if target.met else "**missed**"
            lines.append(
                f"| {key} | {target.what} | {target.value:.3g} | {sign} {target.limit:g} "
                f"| {verdict} |"
            )
    return lines


def results_markdown(
    sections: dict[str, Section], plots: list[str], quick: bool, runs: int, seconds: float
) -> str:
    """Render RESULTS.md."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# shortwan benchmark results",
        "",
        f"Written by `python -m benchmarks{' --quick' if quick else ''}"
        f"{f' --runs {runs}' if runs > 1 else ''}` on {when}, {machine()}; the suite took "
        f"{seconds:.0f} s. Each benchmark runs the fake service in its own process and measures "
        "shortwan beside its baseline in the same run; ratios are steadier than absolute "
        "figures on a shared machine.",
        "",
        "## Targets",
        "",
        *targets_table(sections),
    ]
    lines.append("")
    for name in plots:
        lines += [f"![{name[:-4]}]({name})", ""]
    for section in sections.values():
        lines += [section.markdown(), ""]
    return "\n".join(lines).rstrip() + "\n"


def readme_block(sections: dict[str, Section], plots: list[str], quick: bool) -> str:
    """Render the README's Performance section body."""
    lines = [
        START,
        "",
        "Reproduce with `python -m benchmarks` (about 15 minutes; `--quick` for about 4; the "
        "plots need `pip install -e '.[bench]'`). Figures from "
        f"{'a quick' if quick else 'one'} run on {machine()}; full tables in "
        "[benchmarks/RESULTS.md](benchmarks/RESULTS.md).",
        "",
        *targets_table(sections),
    ]
    lines.append("")
    for name in plots:
        lines += [f"![{name[:-4]}](benchmarks/{name})", ""]
    lines.append(END)
    return "\n".join(lines)


def update_readme(block: str) -> bool:
    """Replace the Performance block of README.md; return whether it was there."""
    text = README.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        return False
    README.write_text(pattern.sub(lambda _: block, text), encoding="utf-8")
    return True


def main() -> None:
    """Run the suite."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs, under 2 minutes")
    parser.add_argument("--only", action="append", choices=list(BENCHES), help="repeatable")
    parser.add_argument("--runs", type=int, default=1, help="repeat each benchmark N times")
    parser.add_argument("--readme", action="store_true", help="rewrite README's Performance")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args()
    logging.getLogger("shortwan").setLevel(logging.ERROR)  # benchmarks stop runs on purpose
    started = time.perf_counter()
    sections: dict[str, Section] = {}
    for key, bench in BENCHES.items():
        if args.only and key not in args.only:
            continue
        print(f"[{time.perf_counter() - started:5.0f} s] {key} …", file=sys.stderr, flush=True)
        runs = [bench(args.quick) for _ in range(max(1, args.runs))]
        sections[key] = combine(runs)
        print(sections[key].markdown(), flush=True)
    seconds = time.perf_counter() - started
    plots = plot(sections, args.out.parent)
    args.out.write_text(
        results_markdown(sections, plots, args.quick, args.runs, seconds), encoding="utf-8"
    )
    print(f"wrote {args.out} in {seconds:.0f} s", file=sys.stderr)
    if args.readme and not update_readme(readme_block(sections, plots, args.quick)):
        print(f"README.md has no {START} … {END} block", file=sys.stderr)


if __name__ == "__main__":
    main()
