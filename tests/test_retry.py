"""Backoff bounds, Retry-After parsing and the settings objects."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shortwan import (
    PollPolicy,
    RateLimitError,
    RetryEvent,
    RetryPolicy,
    ServerError,
    SubmissionUncertainError,
    Timeouts,
    TransportError,
)
from shortwan._config import set_testing
from shortwan._retry import (
    AttemptFailed,
    Retrying,
    Safety,
    backoff_delay,
    backoff_limit,
    parse_retry_after,
)

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def testing_mode() -> Iterator[None]:
    set_testing(True)
    yield
    set_testing(False)


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "seconds"), [("0", 0.0), ("5", 5.0), ("1.5", 1.5), (" 7 ", 7.0)]
    )
    def test_seconds(self, value: str, seconds: float) -> None:
        """Delay-seconds, with or without a fraction, are read as seconds."""
        assert parse_retry_after(value) == seconds

    def test_http_date_in_future(self) -> None:
        """An HTTP-date is the time from now until then."""
        value = format_datetime(NOW + timedelta(seconds=30), usegmt=True)
        assert parse_retry_after(value, now=NOW) == pytest.approx(30)

    def test_http_date_in_past_is_zero(self) -> None:
        """A date already past means: go ahead now."""
        value = format_datetime(NOW - timedelta(hours=1), usegmt=True)
        assert parse_retry_after(value, now=NOW) == 0.0

    @pytest.mark.parametrize("value", [None, "", "soon", "-5", "nan", "inf", "1e999", "Fri"])
    def test_garbage_falls_back(self, value: str | None) -> None:
        """Anything unreadable, negative or infinite gives None: use our own backoff."""
        assert parse_retry_after(value) is None

    @settings(max_examples=500)
    @given(st.text(max_size=40))
    def test_any_text_is_none_or_finite(self, value: str) -> None:
        """Whatever the header says, the result is None or a finite number >= 0."""
        result = parse_retry_after(value, now=NOW)
        assert result is None or (math.isfinite(result) and result >= 0)


policies = st.builds(
    RetryPolicy,
    attempts=st.integers(min_value=1, max_value=20),
    initial_delay=st.floats(min_value=0, max_value=100),
    max_delay=st.floats(min_value=0, max_value=1000),
    multiplier=st.floats(min_value=1, max_value=10),
)


class TestBackoff:
    @settings(max_examples=300)
    @given(policies, st.integers(min_value=1, max_value=200))
    def test_limit_bounded_and_growing(self, policy: RetryPolicy, retry: int) -> None:
        """The bound never passes max_delay and never shrinks from one retry to the next."""
        assert backoff_limit(policy, retry) <= policy.max_delay
        assert backoff_limit(policy, retry) <= backoff_limit(policy, retry + 1) or math.isclose(
            backoff_limit(policy, retry), backoff_limit(policy, retry + 1)
        )

    @settings(max_examples=300)
    @given(policies, st.integers(min_value=1, max_value=200))
    def test_delay_within_bound(self, policy: RetryPolicy, retry: int) -> None:
        """Full jitter: every wait lies between 0 and the bound."""
        assert 0 <= backoff_delay(policy, retry) <= backoff_limit(policy, retry)

    @pytest.mark.usefixtures("testing_mode")
    def test_testing_mode_zeroes_waits(self) -> None:
        """With set_testing(True) there is nothing to wait for."""
        assert backoff_delay(RetryPolicy(initial_delay=5), 3) == 0.0


class TestSettings:
    @pytest.mark.parametrize("attempts", [0, -1, True, 1.5])
    def test_bad_attempts(self, attempts: object) -> None:
        """Attempts must be a whole number of at least 1."""
        with pytest.raises(ValueError, match="attempts"):
            RetryPolicy(attempts=attempts)  # type: ignore[arg-type]

    def test_negative_delays_refused(self) -> None:
        """Negative delays and non-positive timeouts are refused."""
        with pytest.raises(ValueError, match="initial_delay"):
            RetryPolicy(initial_delay=-1)
        with pytest.raises(ValueError, match="read"):
            Timeouts(read=0)

    def test_poll_policy_bounds(self) -> None:
        """max_interval below min_interval is refused."""
        with pytest.raises(ValueError, match="max_interval"):
            PollPolicy(min_interval=5, max_interval=1)

    def test_settings_are_frozen_and_evolve(self) -> None:
        """Settings cannot be changed in place; attrs.evolve makes a variant."""
        policy = RetryPolicy()
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            policy.attempts = 9  # type: ignore[misc]
        assert attrs.evolve(policy, attempts=9).attempts == 9


class Flaky:
    """An attempt that fails with the given failures in turn, then returns "done"."""

    def __init__(self, *failures: AttemptFailed) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def failure(safety: Safety = Safety.UNCERTAIN, retry_after: float | None = None) -> AttemptFailed:
    """Return a failed attempt whose cause is a dropped connection."""
    failed = AttemptFailed(TransportError("the line dropped"), safety, retry_after=retry_after)
    failed.__cause__ = ConnectionResetError("cut")
    return failed


def retrying(
    policy: RetryPolicy | None = None, **kwargs: object
) -> tuple[Retrying, list[RetryEvent]]:
    events: list[RetryEvent] = []
    options: dict[str, object] = {"operation": "query", "name": "GET /q", "job_id": "j1"}
    options.update(kwargs)
    retry = Retrying(policy or RetryPolicy(), on_retry=events.append, **options)  # type: ignore[arg-type]
    return retry, events


class TestRetrying:
    @pytest.mark.anyio
    async def test_retries_until_success_and_reports_each_retry(self) -> None:
        """Two failures then a success: two events, numbered, naming the job and the cause."""
        retry, events = retrying()
        attempt = Flaky(failure(), failure())
        assert await retry.call(attempt) == "done"
        assert attempt.calls == 3
        assert [e.attempt for e in events] == [1, 2]
        assert {e.operation for e in events} == {"query"}
        assert all(e.job_id == "j1" and isinstance(e.error, TransportError) for e in events)

    @pytest.mark.anyio
    async def test_gives_up_after_the_attempt_cap_with_the_cause_kept(self) -> None:
        """With attempts=3 the third failure is raised, with the attempt's own cause."""
        retry, events = retrying(RetryPolicy(attempts=3))
        attempt = Flaky(*(failure() for _ in range(5)))
        with pytest.raises(TransportError) as caught:
            await retry.call(attempt)
        assert attempt.calls == 3
        assert len(events) == 2
        assert isinstance(caught.value.__cause__, ConnectionResetError)
        assert caught.value.job_id == "j1"

    @pytest.mark.anyio
    async def test_retry_after_replaces_the_backoff(self) -> None:
        """A server-directed wait is the wait, however large the backoff would be."""
        set_testing(False)  # the real waits are the point here
        policy = RetryPolicy(initial_delay=50, max_delay=50)
        retry, events = retrying(policy)
        assert await retry.call(Flaky(failure(retry_after=0.01))) == "done"
        assert [e.delay for e in events] == [0.01]

    @pytest.mark.parametrize(
        ("policy", "failed", "real_clock"),
        [
            pytest.param(RetryPolicy(), failure(Safety.FINAL), False, id="final"),
            pytest.param(RetryPolicy(max_retry_after=1), failure(retry_after=5), False, id="cap"),
            pytest.param(RetryPolicy(timeout=0.5), failure(retry_after=0.6), True, id="deadline"),
        ],
    )
    @pytest.mark.anyio
    async def test_gives_up_at_once(
        self, policy: RetryPolicy, failed: AttemptFailed, real_clock: bool
    ) -> None:
        """A final failure, a Retry-After over the cap, a wait past the deadline: no retry."""
        set_testing(not real_clock)
        retry, events = retrying(policy)
        attempt = Flaky(failed)
        with pytest.raises(TransportError):
            await retry.call(attempt)
        assert attempt.calls == 1
        assert events == []
        assert retry.remaining() > 0

    @pytest.mark.anyio
    async def test_an_uncertain_create_is_never_sent_again(self) -> None:
        """A create that may have reached the service is reported uncertain, not repeated."""
        retry, events = retrying(operation="create", idempotent=False)
        attempt = Flaky(failure(Safety.UNCERTAIN))
        with pytest.raises(SubmissionUncertainError, match="not resubmitted") as caught:
            await retry.call(attempt)
        assert attempt.calls == 1
        assert events == []
        assert isinstance(caught.value.__cause__, TransportError)

    @pytest.mark.anyio
    async def test_a_create_refused_after_a_maybe_sent_attempt_stays_uncertain(self) -> None:
        """With retry_uncertain_creates, a later clean refusal cannot clear the first attempt."""
        policy = RetryPolicy(attempts=2, retry_uncertain_creates=True)
        retry, _events = retrying(policy, operation="create", idempotent=False)
        refused = AttemptFailed(ServerError("busy"), Safety.NOT_SENT)
        with pytest.raises(SubmissionUncertainError, match="retries are spent"):
            await retry.call(Flaky(failure(Safety.UNCERTAIN), refused))
        assert retry.maybe_sent

    @pytest.mark.anyio
    async def test_hooks_run_before_each_attempt_and_after_each_failure(self) -> None:
        """The gate sees every attempt; the listener sees every failure with its Retry-After."""
        retry, _events = retrying()
        gates: list[int] = []
        seen: list[tuple[int, float | None]] = []

        async def gate(state: Retrying) -> None:
            gates.append(state.attempt)

        async def listen(state: Retrying, failed: AttemptFailed) -> bool:
            seen.append((state.attempt, failed.retry_after))
            return False

        attempt = Flaky(failure(retry_after=0), failure())
        await retry.call(attempt, before_attempt=gate, after_failure=listen)
        assert gates == [1, 2, 3]
        assert seen == [(1, 0), (2, None)]

    @pytest.mark.anyio
    async def test_a_remedied_failure_is_tried_again_at_once(self) -> None:
        """A listener that fixed the cause gets another attempt: no wait, no event, past a final."""
        retry, events = retrying(RetryPolicy(attempts=1))

        async def fix(_state: Retrying, _failed: AttemptFailed) -> bool:
            return True

        assert await retry.call(Flaky(failure(Safety.FINAL)), after_failure=fix) == "done"
        assert events == []

    @pytest.mark.anyio
    async def test_a_remedied_failure_is_not_counted_against_the_cap(self) -> None:
        """With two attempts, a remedied failure still leaves both to the failures after it."""
        retry, events = retrying(RetryPolicy(attempts=2, initial_delay=0.001, max_delay=0.001))
        remedied = 0

        async def fix_once(_state: Retrying, _failed: AttemptFailed) -> bool:
            nonlocal remedied
            remedied += 1
            return remedied == 1

        attempt = Flaky(failure(), failure())
        assert await retry.call(attempt, after_failure=fix_once) == "done"
        assert attempt.calls == 3
        assert len(events) == 1  # the one failure that was not remedied

    @pytest.mark.anyio
    async def test_a_gate_refusal_after_a_maybe_sent_attempt_is_uncertain(self) -> None:
        """A pause that ends the call cannot hide that an earlier create may have been made."""
        policy = RetryPolicy(retry_uncertain_creates=True)
        retry, _events = retrying(policy, operation="create", idempotent=False)

        async def pause(state: Retrying) -> None:
            if state.attempt > 1:
                raise RateLimitError("paused past the deadline")

        with pytest.raises(SubmissionUncertainError, match="pause"):
            await retry.call(Flaky(failure(Safety.UNCERTAIN)), before_attempt=pause)
