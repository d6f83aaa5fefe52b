"""Frozen, keyword-only settings: timeouts, retries, polling, limits."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

import attrs

from ._errors import ConfigurationError

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_POLL",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "FAST_POLL",
    "Limits",
    "PollPolicy",
    "RetryPolicy",
    "Timeouts",
    "is_testing",
    "set_testing",
]


def _number(attr: attrs.Attribute[Any], value: object) -> float:
    # A setting that is NaN, infinite or not a number at all would make the poller or the
    # retries silently never run (or spin): refuse it when the setting is made.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{attr.name} must be a finite number, got {value!r}")
    return float(value)


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if _number(attr, value) <= 0:
        raise ConfigurationError(f"{attr.name} must be > 0, got {value!r}")


def _positive_or_none(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and _number(attr, value) <= 0:
        raise ConfigurationError(f"{attr.name} must be > 0 or None, got {value!r}")


def _non_negative(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if _number(attr, value) < 0:
        raise ConfigurationError(f"{attr.name} must be >= 0, got {value!r}")


def _at_most(limit: float) -> Callable[[object, attrs.Attribute[Any], float], None]:
    def check(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
        if value > limit:
            raise ConfigurationError(f"{attr.name} must be <= {limit:g}, got {value!r}")

    return check


def _count(minimum: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigurationError(f"{attr.name} must be an int >= {minimum}, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class Timeouts:
    """Time limits of one HTTP attempt, in seconds.

    Attributes:
        connect: opening a TCP/TLS connection.
        pool: waiting for a free connection from the pool; kept apart from ``read`` so a busy
            pool never eats the time a request has to answer.
        read: the gap between two reads of the answer (an idle timeout, not a total one). It
            can only end an attempt allowed to last longer than ``read``; with the defaults it
            bounds downloads and API calls sent with ``request=None``.
        request: one whole API attempt, from sending to the last byte of the answer (``None``:
            no cap beyond ``read``). Each attempt also stops at the caller's deadline, whichever
            is first.
    """

    connect: float = attrs.field(default=10.0, validator=_positive)
    pool: float = attrs.field(default=60.0, validator=_positive)
    read: float = attrs.field(default=30.0, validator=_positive)
    request: float | None = attrs.field(default=30.0, validator=_positive_or_none)


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
            raise ConfigurationError(f"attempts must be an int >= 1, got {value!r}")


DEFAULT_RETRY: Final = RetryPolicy()


@attrs.frozen(kw_only=True)
class Limits:
    """Connection pool settings.

    Attributes:
        max_connections: connections open at once, all hosts together.
        max_connections_per_host: connections open at once to one host.
        keepalive: seconds an idle connection is kept for reuse.
        max_downloads: result files downloaded at once (kept apart from API requests, so large
            files never starve status queries).
    """

    max_connections: int = attrs.field(default=100, validator=_count(1))
    max_connections_per_host: int = attrs.field(default=64, validator=_count(1))
    keepalive: float = attrs.field(default=15.0, validator=_positive)
    max_downloads: int = attrs.field(default=4, validator=_count(1))


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


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How the shared poller schedules status queries, in seconds.

    A job's first query comes when it is expected to be done: ``first_query_fraction`` of the
    expected running time, learned from the jobs this client has seen finish (before any has, it is
    ``prior_seconds_per_video_second`` × duration, × ``resolution_factor`` at 1080p). Then the gap
    between queries is ``growth`` × the job's age, kept within ``min_interval`` and ``max_interval``
    and jittered by ``jitter`` (relative), so long jobs are asked about rarely and short ones soon.

    Attributes:
        min_interval: shortest gap between two queries of one job.
        max_interval: longest gap between two queries of one job.
        growth: gap as a fraction of the job's age.
        first_query_fraction: first query at this fraction of the expected running time.
        prior_seconds_per_video_second: expected running time per second of video, before learning.
        resolution_factor: how much longer a 1080p job runs than a 720p one.
        jitter: relative random spread of every gap, so jobs submitted together do not query
            together.
        max_queries_per_second: ceiling of the query rate of the whole client.
        max_concurrent_queries: queries in flight at once.
        callback_interval: the slow safety-net gap for jobs whose result arrives by callback.
    """

    min_interval: float = attrs.field(default=2.0, validator=_positive)
    max_interval: float = attrs.field(default=30.0, validator=_positive)
    growth: float = attrs.field(default=0.12, validator=[_positive, _at_most(100)])
    first_query_fraction: float = attrs.field(default=0.8, validator=[_positive, _at_most(100)])
    prior_seconds_per_video_second: float = attrs.field(
        default=12.0, validator=[_positive, _at_most(3600)]
    )
    resolution_factor: float = attrs.field(default=1.5, validator=[_positive, _at_most(100)])
    jitter: float = attrs.field(default=0.1, validator=[_non_negative, _at_most(1)])
    max_queries_per_second: float = attrs.field(default=20.0, validator=_positive)
    max_concurrent_queries: int = attrs.field(default=16, validator=_count(1))
    callback_interval: float = attrs.field(default=120.0, validator=_positive)

    @max_interval.validator
    def _check_max(self, _attr: attrs.Attribute[float], value: float) -> None:
        if value < self.min_interval:
            raise ConfigurationError(f"max_interval ({value}) must be >= min_interval")


DEFAULT_POLL: Final = PollPolicy()

FAST_POLL: Final = PollPolicy(
    min_interval=0.05,
    max_interval=0.5,
    prior_seconds_per_video_second=0.05,
    max_queries_per_second=500,
    max_concurrent_queries=32,
)
"""Polling at the time scale of a fake service whose jobs take seconds (``shortwan --poll fast``):
queries 50 ms apart. The same policy as :func:`shortwan.testing.fast_poll`."""
