"""Retries: one primitive for every call, with backoff, Retry-After, deadlines and money rules.

:class:`Retrying` runs the attempts of one call (a create, a query, a download) under a
:class:`~shortwan.RetryPolicy`: an attempt cap, a deadline, exponential backoff with full jitter, a
server-directed ``Retry-After`` (capped) in place of the backoff, an ``on_retry`` event and a log
line before every wait. An attempt reports a failure by raising :class:`AttemptFailed`, which says
what the failure proves about side effects (:class:`Safety`); for a call that is not idempotent (a
create) that decides whether it may be sent again, by design.md's money rule 1.

The code that owns a call hooks in at two points: before each attempt (a gate it awaits: a pause
of the whole client, a rate token) and after each failed attempt (it sees the failure and its
``Retry-After``, and may remedy the cause and ask for another attempt at once).
"""

from __future__ import annotations

import enum
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TypeVar

import anyio
import attrs

from ._config import RetryPolicy, is_testing
from ._errors import ShortWanError, SubmissionUncertainError

__all__ = [
    "AfterFailure",
    "AttemptFailed",
    "BeforeAttempt",
    "RetryEvent",
    "RetryHook",
    "Retrying",
    "Safety",
    "backoff_delay",
    "backoff_limit",
    "notify_retry",
    "parse_retry_after",
]

logger = logging.getLogger("shortwan")

_T = TypeVar("_T")


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


