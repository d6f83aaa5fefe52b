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

from shortwan import PollPolicy, RetryPolicy, Timeouts
from shortwan._config import set_testing
from shortwan._retry import backoff_delay, backoff_limit, parse_retry_after

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
