"""The ``shortwan`` command group and the commands that talk to the service.

``fake-server`` and ``demo``, the two commands that use the test fake, are in ``_fake_commands``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .._client import AsyncShortWan
from .._config import DEFAULT_POLL, FAST_POLL
from .._errors import InvalidRequestError
from .._models import ImageToVideo, JobSnapshot
from .._options import DEFAULT_CONCURRENCY, BatchOptions
from .._shared import SharedStore
from .._spec import (
    DEFAULT_DURATION,
    DEFAULT_RESOLUTION,
    MAX_DURATION,
    MIN_DURATION,
    RESOLUTIONS,
)
from ._common import console, err, run, timeout_option
from ._fake_commands import demo, fake_server
from ._names import DEMO_MARKER, EXIT_USAGE, RESERVED_NAMES
from ._run import BatchJob, dry_run, run_batch

__all__ = ["main"]


def _client(ctx: click.Context) -> AsyncShortWan:
    settings: dict[str, Any] = ctx.obj
    return AsyncShortWan(settings["api_key"], base_url=settings["base_url"], poll=settings["poll"])


class _Commands(click.Group):
    """The command group; ``fake-server``, whose options come from the fake, is built on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "fake-server"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "fake-server":
            return fake_server()
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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
        "poll": FAST_POLL if poll == "fast" else DEFAULT_POLL,
    }
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


main.add_command(demo)


@main.command()
@click.argument("image")
@click.option("-p", "--prompt", help="What should happen in the video.")
@click.option("--negative-prompt", help="What should not.")
@click.option(
    "-d",
    "--duration",
    type=click.IntRange(MIN_DURATION, MAX_DURATION),
    default=DEFAULT_DURATION,
    show_default=True,
)
@click.option("-r", "--resolution", type=click.Choice(RESOLUTIONS), default=DEFAULT_RESOLUTION)
@click.option("--last-frame", help="Image path or URL for the last frame.")
@click.option("--audio-url", help="WAV or MP3 URL to drive the video.")
@click.option("--prompt-extend/--no-prompt-extend", default=False)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="File or folder.")
@timeout_option("for the video")
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

    run(go)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the videos, results.jsonl and the journal.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1, 1000),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
)
@click.option("--max-spend", help="Stop sending once this many USD would be crossed.")
@click.option("--dry-run", is_flag=True, help="Check every line and estimate the cost; send none.")
@click.option(
    "--resubmit-uncertain",
    "--retry-uncertain",
    "resubmit_uncertain",
    is_flag=True,
    help="Resend requests an earlier run may have sent without learning the outcome "
    "(they may be paid twice). --retry-uncertain is its former name.",
)
@timeout_option("for each job")
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    envvar="SHORTWAN_REDIS",
    show_envvar=True,
    help="Share the --max-spend cap and job ends with every batch on this Redis "
    "(redis://host:port/db; needs shortwan[redis]).",
)
@click.option(
    "--redis-namespace",
    default="shortwan",
    show_default=True,
    help="The prefix of every Redis key: batches that share a cap use the same one.",
)
@click.pass_context
def batch(
    ctx: click.Context,
    *,
    file: Path,
    out: Path,
    concurrency: int,
    max_spend: str | None,
    dry_run: bool,
    resubmit_uncertain: bool,
    timeout: float | None,
    redis_url: str | None,
    redis_namespace: str,
) -> None:
    """Make a video for every line of FILE (JSONL: model arguments plus optional key, output).

    Rerunning the same command resumes: finished lines are not sent again, jobs in flight are
    collected by id. FILE must be a regular file (it is read twice: checked, then sent). With
    --redis, every batch on that Redis and namespace shares one --max-spend cap (they must all
    give the same one) and each other's job ends. Exit codes: 0 all succeeded, 1 some failed or
    were not handled, 2 usage error (or Redis unreachable: nothing was sent), 3 spend cap
    reached, 130 interrupted.
    """
    _check_batch_paths(file, out)
    if dry_run:
        sys.exit(_dry(file, out))
    try:
        options = BatchOptions(
            concurrency=concurrency,
            max_spend=max_spend,
            timeout=timeout,
            resubmit_uncertain=resubmit_uncertain,
        )
    except InvalidRequestError as exc:
        raise click.BadParameter("; ".join(exc.problems)) from None
    if redis_url is not None and importlib.util.find_spec("redis") is None:
        raise click.UsageError("--redis needs redis-py: pip install 'shortwan[redis]'")
    job = BatchJob(source=file, out=out, options=options, poll=ctx.obj["poll"])
    settings: dict[str, Any] = ctx.obj
    # The folder now holds real jobs: a later demo must not start it over.
    with contextlib.suppress(OSError):  # no folder yet, or one the batch will fail to use anyway
        (out / DEMO_MARKER).unlink(missing_ok=True)

    async def go() -> int:
        async def send(shared: SharedStore | None = None) -> int:
            return await run_batch(
                job,
                api_key=settings["api_key"],
                base_url=settings["base_url"],
                console=console,
                err=err,
                shared=shared,
            )

        if redis_url is None:
            return await send()
        return await _with_redis(redis_url, redis_namespace, send)

    sys.exit(run(go))


async def _with_redis(
    url: str, namespace: str, send: Callable[[SharedStore], Awaitable[int]]
) -> int:
    """Connect to Redis (a ConfigurationError, exit 2, if it cannot), then run ``send``."""
    # The extra is imported only by the runs that ask for it.
    from ..redis import connect  # noqa: PLC0415

    async with await connect(url, namespace=namespace) as shared:
        return await send(shared)


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

    run(go)


@main.command()
@click.argument("job_id")
@timeout_option("for the job")
@click.pass_context
def wait(ctx: click.Context, job_id: str, timeout: float | None) -> None:
    """Wait for JOB_ID to end and print its video URL."""

    async def go() -> None:
        async with _client(ctx) as client:
            with err.status(f"waiting for job {escape(job_id)}…"):
                video = await client.attach(job_id).result(timeout=timeout)
        console.print(video.url, markup=False, soft_wrap=True)

    run(go)


@main.command()
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="File or folder.")
@timeout_option("for the job")
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

    run(go)
