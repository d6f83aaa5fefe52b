"""What every command shares: the consoles, running a command's coroutine, the ``--timeout``."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console

from .._errors import ConfigurationError, InvalidRequestError, ShortWanError
from .._options import job_timeout
from .._spec import DEFAULT_JOB_TIMEOUT
from ._names import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE

__all__ = ["console", "err", "run", "timeout_option"]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])

# Text from the service, the files and the user is never markup or an :emoji: code: every such
# piece is printed with markup=False, escaped, or as rich.text.Text.
console = Console(highlight=False, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False)


def run(func: Callable[[], Awaitable[_T]]) -> _T:
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