class AttemptFailed(Exception):  # noqa: N818 - a signal between an attempt and Retrying
    """Raised by an attempt that failed; :meth:`Retrying.call` decides what happens next.

    Args:
        error: what the call raises if it gives up here (its cause is this exception's).
        safety: what the failure proves about the service's side effects; ``FINAL`` failures
            are never retried.
        retry_after: the wait the service asked for (``Retry-After``), in seconds.
    """

    def __init__(
        self,
        error: ShortWanError,
        safety: Safety = Safety.UNCERTAIN,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.safety = safety
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether another attempt may succeed."""
        return self.safety is not Safety.FINAL


BeforeAttempt = Callable[["Retrying"], Awaitable[None]]
"""Awaited before every attempt, the first included: a gate such as a pause or a rate token. It
may raise a :class:`~shortwan.ShortWanError` to end the call."""

AfterFailure = Callable[["Retrying", AttemptFailed], Awaitable[bool]]
"""Awaited after every failed attempt, before the wait is chosen. It may raise to end the call;
it returns True once it has remedied the cause (a fresh URL), for another attempt at once: no
wait, no event, not counted against the cap."""


class Retrying:
    """The attempts of one call, under a policy: a retry context in the spirit of stamina's.

    Create one per call and ``await retrying.call(attempt)``. Each attempt may read
    :meth:`remaining` to bound itself by the deadline. A failed attempt raises
    :class:`AttemptFailed`; any other exception, cancellation included, ends the call at once
    (cancellation is never retried). The call gives up, raising the failure's error with its
    cause, when the failure is final, the attempts are spent, the service asks to wait longer than
    ``max_retry_after``, or the wait would pass the deadline.

    For a call that is not ``idempotent`` (a create), an attempt that may have reached the
    service (``Safety.UNCERTAIN``) is never repeated unless the policy allows it
    (``retry_uncertain_creates``), and once one may have, every later way of giving up says so
    with :class:`~shortwan.SubmissionUncertainError`: at most one job exists, and nobody knows
    whether it does.

    Args:
        policy: attempts, deadline, backoff and the Retry-After cap.
        operation: ``"create"``, ``"query"`` or ``"download"``, for events and errors.
        name: what the call is called in log lines (``"POST /api/v1/job/create"``).
        idempotent: repeating the call has no effect beyond the first success.
        job_id: the job concerned, named in events, logs and errors.
        on_retry: told of every retry (see :class:`RetryEvent`).
        rng: the source of jitter.

    Attributes:
        attempt: the number of the attempt under way (or the last one made), from 1.
        deadline: the monotonic time past which no attempt starts (``inf``: none).
        maybe_sent: an attempt of a call that is not idempotent may have reached the service.
    """

    __slots__ = (
        "_on_retry",
        "_rng",
        "attempt",
        "deadline",
        "idempotent",
        "job_id",
        "maybe_sent",
        "name",
        "operation",
        "policy",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        operation: str,
        name: str,
        idempotent: bool = True,
        job_id: str | None = None,
        on_retry: RetryHook | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.operation = operation
        self.name = name
        self.idempotent = idempotent
        self.job_id = job_id
        self._on_retry = on_retry
        self._rng = rng
        self.attempt = 0
        self.deadline = math.inf if policy.timeout is None else time.monotonic() + policy.timeout
        self.maybe_sent = False

    def remaining(self) -> float:
        """Return the seconds left until the deadline."""
        return self.deadline - time.monotonic()

    @property
    def last_attempt(self) -> bool:
        """Whether the attempt under way is the last the policy allows."""
        return self.attempt >= self.policy.attempts

    async def call(
        self,
        attempt: Callable[[], Awaitable[_T]],
        *,
        before_attempt: BeforeAttempt | None = None,
        after_failure: AfterFailure | None = None,
    ) -> _T:
        """Run ``attempt`` until it succeeds or the call gives up; return its result.

        Raises:
            ShortWanError: the error of the failure the call gave up on (the failure's cause is
                kept), what ``before_attempt`` raised, or a SubmissionUncertainError.
        """
        while True:
            self.attempt += 1
            if before_attempt is not None:
                try:
                    await before_attempt(self)
                except ShortWanError as exc:
                    if self.maybe_sent:
                        raise self._uncertain(
                            f", and the service then asked this client to pause ({exc}); the "
                            "outcome is unknown"
                        ) from exc
                    raise
            try:
                return await attempt()
            except AttemptFailed as failure:
                error = failure.error
                error.job_id = error.job_id or self.job_id
                if after_failure is not None and await after_failure(self, failure):
                    self.attempt -= 1  # remedied: the next attempt takes this one's place
                    continue
                if not self.idempotent and failure.safety is Safety.UNCERTAIN:
                    if not self.policy.retry_uncertain_creates:
                        raise self._uncertain(
                            f", but its answer was lost ({error}); it was not resubmitted, so at "
                            "most one job exists: check your job list before trying again"
                        ) from error
                    # An earlier attempt may have made a job even if a later one is refused.
                    self.maybe_sent = True
                delay = self._delay_after(failure)
                if delay is None:
                    if self.maybe_sent:
                        raise self._uncertain(
                            f" ({error}); retries are spent or refused, so the outcome is unknown"
                        ) from error
                    raise error from failure.__cause__
                self._announce(delay, error)
                await anyio.sleep(delay)

    def _delay_after(self, failure: AttemptFailed) -> float | None:
        """Return how long to wait before the next attempt, or None to give up."""
        if not failure.retryable or self.last_attempt:
            return None
        policy = self.policy
        server_wait = failure.retry_after
        if server_wait is not None:
            if server_wait > policy.max_retry_after:
                # Waiting that long is not ours to decide: raise and let the caller choose.
                return None
            delay = 0.0 if is_testing() else server_wait
        else:
            delay = backoff_delay(policy, self.attempt, self._rng)
        if time.monotonic() + delay >= self.deadline:
            return None
        return delay

    def _uncertain(self, what: str) -> SubmissionUncertainError:
        return SubmissionUncertainError(
            f"the {self.operation} request may have reached the service{what}"
        )

    def _announce(self, delay: float, error: ShortWanError) -> None:
        notify_retry(
            self._on_retry,
            RetryEvent(
                operation=self.operation,
                job_id=self.job_id,
                attempt=self.attempt,
                delay=delay,
                error=error,
            ),
        )
        logger.info(
            "retrying %s in %.2f s (attempt %d of %d): %s",
            self.name,
            delay,
            self.attempt + 1,
            self.policy.attempts,
            error,
            extra={"job_id": self.job_id, "attempt": self.attempt, "delay": delay},
        )
