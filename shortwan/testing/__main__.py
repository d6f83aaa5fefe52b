"""Run FakeShortAPI by hand: ``python -m shortwan.testing --port 8080``."""

from __future__ import annotations

import argparse
import contextlib
import functools

import anyio

from ._serve import add_arguments, serve_forever


def main(argv: list[str] | None = None) -> None:
    """Serve the fake until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m shortwan.testing", description=__doc__)
    add_arguments(parser)
    values = vars(parser.parse_args(argv))

    def ready(url: str, key: str) -> None:
        print(f"FakeShortAPI at {url}", flush=True)
        print(f"export SHORTWAN_BASE_URL={url} SHORTAPI_KEY={key}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(functools.partial(serve_forever, ready=ready, **values))


if __name__ == "__main__":
    main()
