"""What every command shares: the consoles, running a command's coroutine, the ``--timeout``."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import anyio
import click
from rich.console import Console

from .._errors import ConfigurationError, InvalidRequestError, ShortWanError
from .._options import job_timeout
from .._spec import DEFAULT_JOB_TIMEOUT
from ._names import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE

__all__ = ["LOOP_ENV", "backend_options", "console", "err", "run", "timeout_option"]

LOOP_ENV: Final = "SHORTWAN_LOOP"
"""Names the command's event loop: ``uvloop`` (the default when installed) or ``asyncio``."""

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])

# Text from the service, the files and the user is never markup or an :emoji: code: every such
# piece is printed with markup=False, escaped, or as rich.text.Text.
console = Console(highlight=False, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False)


def backend_options() -> dict[str, Any]:
    """Return anyio's options for the command's event loop: uvloop's when it is installed.

    ``SHORTWAN_LOOP=asyncio`` keeps the standard loop (and never imports uvloop).
    """
    wanted = os.environ.get(LOOP_ENV, "").strip().lower()
    if wanted not in ("", "uvloop", "asyncio"):
        raise click.UsageError(f"{LOOP_ENV} must be 'uvloop' or 'asyncio', not {wanted!r}")
    if wanted == "asyncio":
        return {}
    try:
        import uvloop  # noqa: F401, PLC0415 - the speed extra, looked for only here
    except ImportError:
        if wanted == "uvloop":
            raise click.UsageError(
                f"{LOOP_ENV}=uvloop, but uvloop is not installed (pip install 'shortwan[speed]')"
            ) from None
        return {}
    return {"use_uvloop": True}


def run(func: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``func`` in a new event loop, turning shortwan errors into messages and exit codes."""
    options = backend_options()
    try:
        return anyio.run(func, backend_options=options)
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


def _seconds(_ctx: click.Context, _param: click.Parameter, value: float) -> float | None:
    """Check a --timeout before anything is opened or sent; 'inf' means no limit (None)."""
    try:
        return job_timeout(value)
    except InvalidRequestError:
        raise click.BadParameter(
            f"must be a number of seconds > 0, or 'inf' (got {value!r})"
        ) from None


def timeout_option(what: str) -> Callable[[_F], _F]:
    """Return the ``--timeout`` option of a command that waits ``what``."""
    return click.option(
        "--timeout",
        type=float,
        default=DEFAULT_JOB_TIMEOUT,
        show_default=True,
        callback=_seconds,
        help=f"Seconds to wait {what} (> 0; 'inf' waits without limit).",
    )
