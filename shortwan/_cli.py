"""The ``shortwan`` command: generate, batch, status, wait, download, fake-server, demo.

Needs the ``cli`` extra (click and rich): ``pip install 'shortwan[cli]'``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import stat
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import attrs
import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ._cli_batch import (
    DEMO_MARKER,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    JOURNAL_NAME,
    RESERVED_NAMES,
    BatchOptions,
    dry_run,
    run_batch,
)
from ._client import AsyncShortWan
from ._config import DEFAULT_POLL, PollPolicy
from ._errors import ConfigurationError, InvalidRequestError, ShortWanError
from ._models import ImageToVideo, JobSnapshot
from .testing import fast_poll
from .testing._serve import click_options, serve_forever

__all__ = ["main"]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])

# Text from the service, the files and the user is never markup or an :emoji: code: every such
# piece is printed with markup=False, escaped, or as rich.text.Text.
console = Console(highlight=False, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False)


def _run(func: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``func`` in a new event loop, turning shortwan errors into messages and exit codes."""
    try:
        return anyio.run(func)
    except ConfigurationError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(EXIT_USAGE)
    except InvalidRequestError as exc:
        err.print(str(exc), markup=False)  # "invalid request: …"
        sys.exit(EXIT_USAGE)
    except ShortWanError as exc:
        err.print(f"error: {type(exc).__name__}: {exc}", markup=False)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)


def _client(ctx: click.Context) -> AsyncShortWan:
    settings: dict[str, Any] = ctx.obj
    return AsyncShortWan(settings["api_key"], base_url=settings["base_url"], poll=settings["poll"])


def _amount(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"not an amount in USD: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise click.BadParameter(f"must be an amount >= 0: {value!r}")
    return amount


def _seconds(_ctx: click.Context, _param: click.Parameter, value: float) -> float | None:
    """Check a --timeout before anything is opened or sent; 'inf' means no limit (None)."""
    if value == math.inf:
        return None
    if not math.isfinite(value) or value <= 0:
        raise click.BadParameter(f"must be a number of seconds > 0, or 'inf' (got {value!r})")
    return value


def _timeout_option(what: str) -> Callable[[_F], _F]:
    return click.option(
        "--timeout",
        type=float,
        default=900,
        show_default=True,
        callback=_seconds,
        help=f"Seconds to wait {what} (> 0; 'inf' waits without limit).",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--api-key",
    envvar="SHORTAPI_KEY",
    show_envvar=True,
    help="ShortAPI key (prefer the environment variable: arguments show up in process lists).",
)
@click.option(
    "--base-url",
    envvar="SHORTWAN_BASE_URL",
    show_envvar=True,
    help="API origin, for example a fake server's URL.",
)
@click.option(
    "--poll",
    type=click.Choice(["normal", "fast"]),
    envvar="SHORTWAN_POLL",
    show_envvar=True,
    default="normal",
    help="'fast' polls every 50 ms, for fake servers whose jobs take seconds.",
)
@click.option("-v", "--verbose", count=True, help="Log progress (-v) or every request (-vv).")
@click.version_option(package_name="shortwan")
@click.pass_context
def main(
    ctx: click.Context, *, api_key: str | None, base_url: str | None, poll: str, verbose: int
) -> None:
    """Make videos with ShortAPI's alibaba/wan-2.7/image-to-video model."""
    ctx.obj = {
        "api_key": api_key,
        "base_url": base_url,
        "poll": fast_poll() if poll == "fast" else DEFAULT_POLL,
    }
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


@main.command()
@click.argument("image")
@click.option("-p", "--prompt", help="What should happen in the video.")
@click.option("--negative-prompt", help="What should not.")
@click.option("-d", "--duration", type=click.IntRange(2, 15), default=5, show_default=True)
@click.option("-r", "--resolution", type=click.Choice(["720p", "1080p"]), default="1080p")
@click.option("--last-frame", help="Image path or URL for the last frame.")
@click.option("--audio-url", help="WAV or MP3 URL to drive the video.")
@click.option("--prompt-extend/--no-prompt-extend", default=False)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="File or folder.")
@_timeout_option("for the video")
@click.pass_context
def generate(
    ctx: click.Context,
    *,
    image: str,
    prompt: str | None,
    negative_prompt: str | None,
    duration: int,
    resolution: str,
    last_frame: str | None,
    audio_url: str | None,
    prompt_extend: bool,
    output: Path | None,
    timeout: float | None,
) -> None:
    """Make one video from IMAGE (a local file or a URL) and download it."""
    try:
        request = ImageToVideo.from_files(
            first_frame_image=image,
            last_frame_image=last_frame,
            prompt=prompt,
            negative_prompt=negative_prompt,
            duration=duration,
            resolution=resolution,
            driving_audio_url=audio_url,
            prompt_extend=prompt_extend,
        )
    except InvalidRequestError as exc:
        err.print(f"{exc}\nNothing was sent.", markup=False)
        sys.exit(EXIT_USAGE)

    async def go() -> None:
        async with _client(ctx) as client:
            with err.status("submitting…"):
                job = await client.submit(request)
            console.print(f"job {job.id} created, charged ${job.amount}", markup=False)
            with err.status(f"waiting for job {escape(job.id)}…"):
                video = await job.result(timeout=timeout)
                path = await client.download(video, output or Path.cwd())
            console.print(f"saved {path}", markup=False)

    _run(go)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the videos, results.jsonl and the journal.",
)
@click.option("-c", "--concurrency", type=click.IntRange(1, 1000), default=16, show_default=True)
@click.option("--max-spend", help="Stop sending once this many USD would be crossed.")
@click.option("--dry-run", is_flag=True, help="Check every line and estimate the cost; send none.")
@click.option(
    "--retry-uncertain",
    is_flag=True,
    help="Resend requests an earlier run may have sent without learning the outcome "
    "(they may be paid twice).",
)
@_timeout_option("for each job")
@click.pass_context
def batch(
    ctx: click.Context,
    *,
    file: Path,
    out: Path,
    concurrency: int,
    max_spend: str | None,
    dry_run: bool,
    retry_uncertain: bool,
    timeout: float | None,
) -> None:
    """Make a video for every line of FILE (JSONL: model arguments plus optional key, output).

    Rerunning the same command resumes: finished lines are not sent again, jobs in flight are
    collected by id. FILE must be a regular file (it is read twice: checked, then sent). Exit
    codes: 0 all succeeded, 1 some failed or were not handled, 2 usage error, 3 spend cap reached,
    130 interrupted.
    """
    _check_batch_paths(file, out)
    if dry_run:
        sys.exit(_dry(file, out))
    # The folder now holds real jobs: a later demo must not start it over.
    with contextlib.suppress(OSError):  # no folder yet, or one the batch will fail to use anyway
        (out / DEMO_MARKER).unlink(missing_ok=True)
    options = BatchOptions(
        source=file,
        out=out,
        concurrency=concurrency,
        max_spend=_amount(max_spend),
        retry_uncertain=retry_uncertain,
        timeout=timeout,
        poll=ctx.obj["poll"],
    )
    settings: dict[str, Any] = ctx.obj

    async def go() -> int:
        return await run_batch(
            options,
            api_key=settings["api_key"],
            base_url=settings["base_url"],
            console=console,
            err=err,
        )

    sys.exit(_run(go))


