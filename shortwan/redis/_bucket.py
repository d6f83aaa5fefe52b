"""What a shared query budget stands on: one token bucket and per-second counters on the server.

:class:`RateBucket` hands out send times at a shared rate, in the form of a token bucket that keeps
the time of its next free slot (the "generic cell rate" form): one call to :meth:`RateBucket.take`
reserves the caller's slot and says how long to wait for it, so processes that share a rate never
ask twice for one query and never send in a burst after a pause. The rate is shared and settable;
a pause (for a ``Retry-After``) only ever extends, up to a cap.

:class:`WindowCounters` counts queries sent and refused per second of the server's clock, so a
rate controller in any process can read the refusal share and the accepted rate of all of them.
"""

from __future__ import annotations

import math
from typing import Final

import attrs

from ._core import Link
from ._lua import Script

__all__ = ["BucketState", "RateBucket", "WindowCounters", "WindowStats"]

_KEEP_MS: Final = 24 * 3600 * 1000

# KEYS: the bucket. ARGV: the rate to start with, the burst. Returns the wait, in seconds.
_TAKE = Script(
    """
local now = now_s()
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate'))
if not rate then
  rate = tonumber(ARGV[1])
  redis.call('HSET', KEYS[1], 'rate', ARGV[1])
end
local gap = 1 / rate
local next_free = tonumber(redis.call('HGET', KEYS[1], 'next') or '0')
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused') or '0')
local slot = math.max(now, paused, next_free - (tonumber(ARGV[2]) - 1) * gap)
redis.call('HSET', KEYS[1], 'next', string.format('%.6f', math.max(next_free, slot) + gap))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return string.format('%.6f', slot - now)
"""
)

# KEYS: the bucket. ARGV: seconds asked for, the cap. Returns the pause left, in seconds.
_PAUSE = Script(
    """
local now = now_s()
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused') or '0')
local wanted = now + math.min(tonumber(ARGV[1]), tonumber(ARGV[2]))
if wanted > paused then
  paused = wanted
  redis.call('HSET', KEYS[1], 'paused', string.format('%.6f', paused))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return string.format('%.6f', math.max(0, paused - now))
"""
)

# KEYS: the bucket. Returns rate ('' if unset), pause left, backlog (seconds of slots handed out).
_STATE = Script(
    """
local now = now_s()
local rate, next_free, paused = unpack(redis.call('HMGET', KEYS[1], 'rate', 'next', 'paused'))
return {rate or '', string.format('%.6f', math.max(0, tonumber(paused or '0') - now)),
  string.format('%.6f', math.max(0, tonumber(next_free or '0') - now))}
"""
)

# ARGV: prefix, sent, refused, seconds to keep a bucket.
_ADD = Script(
    """
local key = ARGV[1] .. ':' .. redis.call('TIME')[1]
if ARGV[2] ~= '0' then redis.call('HINCRBY', key, 'sent', ARGV[2]) end
if ARGV[3] ~= '0' then redis.call('HINCRBY', key, 'refused', ARGV[3]) end
redis.call('EXPIRE', key, ARGV[4])
return 1
"""
)

# ARGV: prefix, seconds. Sums the last whole seconds, the current one left out.
_SUM = Script(
    """
local now = tonumber(redis.call('TIME')[1])
local sent, refused = 0, 0
for s = now - tonumber(ARGV[2]), now - 1 do
  local got = redis.call('HMGET', ARGV[1] .. ':' .. s, 'sent', 'refused')
  sent = sent + tonumber(got[1] or '0')
  refused = refused + tonumber(got[2] or '0')
end
return {sent, refused}
"""
)


