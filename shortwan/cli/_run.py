"""A run of ``shortwan batch``: a JSONL file in, a folder of videos and ``results.jsonl`` out.

The demo and ``batch`` share this one implementation. Every line is checked before anything is
sent (and again as it is sent, in case the file changed); the batch's journal lives in the
folder, so running the same command again resumes. The first Ctrl-C stops admission and waits
for the jobs in flight; a second one stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import anyio
import attrs
from rich.console import Console

from .._client import AsyncShortWan
from .._config import DEFAULT_POLL, PollPolicy
from .._errors import (
    DownloadError,
    InvalidRequestError,
    JobDetachedError,
    JobFailedError,
    JobTimeoutError,
    JournalError,
    SharedStateError,
    ShortWanError,
    SpendLimitError,
    SubmissionUncertainError,
)
from .._models import BatchItem, Outcome
from .._options import BatchOptions
from .._shared import SharedStore
from .._spec import PRICE_PER_SECOND
from ..journal import Journal
from ._jsonl import Line, check_file, checked_lines
from ._names import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SPEND_CAP,
    EXIT_USAGE,
    JOURNAL_NAME,
    RESULTS_NAME,
)
from ._ui import BatchView, Tally, print_problem, say, summary

__all__ = ["BatchJob", "dry_run", "run_batch"]

_STATUSES: tuple[tuple[type[ShortWanError], str], ...] = (
    (JobFailedError, "failed"),
    (SubmissionUncertainError, "uncertain"),
    (SpendLimitError, "not_sent_spend_cap"),
    (SharedStateError, "not_sent_shared_state"),
    (JobTimeoutError, "timed_out"),
    (JobDetachedError, "interrupted"),
    (DownloadError, "download_failed"),
    (InvalidRequestError, "invalid"),
)


@attrs.frozen(kw_only=True)
class BatchJob:
    """What ``shortwan batch`` was asked to do.

    Attributes:
        source: the JSONL file.
        out: the folder of the videos, ``results.jsonl`` and the journal.
        options: the batch's options; the run adds the journal and the download folder.
        poll: how the client polls.
    """

    source: Path
    out: Path
    options: BatchOptions = attrs.field(factory=BatchOptions)
    poll: PollPolicy = DEFAULT_POLL


def status_of(outcome: Outcome) -> str:
    """Return the ``status`` column of an outcome's row."""
    error = outcome.error
    if error is None:
        return "succeeded"
    for kind, name in _STATUSES:
        if isinstance(error, kind):
            return name
    return "not_created" if outcome.job_id is None else "error"


def result_row(line: int, key: str | None, outcome: Outcome) -> dict[str, Any]:
    """Return the row of ``results.jsonl`` that reports ``outcome`` for line ``line``."""
    error = outcome.error
    return {
        "line": line,
        # A line refused before it was sent has no key on its outcome; the line still has it.
        "key": outcome.key if outcome.key is not None else key,
        "job_id": outcome.job_id,
        "status": status_of(outcome),
        "amount": None if outcome.amount is None else str(outcome.amount),
        "url": outcome.video.url if outcome.video is not None else None,
        "file": None if outcome.path is None else str(outcome.path),
        "error_type": None if error is None else type(error).__name__,
        "error": None if error is None else str(error),
        "replayed": outcome.replayed,
    }


@contextlib.contextmanager
def _on_interrupt(handler: Callable[[], None]) -> Iterator[None]:
    """Route SIGINT to ``handler`` inside the running loop while the block runs."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        # No loop signal handlers here (Windows, or not the main thread): Ctrl-C then stops at
        # once, which still leaves the journal resumable.
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


class _Stopper:
    """First Ctrl-C: stop admitting and let jobs in flight finish. Second: stop now."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.scope: anyio.CancelScope | None = None
        self.presses = 0

    def admitting(self) -> bool:
        """Return whether new requests may still be sent (no Ctrl-C yet)."""
        return self.presses == 0

    def press(self) -> None:
        self.presses += 1
        if self.presses == 1:
            self.console.print(
                "[yellow]Ctrl-C: no new requests are sent; waiting for jobs in flight. "
                "Press Ctrl-C again to stop now (rerun the same command to resume).[/]"
            )
        elif self.scope is not None:
            self.scope.cancel()


async def run_batch(
    job: BatchJob,
    *,
    api_key: str | None,
    base_url: str | None,
    console: Console,
    err: Console,
    shared: SharedStore | None = None,
) -> int:
    """Run a JSONL batch to its end (or Ctrl-C) and return the process exit code.

    With ``shared``, the client shares its cap and job ends through it (see ``AsyncShortWan``).
    """
    return await _BatchRun(job, console=console, err=err, shared=shared).run(api_key, base_url)