def _check_batch_paths(file: Path, out: Path) -> None:
    """Refuse an input the batch cannot read twice or would overwrite, before anything is sent."""
    if not stat.S_ISREG(file.stat().st_mode):
        raise click.BadParameter(
            f"{str(file)!r} is not a regular file (a pipe or a device?): the batch reads it twice "
            "(to check it, then to send it), so save it to a file first",
            param_hint="'FILE'",
        )
    source, folder = file.resolve(), out.resolve()
    if source.parent == folder and source.name.casefold() in {n.casefold() for n in RESERVED_NAMES}:
        raise click.BadParameter(
            f"{str(file)!r} is a file the batch itself writes in {str(out)!r}; use another "
            "input file or --out folder",
            param_hint="'FILE'",
        )


def _dry(file: Path, out: Path) -> int:
    return dry_run(file, out, console, err)


def _snapshot_table(snapshot: JobSnapshot) -> Table:
    # Everything here comes from the service: Text, never markup.
    title = Text(f"job {snapshot.id}")
    table = Table(show_header=False, title=title, title_justify="left")
    table.add_column("field")
    table.add_column("value")
    table.add_row("status", Text(f"{snapshot.status.name.lower()} ({snapshot.raw_status})"))
    for name in ("credit", "error", "refunded", "created_at", "finished_at"):
        value = getattr(snapshot, name, None)
        if value is not None:
            table.add_row(name.replace("_", " "), Text(str(value)))
    for url in snapshot.urls:
        table.add_row("url", Text(url))
    return table


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the raw answer as JSON.")
@click.pass_context
def status(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Ask once how JOB_ID is doing."""

    async def go() -> None:
        async with _client(ctx) as client:
            snapshot = await client.get_job(job_id)
        if as_json:
            fields = attrs.asdict(snapshot, recurse=False)
            fields["status"] = snapshot.status.name.lower()
            console.print_json(json.dumps(fields, default=str))
        else:
            console.print(_snapshot_table(snapshot))

    _run(go)


@main.command()
@click.argument("job_id")
@_timeout_option("for the job")
@click.pass_context
def wait(ctx: click.Context, job_id: str, timeout: float | None) -> None:
    """Wait for JOB_ID to end and print its video URL."""

    async def go() -> None:
        async with _client(ctx) as client:
            with err.status(f"waiting for job {escape(job_id)}…"):
                video = await client.attach(job_id).result(timeout=timeout)
        console.print(video.url, markup=False, soft_wrap=True)

    _run(go)


@main.command()
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="File or folder.")
@_timeout_option("for the job")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@click.pass_context
def download(
    ctx: click.Context, job_id: str, output: Path | None, timeout: float | None, overwrite: bool
) -> None:
    """Download the video of JOB_ID (waiting for it to finish first)."""

    async def go() -> None:
        async with _client(ctx) as client:
            with err.status(f"downloading job {escape(job_id)}…"):
                video = await client.attach(job_id).result(timeout=timeout)
                path = await client.download(video, output or Path.cwd(), overwrite=overwrite)
        console.print(f"saved {path}", markup=False)

    _run(go)


@main.command("fake-server")
@click_options
def fake_server(**options: Any) -> None:
    """Run a local fake of the service (no key, no network) until Ctrl-C."""

    def ready(url: str, key: str) -> None:
        shown = f"faults: {options['faults']}, speed ×{options['speed']}"
        console.print(f"FakeShortAPI at {url} ({shown})", markup=False)
        console.print(
            f"export SHORTWAN_BASE_URL={url} SHORTAPI_KEY={key} SHORTWAN_POLL=fast",
            soft_wrap=True,
            markup=False,
        )

    try:
        anyio.run(lambda: serve_forever(ready=ready, **options))
    except KeyboardInterrupt:
        err.print("stopped")


DEMO_PROMPTS: Final = {
    "aurora": "green lights ripple across the night sky",
    "city": "evening traffic streams between the towers",
    "desert": "wind lifts sand over the dunes",
    "forest": "sunbeams drift through the trees",
    "harbour": "boats rock gently in the harbour",
    "sunrise": "the sun climbs over the hills",
}


def write_demo_batch(folder: Path) -> Path:
    """Write the demo's JSONL file (one line per bundled sample image) and return its path."""
    from .testing._render import sample_images  # noqa: PLC0415 - the demo only

    lines = []
    for number, image in enumerate(sample_images()):
        lines.append(
            {
                "key": image.stem,
                "prompt": DEMO_PROMPTS.get(image.stem, "a slow camera move"),
                "first_frame_image": str(image),
                "duration": 2 + number % 3,
                "resolution": "720p",
                "output": f"{image.stem}.mp4",
            }
        )
    path = folder / "demo.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


# What a demo run leaves that the next one deletes (the journal's lock file is left alone).
_DEMO_STATE: Final = tuple(
    name for name in RESERVED_NAMES if name not in (DEMO_MARKER, JOURNAL_NAME + ".lock")
)


@main.command()
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("shortwan-demo"),
    show_default=True,
)
def demo(out: Path) -> None:
    """Make six real videos from bundled images against a local fake: no key, no network.

    A folder holding the journal or results of a batch that is not a demo is refused (exit 2):
    that journal may be the only record of paid jobs still running.
    """
    from .testing import FakeShortAPI  # noqa: PLC0415 - the demo only

    # A demo starts over (its fake server forgot its jobs when it stopped), but only in a folder
    # a demo made: elsewhere the journal may be the only record of paid jobs still running.
    state = [name for name in _DEMO_STATE if (out / name).exists()]
    if state and not (out / DEMO_MARKER).is_file():
        err.print(
            f"{out} holds {', '.join(state)} of a batch that is not a demo run (its journal may "
            "list paid jobs still running); choose another folder with -o",
            markup=False,
        )
        sys.exit(EXIT_USAGE)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text(
        "Made by `shortwan demo`: a later demo starts this folder over.\n", encoding="utf-8"
    )
    for name in state:
        (out / name).unlink(missing_ok=True)
    source = write_demo_batch(out)

    async def go() -> int:
        async with FakeShortAPI(
            render=True, queue_time=0.5, run_time=2.0, jitter=0.6, seed=2026
        ) as fake:
            err.print(f"FakeShortAPI running at {fake.url} (a local stand-in for the service)")
            poll: PollPolicy = fast_poll()
            return await run_batch(
                BatchOptions(source=source, out=out, concurrency=6, poll=poll),
                api_key=fake.api_key,
                base_url=fake.url,
                console=console,
                err=err,
            )

    code = _run(go)
    if code == EXIT_OK:
        console.print(f"Done: play the MP4 files in {out.resolve()}", markup=False)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
