"""The command line's bulk run: a JSONL file in, a folder of videos and ``results.jsonl`` out.

Kept apart from the command definitions so the demo and ``batch`` share one implementation. It
needs the ``cli`` extra (rich); nothing here is imported by the library itself.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, TextIO

import anyio
import attrs
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ._client import AsyncShortWan
from ._config import DEFAULT_POLL, PollPolicy
from ._download import output_target
from ._errors import (
    DownloadError,
    InvalidRequestError,
    JobDetachedError,
    JobFailedError,
    JobTimeoutError,
    JournalError,
    ShortWanError,
    SpendLimitError,
    SubmissionUncertainError,
    quoted,
)
from ._media import image_input_or_problem, is_remote
from ._models import BatchItem, ImageToVideo, Outcome
from ._spec import DEFAULT_JOB_TIMEOUT, PRICE_PER_SECOND
from ._table import JobState
from .journal import Journal

__all__ = [
    "DEMO_MARKER",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SPEND_CAP",
    "EXIT_USAGE",
    "RESERVED_NAMES",
    "BatchOptions",
    "Line",
    "check_file",
    "checked_lines",
    "dry_run",
    "read_lines",
    "run_batch",
]

EXIT_OK: Final = 0
"""Every request produced its video (and file)."""
EXIT_FAILED: Final = 1
"""At least one request failed, timed out, was invalid or is uncertain."""
EXIT_USAGE: Final = 2
"""The command line, the input file or the settings are wrong; nothing was sent."""
EXIT_SPEND_CAP: Final = 3
"""The spend cap stopped requests from being sent."""
EXIT_INTERRUPTED: Final = 130
"""Stopped by Ctrl-C; rerun the same command to resume."""

JOURNAL_NAME: Final = "journal.sqlite"
RESULTS_NAME: Final = "results.jsonl"
DEMO_MARKER: Final = ".shortwan-demo"
"""Marks a folder the demo made, so a later demo may start it over (and nothing else may be)."""
RESERVED_NAMES: Final = (
    RESULTS_NAME,
    JOURNAL_NAME,
    *(JOURNAL_NAME + suffix for suffix in ("-wal", "-shm", "-journal", ".lock")),
    DEMO_MARKER,
)
"""Files the batch itself keeps in its folder: no line's output may take one of these names."""
_IMAGE_FIELDS: Final = ("first_frame_image", "last_frame_image")


@attrs.frozen
class Line:
    """One line of the input: a request ready to send, or why it cannot be.

    ``key`` and ``output`` are the line's own, kept even when the line is invalid so that its row
    in ``results.jsonl`` names it and no other line can take them.
    """

    number: int
    item: BatchItem | None
    problem: str | None = None
    key: str | None = None
    output: str | None = None


