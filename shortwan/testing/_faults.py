"""Trouble the fake puts in its answers: scripted and random faults, and the query rate limiter."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from typing import Final, Literal

from ._stats import FakeStats

__all__ = [
    "CREATES_FIRST",
    "RETRY_AFTER_STYLES",
    "Endpoint",
    "Fault",
    "FaultPlan",
    "RetryAfterStyle",
    "TokenBucket",
    "retry_after_header",
]

Endpoint = Literal["create", "query", "download"]
RetryAfterStyle = Literal["exact", "seconds"]
RETRY_AFTER_STYLES: Final = ("exact", "seconds")


class Fault(enum.Enum):
    """Trouble the fake can put in an answer."""

    RATE_LIMIT = "429 with Retry-After; nothing is created"
    UNAVAILABLE = "HTTP 503; nothing is created"
    CODE_3000 = "HTTP 200 with code 3000, model unavailable; nothing is created"
    RESET_BEFORE = "the connection is dropped before anything is created"
    RESET_AFTER = "the job is created, then the connection is dropped"
    SLOW_AFTER = "the job is created, then the answer waits slow_delay seconds"
    HTML_502 = "the job is created, then a proxy's HTML 502 page comes back"
    TRUNCATED_JSON = "the job is created, then the JSON answer is cut short"


# Faults that spoil a good answer: the work behind it (a create, a query) is done first.
CREATES_FIRST: Final = frozenset(
    {Fault.RESET_AFTER, Fault.SLOW_AFTER, Fault.HTML_502, Fault.TRUNCATED_JSON}
)


class FaultPlan:
    """Decide the fault of each request: the next scripted one, else a random draw.

    Args:
        rng: the fake's seeded random source (shared, so one seed repeats a whole run).
        stats: where injected faults are counted, as ``"endpoint:NAME"``.
        rates: random fault rates per endpoint.
    """

    def __init__(
        self,
        rng: random.Random,
        stats: FakeStats,
        rates: Mapping[Endpoint, Mapping[Fault, float]] | None = None,
    ) -> None:
        self._rng = rng
        self._stats = stats
        self._scripts: dict[Endpoint, list[Fault | None]] = {
            "create": [],
            "query": [],
            "download": [],
        }
        self._rates: dict[Endpoint, dict[Fault, float]] = {}
        for endpoint, endpoint_rates in (rates or {}).items():
            self.set_rates(endpoint, endpoint_rates)

    def script(self, endpoint: Endpoint, faults: list[Fault | None]) -> None:
        """Queue faults for the next requests to ``endpoint``, in order (``None``: answer well)."""
        self._scripts[endpoint].extend(faults)

    def set_rates(self, endpoint: Endpoint, rates: Mapping[Fault, float]) -> None:
        """Replace the random fault rates of ``endpoint``."""
        if endpoint not in self._scripts:
            raise ValueError(f"endpoint must be create, query or download, not {endpoint!r}")
        if any(not 0 <= rate <= 1 for rate in rates.values()):
            raise ValueError("fault rates must be shares from 0 to 1")
        self._rates[endpoint] = dict(rates)

    def draw(self, endpoint: Endpoint) -> Fault | None:
        """Return the fault for this request to ``endpoint``, counting it, or ``None``."""
        script = self._scripts[endpoint]
        fault: Fault | None = None
        if script:
            fault = script.pop(0)
        else:
            draw = self._rng.random()
            for kind, rate in self._rates.get(endpoint, {}).items():
                draw -= rate
                if draw < 0:
                    fault = kind
                    break
        if fault is not None:
            self._stats.faults[f"{endpoint}:{fault.name}"] += 1
        return fault


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, holding at most ``burst``; it starts full.

    Args:
        rate: tokens added per second (> 0).
        burst: the bucket's size (>= 1); ``None`` holds a tenth of a second's tokens, at least one.
        now: the time the bucket starts, on the monotonic clock.
    """

    def __init__(self, rate: float, burst: float | None, now: float) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"query_rate_limit must be a rate > 0, not {rate!r}")
        self.rate = rate
        self.burst = max(1.0, rate / 10) if burst is None else burst
        if not (self.burst >= 1 and math.isfinite(self.burst)):
            raise ValueError(f"query_burst must be at least 1 token, not {burst!r}")
        self._tokens = self.burst
        self._at = now

    def take(self, now: float) -> float:
        """Take a token at ``now``: return 0.0, or the seconds until there is one (taking none)."""
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


def retry_after_header(wait: float, style: RetryAfterStyle) -> str:
    """Return ``wait`` as a Retry-After value: microseconds rounded up, or whole seconds up.

    Rounding up in both styles means a client that waits exactly the value finds a token.
    """
    if style == "seconds":
        return str(max(1, math.ceil(wait)))
    # The epsilon keeps float noise (0.02 * 1e6 = 20000.000000000004) from adding a microsecond.
    micros = math.ceil(wait * 1_000_000 - 1e-6)
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"
