"""The two commands that run the test fake: ``fake-server`` and ``demo``.

They are the only code of the command line that imports :mod:`shortwan.testing`, and they do so
when they run (``fake-server`` when it is built), so no other command loads the fake.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Final

import anyio
import click

from .._options import BatchOptions
from ._common import backend_options, console, err, run
from ._names import DEMO_MARKER, EXIT_OK, EXIT_USAGE, JOURNAL_NAME, RESERVED_NAMES
from ._run import BatchJob, run_batch

__all__ = ["demo", "fake_server"]


def fake_server() -> click.Command:
    """Build the ``fake-server`` command.

    Its options are the fake's own table (``shortwan.testing._serve``), so ``shortwan
    fake-server`` and ``python -m shortwan.testing`` take the same ones; the command is built when
    it is asked for, so no other command loads the fake.
    """
    from ..testing._serve import click_options, serve_forever  # noqa: PLC0415 - see above

    @click.command("fake-server")
    @click_options
    def command(**options: Any) -> None:
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
            anyio.run(
                functools.partial(serve_forever, ready=ready, **options),
                backend_options=backend_options(),
            )
        except KeyboardInterrupt:
            err.print("stopped")

    return command


DEMO_PROMPTS: Final = {
    "aurora": "green lights ripple across the night sky",
    "city": "evening traffic streams between the towers",
    "desert": "wind lifts sand over the dunes",
    "forest": "sunbeams drift through the trees",
    "harbour": "boats rock gently in the harbour",
    "sunrise": "the sun climbs over the hills",
}

# What a demo run leaves that the next one deletes (the journal's lock file is left alone).
_DEMO_STATE: Final = tuple(
    name for name in RESERVED_NAMES if name not in (DEMO_MARKER, JOURNAL_NAME + ".lock")
)


def _demo_video(image: Path) -> str:
    """Name the video the demo makes of ``image``."""
    return f"{image.stem}.mp4"


def write_demo_batch(folder: Path, images: list[Path]) -> Path:
    """Write the demo's JSONL file (one line per image) and return its path."""
    lines = []
    for number, image in enumerate(images):
        lines.append(
            {
                "key": image.stem,
                "prompt": DEMO_PROMPTS.get(image.stem, "a slow camera move"),
                "first_frame_image": str(image),
                "duration": 2 + number % 3,
                "resolution": "720p",
                "output": _demo_video(image),
            }
        )
    path = folder / "demo.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@click.command()
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
    from ..testing import FakeShortAPI, fast_poll  # noqa: PLC0415 - this command only
    from ..testing._render import sample_images  # noqa: PLC0415 - this command only

    # A demo starts over (its fake server forgot its jobs when it stopped), but only in a folder
    # a demo made: elsewhere the journal may be the only record of paid jobs still running.
    state = [name for name in _DEMO_STATE if (out / name).exists()]
    made_by_demo = (out / DEMO_MARKER).is_file()
    if state and not made_by_demo:
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
    images = sample_images()
    if made_by_demo:
        # Its videos go too: they are made again, and a download never replaces a file it did
        # not write. Only in a folder a demo made: elsewhere such a name may be someone's file.
        for image in images:
            (out / _demo_video(image)).unlink(missing_ok=True)
    source = write_demo_batch(out, images)

    async def go() -> int:
        async with FakeShortAPI(
            render=True, queue_time=0.5, run_time=2.0, jitter=0.6, seed=2026
        ) as fake:
            err.print(f"FakeShortAPI running at {fake.url} (a local stand-in for the service)")
            job = BatchJob(
                source=source, out=out, options=BatchOptions(concurrency=6), poll=fast_poll()
            )
            return await run_batch(
                job, api_key=fake.api_key, base_url=fake.url, console=console, err=err
            )

    code = run(go)
    if code == EXIT_OK:
        console.print(f"Done: play the MP4 files in {out.resolve()}", markup=False)
    sys.exit(code)
