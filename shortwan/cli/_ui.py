"""What ``shortwan batch`` shows: a live progress bar while it runs, a summary table at the end.

Text from the service, the files and the user is never markup or an :emoji: code: every such
piece is printed with ``markup=False``, or as :class:`rich.text.Text`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from types import TracebackType

import attrs
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .._table import JobState
from ._jsonl import Line

__all__ = ["BatchView", "Tally", "print_problem", "say", "summary"]


@attrs.define
class Tally:
    """The lines of a batch run and what became of them so far."""

    total: int
    done: int = 0
    succeeded: int = 0
    replayed: int = 0
    failed: Counter[str] = attrs.field(factory=Counter)
    spend_capped: bool = False
    interrupted: bool = False
    spent: Decimal = Decimal(0)


def print_problem(err: Console, line: Line) -> None:
    """Name an invalid line and its problem."""
    err.print(f"line {line.number}: {line.problem}", highlight=False, markup=False)


def say(err: Console, text: str, style: str | None = None) -> None:
    """Print a message of the run itself (never markup: it may name files and jobs)."""
    err.print(text, style=style, markup=False, highlight=False)


class BatchView:
    """The progress bar of one run: queued, running, done, failed, spend, rate and ETA.

    Use it as a context manager around the run; :meth:`update` redraws the figures.
    """

    def __init__(self, err: Console, tally: Tally) -> None:
        self._tally = tally
        self._started = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self._task: TaskID = self._progress.add_task("videos", total=tally.total, detail="")

    def __enter__(self) -> BatchView:
        self._progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def update(self, counts: Mapping[JobState, int], spent: Decimal) -> None:
        """Redraw with the client's job counts and the money spent in all runs."""
        tally = self._tally
        queued = counts.get(JobState.QUEUED, 0) + counts.get(JobState.SUBMITTING, 0)
        running = counts.get(JobState.RUNNING, 0)
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = (tally.done - tally.replayed) / elapsed * 60
        failed = sum(tally.failed.values())
        self._progress.update(
            self._task,
            completed=tally.done,
            detail=(
                f"queued {queued} · running {running} · done {tally.succeeded} · "
                f"failed {failed} · ${spent:.3f} · {rate:.1f}/min"
            ),
        )


def summary(tally: Tally, earlier: Decimal, out: Path) -> Table:
    """Return the table printed at the end of a run."""
    table = Table(title="shortwan batch", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("requests", str(tally.total))
    table.add_row("succeeded", str(tally.succeeded))
    for status, number in sorted(tally.failed.items()):
        table.add_row(status.replace("_", " "), str(number))
    table.add_row("from earlier runs", str(tally.replayed))
    table.add_row("not reached", str(tally.total - tally.done))
    table.add_row("spent this run", f"${tally.spent:.3f}")
    table.add_row("spent in all runs", f"${earlier + tally.spent:.3f}")
    table.add_row("videos and results", Text(str(out)))
    return table