def _parse(number: int, text: str, base: Path) -> Line:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Line(number, None, f"not JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return Line(number, None, "not usable JSON: nested too deeply")
    except ValueError as exc:  # an integer of more digits than Python converts
        return Line(number, None, f"not usable JSON: {str(exc).split(';')[0]}")
    if not isinstance(data, dict):
        return Line(number, None, f"a line must be a JSON object, got {type(data).__name__}")
    args: dict[str, Any] = dict(data)
    key, output = args.pop("key", None), args.pop("output", None)
    problems: list[str] = []
    # The library's own rules for keys and output names; a bad one is dropped from the row.
    try:
        BatchItem(request={}, key=key)
    except InvalidRequestError as exc:
        problems.extend(exc.problems)
        key = None
    try:
        BatchItem(request={}, output=output)
    except InvalidRequestError as exc:
        problems.extend(exc.problems)
        output = None
    for name in _IMAGE_FIELDS:
        value = args.get(name)
        if isinstance(value, str) and not is_remote(value):
            # A local path, relative to the file that names it.
            value, problem = image_input_or_problem(base / value, name=name)
            if problem is not None:
                problems.append(problem)
            args[name] = value
    if problems:
        return Line(number, None, "; ".join(problems), key, output)
    try:
        request = ImageToVideo(**args)
    except InvalidRequestError as exc:
        return Line(number, None, "; ".join(exc.problems), key, output)
    except TypeError as exc:
        # "ImageToVideo.__init__() got an unexpected keyword argument 'x'" → "got an …"
        return Line(number, None, re.sub(r"^\S*__init__\(\) ", "", str(exc)), key, output)
    try:
        return Line(number, BatchItem(request=request, key=key, output=output), None, key, output)
    except InvalidRequestError as exc:
        return Line(number, None, "; ".join(exc.problems), key, output)


def read_lines(path: Path) -> Generator[Line, None, None]:
    """Yield every non-blank line of a JSONL file, parsed and checked (local images included).

    Each line is decoded on its own, so one that is not UTF-8 is reported and the others still
    count; a UTF-8 byte order mark at the start of the file is accepted.
    """
    base = path.parent
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            data = (
                raw[len(codecs.BOM_UTF8) :]
                if number == 1 and raw.startswith(codecs.BOM_UTF8)
                else raw
            )
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = f"not UTF-8 text: byte {data[exc.start]:#04x} at byte {exc.start + 1}"
                yield Line(number, None, problem)
                continue
            if not text.strip():
                continue
            try:
                yield _parse(number, text, base)
            except Exception as exc:  # one odd line is that line's problem, never the batch's
                yield Line(number, None, f"could not be read: {type(exc).__name__}: {exc}")


class _Checker:
    """Checks across lines: unique keys, unique outputs, outputs that fit the folder."""

    def __init__(self, source: Path, out: Path) -> None:
        self.folder = out.resolve()
        self.reserved = {name.casefold() for name in RESERVED_NAMES}
        source = source.resolve()
        if source.is_relative_to(self.folder) and source != self.folder:
            # The input file itself, when it lives in the folder, must not be overwritten.
            self.reserved.add(source.relative_to(self.folder).parts[0].casefold())
        self.keys: dict[str, int] = {}
        self.targets: dict[Path, int] = {}

    def check(self, line: Line) -> Line:
        """Return ``line``, made invalid if an earlier line or the folder rules it out."""
        problems = [] if line.problem is None else [line.problem]
        if line.key is not None:
            first = self.keys.setdefault(line.key, line.number)
            if first != line.number:
                problems.append(f"key {quoted(line.key)} is also the key of line {first}")
        if line.output is not None:
            target, problem = output_target(self.folder, line.output)
            if problem is None:
                top = target.relative_to(self.folder).parts[0]
                if top.casefold() in self.reserved:
                    problem = (
                        f"output {quoted(line.output)} would overwrite {top!r}, which the batch "
                        "keeps in its folder"
                    )
            if problem is None:
                first = self.targets.setdefault(target, line.number)
                if first != line.number:
                    problem = f"output {quoted(line.output)} is also the output of line {first}"
            if problem is not None:
                problems.append(problem)
        if len(problems) == (0 if line.problem is None else 1):
            return line
        return Line(line.number, None, "; ".join(problems), line.key, line.output)


def checked_lines(source: Path, out: Path) -> Generator[Line, None, None]:
    """Yield :func:`read_lines`, with the checks across lines for a batch into ``out`` added."""
    checker = _Checker(source, out)
    with contextlib.closing(read_lines(source)) as lines:
        for line in lines:
            yield checker.check(line)


@attrs.frozen(kw_only=True)
class BatchOptions:
    """What ``shortwan batch`` was asked to do."""

    source: Path
    out: Path
    concurrency: int = 16
    max_spend: Decimal | None = None
    retry_uncertain: bool = False
    timeout: float | None = DEFAULT_JOB_TIMEOUT
    poll: PollPolicy = DEFAULT_POLL


@attrs.define
class _Tally:
    total: int
    done: int = 0
    succeeded: int = 0
    replayed: int = 0
    failed: Counter[str] = attrs.field(factory=Counter)
    spend_capped: bool = False
    interrupted: bool = False
    spent: Decimal = Decimal(0)


def _status(outcome: Outcome) -> str:
    error = outcome.error
    if error is None:
        return "succeeded"
    statuses: list[tuple[type[ShortWanError], str]] = [
        (JobFailedError, "failed"),
        (SubmissionUncertainError, "uncertain"),
        (SpendLimitError, "not_sent_spend_cap"),
        (JobTimeoutError, "timed_out"),
        (JobDetachedError, "interrupted"),
        (DownloadError, "download_failed"),
        (InvalidRequestError, "invalid"),
    ]
    for kind, name in statuses:
        if isinstance(error, kind):
            return name
    return "not_created" if outcome.job_id is None else "error"


def _result_row(line: int, key: str | None, outcome: Outcome) -> dict[str, Any]:
    error = outcome.error
    return {
        "line": line,
        # A line refused before it was sent has no key on its outcome; the line still has it.
        "key": outcome.key if outcome.key is not None else key,
        "job_id": outcome.job_id,
        "status": _status(outcome),
        "amount": None if outcome.amount is None else str(outcome.amount),
        "url": outcome.video.url if outcome.video is not None else None,
        "file": None if outcome.path is None else str(outcome.path),
        "error_type": None if error is None else type(error).__name__,
        "error": None if error is None else str(error),
        "replayed": outcome.replayed,
    }


def check_file(source: Path, out: Path) -> tuple[int, Decimal, list[Line]]:
    """Read the whole file: return the count of valid lines, their cost, and the invalid ones.

    Besides each line's own checks, keys and outputs must be unique, and every output must be a
    usable name inside ``out`` that is not one of the batch's own files.
    """
    count, cost, bad = 0, Decimal(0), []
    for line in checked_lines(source, out):
        if line.item is None:
            bad.append(line)
            continue
        count += 1
        request = line.item.request
        assert isinstance(request, ImageToVideo)  # noqa: S101 - built above
        cost += request.estimated_cost
    return count, cost, bad


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
    options: BatchOptions,
    *,
    api_key: str | None,
    base_url: str | None,
    console: Console,
    err: Console,
) -> int:
    """Run a JSONL batch to its end (or Ctrl-C) and return the process exit code."""
    count, cost, bad = await anyio.to_thread.run_sync(check_file, options.source, options.out)
    for line in bad:
        _print_problem(err, line)
    err.print(
        f"{count} requests (estimated ${cost:.3f}), {len(bad)} invalid lines skipped; "
        f"videos and results go to {options.out}",
        highlight=False,
        markup=False,
    )
    out = options.out
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    lines: list[tuple[int, str | None]] = []  # each request fed, in order → (line number, key)
    reported = {line.number for line in bad}
    tally = _Tally(total=count + len(bad))
    stopper = _Stopper(err)

    def refuse(line: Line, results: TextIO) -> None:
        error = InvalidRequestError([line.problem or "invalid"])
        row = _result_row(line.number, line.key, Outcome(index=-1, error=error))
        results.write(json.dumps(row) + "\n")
        tally.done += 1
        tally.failed["invalid"] += 1

    async def feed(results: TextIO) -> AsyncIterator[BatchItem]:
        # The file is read again, one line at a time, so encoded images are never all held in
        # memory; each line is checked again in case the file changed since.
        with contextlib.closing(checked_lines(options.source, out)) as iterator:
            sentinel = Line(0, None)
            while stopper.admitting():
                line = await anyio.to_thread.run_sync(next, iterator, sentinel)
                if line is sentinel:
                    return
                if line.number in reported:
                    continue
                if line.item is None:  # the file changed since it was checked
                    _print_problem(err, line)
                    refuse(line, results)
                    continue
                if not stopper.admitting():
                    # Ctrl-C came while the line was read (a local image takes a while): no new
                    # request is sent, as promised.
                    return
                lines.append((line.number, line.item.key))
                yield line.item

    client = AsyncShortWan(api_key, base_url=base_url, poll=options.poll)
    journal = Journal(out / JOURNAL_NAME)
    results_path = out / RESULTS_NAME
    started = time.monotonic()
    progress = Progress(
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
    task = progress.add_task("videos", total=tally.total, detail="")
    earlier = Decimal(0)

    def refresh() -> None:
        counts = client.jobs.counts
        queued = counts.get(JobState.QUEUED, 0) + counts.get(JobState.SUBMITTING, 0)
        running = counts.get(JobState.RUNNING, 0)
        elapsed = max(time.monotonic() - started, 1e-9)
        rate = (tally.done - tally.replayed) / elapsed * 60
        failed = sum(tally.failed.values())
        progress.update(
            task,
            completed=tally.done,
            detail=(
                f"queued {queued} · running {running} · done {tally.succeeded} · "
                f"failed {failed} · ${earlier + client.jobs.spent:.3f} · {rate:.1f}/min"
            ),
        )

    pending: list[str] = []
    try:
        # The journal's run lock is taken before anything in OUT is touched: a second run on the
        # same folder stops here, before it could truncate the first one's results.
        await journal.__aenter__()
    except JournalError as exc:
        err.print(f"error: {exc}", style="red", markup=False, highlight=False)
        return EXIT_USAGE
    try:
        with _on_interrupt(stopper.press):
            with (
                progress,
                results_path.open("w", encoding="utf-8") as results,
                anyio.CancelScope() as scope,
            ):
                stopper.scope = scope
                for line in bad:
                    refuse(line, results)
                try:
                    async with journal, client:
                        earlier = await journal.spent()
                        outcomes = client.generate_many(
                            feed(results),
                            concurrency=options.concurrency,
                            max_spend=options.max_spend,
                            timeout=options.timeout,
                            journal=journal,
                            resubmit_uncertain=options.retry_uncertain,
                            download_to=out,
                        )
                        async with contextlib.aclosing(outcomes), anyio.create_task_group() as tg:

                            async def tick() -> None:
                                while True:
                                    refresh()
                                    await anyio.sleep(0.25)

                            tg.start_soon(tick)
                            async for outcome in outcomes:
                                _count(tally, outcome)
                                row = _result_row(*lines[outcome.index], outcome)
                                results.write(json.dumps(row) + "\n")
                                results.flush()
                            refresh()
                            tg.cancel_scope.cancel()
                finally:
                    # Read once the client has closed: creates under way at a second Ctrl-C land in
                    # its table while it closes, and they are paid for.
                    tally.spent = client.jobs.spent
                    pending = [record.id for record in client.jobs.pending()]
            if scope.cancelled_caught or not stopper.admitting():
                tally.interrupted = True
    finally:
        await journal.aclose()
    if tally.interrupted:
        left = tally.total - tally.done
        shown = ", ".join(pending[:5]) + (" …" if len(pending) > 5 else "")
        flight = f"jobs in flight stay in the journal ({shown})" if pending else "no job in flight"
        err.print(
            f"Stopped: {left} requests not finished; {flight}. Run the same command again to "
            "resume.",
            style="yellow",
            markup=False,
            highlight=False,
        )
    elif tally.done < tally.total:
        err.print(
            f"{tally.total - tally.done} requests were not handled; see {results_path}.",
            style="yellow",
            markup=False,
            highlight=False,
        )
    console.print(_summary(tally, earlier, out))
    if tally.interrupted:
        return EXIT_INTERRUPTED
    if tally.spend_capped:
        return EXIT_SPEND_CAP
    if tally.failed or tally.done < tally.total:
        return EXIT_FAILED
    return EXIT_OK


def _print_problem(err: Console, line: Line) -> None:
    err.print(f"line {line.number}: {line.problem}", highlight=False, markup=False)


def _count(tally: _Tally, outcome: Outcome) -> None:
    tally.done += 1
    if outcome.replayed:
        tally.replayed += 1
    if outcome.ok:
        tally.succeeded += 1
        return
    status = _status(outcome)
    tally.failed[status] += 1
    if status == "not_sent_spend_cap":
        tally.spend_capped = True


def _summary(tally: _Tally, earlier: Decimal, out: Path) -> Table:
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


def dry_run(source: Path, out: Path, console: Console, err: Console) -> int:
    """Check every line without sending anything; print the count and estimated cost.

    The checks are the ones a real run into ``out`` makes before sending: each line's own, plus
    unique keys and outputs, and outputs that fit in ``out`` without taking the batch's files.
    """
    count, cost, bad = check_file(source, out)
    for line in bad:
        _print_problem(err, line)
    console.print(
        f"{count} valid requests, {len(bad)} invalid; estimated cost ${cost:.3f} "
        f"(at ${PRICE_PER_SECOND} per second of video). Nothing was sent.",
        highlight=False,
    )
    return EXIT_FAILED if bad else EXIT_OK
