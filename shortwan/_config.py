"""Frozen, keyword-only settings: timeouts, retries, polling, limits."""

from __future__ import annotations

from typing import Any, Final

import attrs

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "Limits",
    "RetryPolicy",
    "Timeouts",
    "is_testing",
    "set_testing",
]


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attr.name} must be > 0, got {value!r}")


def _positive_or_none(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attr.name} must be > 0 or None, got {value!r}")


def _non_negative(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attr.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Timeouts:
    """Time limits of one HTTP attempt, in seconds.

    Attributes:
        connect: opening a TCP/TLS connection.
        pool: waiting for a free connection from the pool; kept apart from ``read`` so a busy
            pool never eats the time a request has to answer.
        read: the gap between two reads of the answer (an idle timeout, not a total one).
        request: one whole attempt, from sending to the last byte of the answer (``None``: no cap
            beyond ``read``). Each attempt also stops at the caller's deadline, whichever is first.
    """

    connect: float = attrs.field(default=10.0, validator=_positive)
    pool: float = attrs.field(default=60.0, validator=_positive)
    read: float = attrs.field(default=30.0, validator=_positive)
    request: float | None = attrs.field(default=60.0, validator=_positive_or_none)


DEFAULT_TIMEOUTS: Final = Timeouts()


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How requests are retried.

    Backoff is exponential with full jitter: attempt ``n`` (from 1) waits a random time between 0
    and ``min(max_delay, initial_delay * multiplier ** (n - 1))``. A ``Retry-After`` from the
    service replaces the computed wait; one longer than ``max_retry_after`` is not waited for and
    raises :class:`~shortwan.RateLimitError` carrying it.

    Attributes:
        attempts: attempts in all, the first one included (1 disables retries).
        timeout: total time for all attempts of one call, waits included (``None``: no cap).
        initial_delay: first backoff bound.
        max_delay: largest backoff bound.
        multiplier: growth of the bound per attempt.
        max_retry_after: longest server-directed wait honoured.
        retry_uncertain_creates: resubmit a create whose outcome is unknown (a read timeout, a
            dropped connection, a 5xx other than 503, a body that is not the envelope). Off by
            default because it can create, and charge, the same job twice.
    """

    attempts: int = attrs.field(default=5)
    timeout: float | None = attrs.field(default=120.0, validator=_positive_or_none)
    initial_delay: float = attrs.field(default=0.5, validator=_non_negative)
    max_delay: float = attrs.field(default=10.0, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_positive)
    max_retry_after: float = attrs.field(default=60.0, validator=_non_negative)
    retry_uncertain_creates: bool = False

    @attempts.validator
    def _check_attempts(self, _attr: attrs.Attribute[int], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"attempts must be an int >= 1, got {value!r}")


DEFAULT_RETRY: Final = RetryPolicy()


@attrs.frozen(kw_only=True)
class Limits:
    """Connection pool settings.

    Attributes:
        max_connections: connections open at once, all hosts together.
        max_connections_per_host: connections open at once to one host.
        keepalive: seconds an idle connection is kept for reuse.
    """

    max_connections: int = 100
    max_connections_per_host: int = 64
    keepalive: float = attrs.field(default=15.0, validator=_positive)


DEFAULT_LIMITS: Final = Limits()


class _Testing:
    """Process-wide switches for test suites."""

    enabled: bool = False


def set_testing(testing: bool) -> None:
    """Turn test mode on or off: backoff and Retry-After waits become zero, attempts stay counted.

    Meant for test suites that exercise retries against :class:`~shortwan.testing.FakeShortAPI`
    and do not want to sleep.
    """
    _Testing.enabled = testing


def is_testing() -> bool:
    """Return whether test mode is on."""
    return _Testing.enabled
