"""Run FakeShortAPI by hand: ``python -m shortwan.testing --port 8080``."""

from __future__ import annotations

import argparse
import contextlib
import functools

import anyio

from ._fake import DEFAULT_API_KEY
from ._process import FAULT_LEVELS, serve_forever


def main(argv: list[str] | None = None) -> None:
    """Serve the fake until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m shortwan.testing", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--queue-time", type=float, default=2.0, help="seconds queued")
    parser.add_argument("--run-time", type=float, default=8.0, help="seconds running")
    parser.add_argument("--jitter", type=float, default=0.3, help="relative spread of times")
    parser.add_argument("--speed", type=float, default=1.0, help="divide every duration")
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--faults", choices=FAULT_LEVELS, default="none")
    parser.add_argument("--render", action="store_true", help="make each video from its image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def ready(url: str, key: str) -> None:
        print(f"FakeShortAPI at {url}", flush=True)
        print(f"export SHORTWAN_BASE_URL={url} SHORTAPI_KEY={key}", flush=True)

    serve = functools.partial(
        serve_forever,
        ready=ready,
        faults=args.faults,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        queue_time=args.queue_time,
        run_time=args.run_time,
        jitter=args.jitter,
        speed=args.speed,
        failure_rate=args.failure_rate,
        render=args.render,
        seed=args.seed,
    )
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(serve)


if __name__ == "__main__":
    main()
