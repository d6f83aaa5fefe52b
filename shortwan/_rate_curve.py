"""The rate in force as a function of time, and the pause: the state a query budget can share.

A :class:`RateCurve` is a handful of numbers — the rate a cut (or a recovery) set and when, how
long a cut on trial holds it, the limit last found, how fast to probe past it, and the pause —
from which anyone can compute the rate in force at any moment. A controller in one process decides
them; a budget shared by several processes keeps one copy of them on a server, so every process
computes the same rate from the same numbers.
"""

from __future__ import annotations

import math
from typing import Final

import attrs

__all__ = ["CUT_TO", "FORGET", "RateCurve"]

# A cut goes to this fraction of the accepted rate, and the climb back goes quickly up to this
# fraction of a known limit: just under it, so it is not hit at once.
CUT_TO: Final = 0.9
# The doubling time of the climb while no limit is known, in seconds.
_DOUBLING: Final = 1.0
# The relative climb per second past a known limit (halved each time the same limit is found).
PROBE: Final = 0.01
MIN_PROBE: Final = 0.0025
# A limit not found again for this long is forgotten (it may have been lifted).
FORGET: Final = 120.0
# The rate climbs to at most this multiple of the rate actually used lately.
_HEADROOM: Final = 2.0


@attrs.define(kw_only=True, eq=False)
class RateCurve:
    """The numbers the rate in force follows; times are seconds on the owner's clock.

    Attributes:
        ceiling: the highest rate, in queries per second.
        base: the rate a cut or a recovery set.
        base_at: when it was set; the climb back starts there (or after the pause or hold).
        hold_until: a cut on trial holds the rate at ``base`` until it is judged, at the latest
            until then (so a judge that went away cannot hold it forever).
        limit: the service's limit as last found (accepted queries per second), or None.
        limit_at: when it was found; it is forgotten :data:`FORGET` seconds later.
        probe: the relative climb per second past the limit.
        paused_until: every query holds off until then (a Retry-After).
    """

    ceiling: float
    base: float
    base_at: float = -math.inf
    hold_until: float = -math.inf
    limit: float | None = None
    limit_at: float = -math.inf
    probe: float = PROBE
    paused_until: float = -math.inf

    def known_limit(self, now: float) -> float | None:
        """Return the limit, unless it was found too long ago to trust."""
        return self.limit if now - self.limit_at <= FORGET else None

    def rate(self, now: float, used: float) -> float:
        """Return the rate in force at ``now``, given the queries a second actually ``used``.

        The rate climbs from ``base`` once the pause and the hold are over: doubling every
        second while no limit is known; with one, quickly to just under it, then by ``probe``
        per second past it. It never climbs past twice what is used: an allowance far above the
        queries actually sent would let the next burst of them storm the service at once.
        """
        base = self.base
        if base >= self.ceiling:
            return self.ceiling
        if now < self.hold_until:
            return base
        elapsed = max(0.0, now - max(self.base_at, self.paused_until, self.hold_until))
        limit = self.known_limit(now)
        if limit is None:
            rate = base * math.pow(2.0, elapsed / _DOUBLING)
        else:
            near = CUT_TO * limit
            if base < near:
                fast = base * math.pow(2.0, elapsed / _DOUBLING)
                if fast <= near:
                    return fast
                elapsed -= _DOUBLING * math.log2(near / base)
                base = near
            rate = base * (1.0 + self.probe * elapsed)
        # (A known limit is climbed back to, just under, whatever is used.)
        return min(self.ceiling, rate, max(base, _HEADROOM * used))