class _BatchRun:
    """One run: its lines, its tally and the order in which requests were fed."""

    def __init__(
        self, job: BatchJob, *, console: Console, err: Console, shared: SharedStore | None
    ) -> None:
        self.job = job
        self.shared = shared
        self.console = console
        self.err = err
        self.tally = Tally(total=0)
        # Each request fed, in order: (line number, key), for the row of its outcome.
        self.fed: list[tuple[int, str | None]] = []
        self.reported: set[int] = set()
        self.stopper = _Stopper(err)
        self.earlier = Decimal(0)
        self.pending: list[str] = []

    async def run(self, api_key: str | None, base_url: str | None) -> int:
        job = self.job
        count, cost, bad = await anyio.to_thread.run_sync(check_file, job.source, job.out)
        for line in bad:
            print_problem(self.err, line)
        say(
            self.err,
            f"{count} requests (estimated ${cost:.3f}), {len(bad)} invalid lines skipped; "
            f"videos and results go to {job.out}",
        )
        await anyio.Path(job.out).mkdir(parents=True, exist_ok=True)
        self.reported = {line.number for line in bad}
        self.tally = Tally(total=count + len(bad))
        client = AsyncShortWan(api_key, base_url=base_url, poll=job.poll, shared=self.shared)
        journal = Journal(job.out / JOURNAL_NAME)
        try:
            # The journal's run lock is taken before anything in OUT is touched: a second run on
            # the same folder stops here, before it could truncate the first one's results.
            await journal.__aenter__()
        except JournalError as exc:
            say(self.err, f"error: {exc}", style="red")
            return EXIT_USAGE
        try:
            await self._send(client, journal, bad)
        finally:
            await journal.aclose()
        self._say_what_is_left()
        self.console.print(summary(self.tally, self.earlier, job.out))
        return self._exit_code()

    async def _send(self, client: AsyncShortWan, journal: Journal, bad: list[Line]) -> None:
        tally, view = self.tally, BatchView(self.err, self.tally)
        options = attrs.evolve(self.job.options, journal=journal, download_to=self.job.out)
        results_path = self.job.out / RESULTS_NAME
        with _on_interrupt(self.stopper.press):
            with (
                view,
                results_path.open("w", encoding="utf-8") as results,
                anyio.CancelScope() as scope,
            ):
                self.stopper.scope = scope
                for line in bad:
                    self._refuse(line, results)
                try:
                    async with journal, client:
                        self.earlier = await journal.spent()
                        outcomes = client.generate_many(
                            self._feed(results), **attrs.asdict(options, recurse=False)
                        )
                        async with contextlib.aclosing(outcomes), anyio.create_task_group() as tg:
                            tg.start_soon(self._tick, view, client)
                            async for outcome in outcomes:
                                self._record(outcome, results)
                            view.update(client.jobs.counts, self.earlier + client.jobs.spent)
                            tg.cancel_scope.cancel()
                finally:
                    # Read once the client has closed: creates under way at a second Ctrl-C land
                    # in its table while it closes, and they are paid for.
                    tally.spent = client.jobs.spent
                    self.pending = [record.id for record in client.jobs.pending()]
            if scope.cancelled_caught or not self.stopper.admitting():
                tally.interrupted = True

    async def _feed(self, results: TextIO) -> AsyncIterator[BatchItem]:
        # The file is read again, one line at a time, so encoded images are never all held in
        # memory; each line is checked again in case the file changed since.
        job, stopper = self.job, self.stopper
        with contextlib.closing(checked_lines(job.source, job.out)) as iterator:
            sentinel = Line(0, None)
            while stopper.admitting():
                line = await anyio.to_thread.run_sync(next, iterator, sentinel)
                if line is sentinel:
                    return
                if line.number in self.reported:
                    continue
                if line.item is None:  # the file changed since it was checked
                    print_problem(self.err, line)
                    self._refuse(line, results)
                    continue
                if not stopper.admitting():
                    # Ctrl-C came while the line was read (a local image takes a while): no new
                    # request is sent, as promised.
                    return
                self.fed.append((line.number, line.item.key))
                yield line.item

    async def _tick(self, view: BatchView, client: AsyncShortWan) -> None:
        while True:
            view.update(client.jobs.counts, self.earlier + client.jobs.spent)
            await anyio.sleep(0.25)

    def _refuse(self, line: Line, results: TextIO) -> None:
        error = InvalidRequestError([line.problem or "invalid"])
        row = result_row(line.number, line.key, Outcome(index=-1, error=error))
        results.write(json.dumps(row) + "\n")
        self.tally.done += 1
        self.tally.failed["invalid"] += 1

    def _record(self, outcome: Outcome, results: TextIO) -> None:
        tally = self.tally
        tally.done += 1
        if outcome.replayed:
            tally.replayed += 1
        if outcome.ok:
            tally.succeeded += 1
        else:
            status = status_of(outcome)
            tally.failed[status] += 1
            if status == "not_sent_spend_cap":
                tally.spend_capped = True
        row = result_row(*self.fed[outcome.index], outcome)
        results.write(json.dumps(row) + "\n")
        results.flush()

    def _say_what_is_left(self) -> None:
        tally, pending = self.tally, self.pending
        if tally.interrupted:
            left = tally.total - tally.done
            shown = ", ".join(pending[:5]) + (" …" if len(pending) > 5 else "")
            flight = (
                f"jobs in flight stay in the journal ({shown})" if pending else "no job in flight"
            )
            say(
                self.err,
                f"Stopped: {left} requests not finished; {flight}. Run the same command again "
                "to resume.",
                style="yellow",
            )
        elif tally.done < tally.total:
            say(
                self.err,
                f"{tally.total - tally.done} requests were not handled; see "
                f"{self.job.out / RESULTS_NAME}.",
                style="yellow",
            )

    def _exit_code(self) -> int:
        tally = self.tally
        if tally.interrupted:
            return EXIT_INTERRUPTED
        if tally.spend_capped:
            return EXIT_SPEND_CAP
        if tally.failed or tally.done < tally.total:
            return EXIT_FAILED
        return EXIT_OK


def dry_run(source: Path, out: Path, console: Console, err: Console) -> int:
    """Check every line without sending anything; print the count and estimated cost.

    The checks are the ones a real run into ``out`` makes before sending: each line's own, plus
    unique keys and outputs, and outputs that fit in ``out`` without taking the batch's files.
    """
    count, cost, bad = check_file(source, out)
    for line in bad:
        print_problem(err, line)
    console.print(
        f"{count} valid requests, {len(bad)} invalid; estimated cost ${cost:.3f} "
        f"(at ${PRICE_PER_SECOND} per second of video). Nothing was sent.",
        highlight=False,
    )
    return EXIT_FAILED if bad else EXIT_OK