def _whole(value: object) -> bool:
    """Whether ``value`` is an int (a bool is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _rate(rate: float) -> float:
    value: object = rate
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"rate must be a positive number of queries per second, got {rate!r}")
    return float(rate)


@attrs.frozen(kw_only=True)
class BucketState:
    """A rate bucket as the server holds it.

    Attributes:
        rate: tokens per second (``None`` before anyone took one or set it).
        paused_for: seconds left of the shared pause.
        backlog: seconds until the last slot handed out: how far ahead the bucket is booked.
    """

    rate: float | None
    paused_for: float
    backlog: float


class RateBucket:
    """One token bucket on the server's clock, shared by every process of the namespace.

    Args:
        link: the connection it shares.
        name: several buckets may live in one namespace.
        rate: tokens per second, used until some process sets the shared rate.
        burst: how many slots may be handed out at once after a quiet spell.
        max_pause: the longest pause :meth:`pause` grants, in seconds.
    """

    def __init__(
        self, link: Link, name: str, *, rate: float, burst: int = 1, max_pause: float = 60.0
    ) -> None:
        if not _whole(burst) or burst < 1:
            raise ValueError(f"burst must be an int >= 1, got {burst!r}")
        if not 0 <= max_pause < math.inf:
            raise ValueError(f"max_pause must be a number of seconds, got {max_pause!r}")
        self._link = link
        self.name = name
        self._key = link.keys.bucket(name)
        self._start_rate = _rate(rate)
        self.burst = burst
        self.max_pause = max_pause

    def __repr__(self) -> str:
        return f"<RateBucket {self.name!r} namespace={self._link.namespace!r}>"

    async def take(self) -> float:
        """Book the next free slot; return the seconds to wait for it (0.0: go now).

        The slot is the caller's once this returns: wait that long, then send.

        Raises:
            SharedStateError: Redis could not be reached (fall back to a local limiter).
        """
        wait = await self._link.run(
            _TAKE, (self._key,), (repr(self._start_rate), self.burst, _KEEP_MS)
        )
        return max(0.0, float(wait))

    async def set_rate(self, rate: float) -> None:
        """Set the shared rate, in tokens per second, for every process."""
        value = repr(_rate(rate))
        await self._link.call(lambda: self._link.redis.hset(self._key, "rate", value))

    async def pause(self, seconds: float) -> float:
        """Pause every process for ``seconds`` (capped at ``max_pause``) unless a longer pause runs.

        Returns the seconds left of the pause in force.
        """
        if not 0 <= seconds < math.inf:
            raise ValueError(f"a pause is a number of seconds >= 0, got {seconds!r}")
        left = await self._link.run(
            _PAUSE, (self._key,), (repr(float(seconds)), repr(float(self.max_pause)), _KEEP_MS)
        )
        return float(left)

    async def state(self) -> BucketState:
        """Read the shared rate, the pause left and the backlog."""
        rate, paused, backlog = await self._link.run(_STATE, (self._key,), ())
        return BucketState(
            rate=float(rate) if rate else None, paused_for=float(paused), backlog=float(backlog)
        )


@attrs.frozen(kw_only=True)
class WindowStats:
    """Queries counted by every process over the last whole seconds.

    Attributes:
        seconds: the length of the window.
        sent: queries sent.
        refused: of those, the ones refused as too many (HTTP 429).
    """

    seconds: int
    sent: int
    refused: int

    @property
    def refusal_share(self) -> float:
        """The share of queries refused (0.0 when none were sent)."""
        return self.refused / self.sent if self.sent else 0.0

    @property
    def accepted_rate(self) -> float:
        """Queries the service accepted per second."""
        return (self.sent - self.refused) / self.seconds


class WindowCounters:
    """Counts of queries sent and refused, per second of the server's clock, for every process.

    Args:
        link: the connection it shares.
        name: several sets of counters may live in one namespace.
        horizon: the longest window :meth:`read` can sum, in seconds; older seconds expire.
    """

    def __init__(self, link: Link, name: str, *, horizon: int = 120) -> None:
        if not _whole(horizon) or not 1 <= horizon <= 3600:
            raise ValueError(f"horizon must be an int from 1 to 3600 seconds, got {horizon!r}")
        self._link = link
        self.name = name
        self.horizon = horizon
        self._prefix = link.keys.counts(name)

    def __repr__(self) -> str:
        return f"<WindowCounters {self.name!r} namespace={self._link.namespace!r}>"

    async def add(self, *, sent: int = 0, refused: int = 0) -> None:
        """Count queries sent and refused in the current second."""
        if sent < 0 or refused < 0:
            raise ValueError("counts are >= 0")
        await self._link.run(_ADD, (), (self._prefix, sent, refused, self.horizon + 2))

    async def read(self, seconds: int) -> WindowStats:
        """Sum the last ``seconds`` whole seconds (the current, partial one is left out)."""
        if not _whole(seconds):
            raise TypeError(f"seconds must be an int, got {seconds!r}")
        if not 1 <= seconds <= self.horizon:
            raise ValueError(f"seconds must be from 1 to the horizon ({self.horizon})")
        sent, refused = await self._link.run(_SUM, (), (self._prefix, seconds))
        return WindowStats(seconds=seconds, sent=int(sent), refused=int(refused))
