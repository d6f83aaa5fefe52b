"""Backoff with jitter, Retry-After parsing, and which failures a create may be retried after."""

from __future__ import annotations

import enum
import logging
import math
import random
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import attrs

from ._config import RetryPolicy, is_testing
from ._errors import ShortWanError

__all__ = [
    "RetryEvent",
    "RetryHook",
    "Safety",
    "backoff_delay",
    "backoff_limit",
    "notify_retry",
    "parse_retry_after",
]

logger = logging.getLogger("shortwan")


@attrs.frozen(kw_only=True)
class RetryEvent:
    """A failed attempt that is about to be retried, for metrics and logs (``on_retry=``).

    Attributes:
        operation: ``"create"``, ``"query"`` or ``"download"``.
        job_id: the job concerned, when known.
        attempt: the number of the attempt that failed, from 1.
        delay: seconds until the next attempt.
        error: why the attempt failed.
    """

    operation: str
    job_id: str | None
    attempt: int
    delay: float
    error: ShortWanError


RetryHook = Callable[[RetryEvent], object]


def notify_retry(hook: RetryHook | None, event: RetryEvent) -> None:
    """Tell ``hook`` about a retry; a hook that fails is logged, never lets the retry fail."""
    if hook is None:
        return
    try:
        hook(event)
    except Exception:
        logger.exception("the on_retry hook failed", extra={"job_id": event.job_id})


class Safety(enum.Enum):
    """What a failed attempt tells us about the service's side effects."""

    NOT_SENT = "not sent"
    """The service provably did nothing: no connection, a 429/503, or an explicit rejection."""
    UNCERTAIN = "uncertain"
    """The request may have been processed: a create may have made (and charged) a job."""
    FINAL = "final"
    """The service refused the request for good; repeating it cannot help."""


def backoff_limit(policy: RetryPolicy, retry: int) -> float:
    """Return the upper bound of the wait before retry number ``retry`` (from 1)."""
    exponent = max(retry - 1, 0)
    # Past this exponent the bound is max_delay for every multiplier >= 2; avoid float overflow.
    if exponent > 64:
        return policy.max_delay
    return min(policy.max_delay, policy.initial_delay * policy.multiplier**exponent)


def backoff_delay(policy: RetryPolicy, retry: int, rng: random.Random | None = None) -> float:
    """Return a full-jitter wait before retry number ``retry``: uniform in [0, bound]."""
    if is_testing():
        return 0.0
    draw = (rng or random).random()
    return draw * backoff_limit(policy, retry)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Read a ``Retry-After`` header as seconds from now.

    Accepts delay-seconds (also with a fraction) and HTTP-dates. A date in the past means zero.
    Anything else, negative numbers and non-finite values included, gives ``None`` so the caller
    falls back to its own backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text[0].isdigit() or text[0] == ".":
        try:
            seconds = float(text)
        except ValueError:
            return None
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())
