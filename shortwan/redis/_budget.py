"""A query budget shared by every process: one rate, one pause, one slot queue on the server.

Each process keeps its own :class:`~shortwan.RateController` (its evidence: recent answers, a cut
on trial, the noise it learned), but what the controllers decide — the rate curve and the pause —
has one copy on the server, and every query of every process takes its send time from one queue
of slots there. So a limit seen by one worker slows them all, a cut is made once, and the
combined rate is the rate in force, not a multiple of it.

The server's copy is written with a version check: when two processes decide at once, the first
write wins and the other takes it. Times cross the boundary as the server's clock (``TIME``), so
processes on different machines agree; inside a process the controller keeps the local monotonic
clock.

When Redis cannot be reached, queries go on through a local limiter that follows the same
controller (one WARNING says so), and sharing resumes, with what was decided meanwhile, once the
server answers again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import anyio

from .._errors import SharedStateError
from .._rate import RateController, RateCurve, RateLimiter, RateStatistics
from ._core import Link, text
from ._lua import Script

__all__ = ["SharedQueryBudget"]

logger = logging.getLogger("shortwan")

_KEEP_MS: Final = 24 * 3600 * 1000
# Seconds of sends counted by the server, summed over whole seconds, to tell this process's share.
_SHARE_SECONDS: Final = 3
# How often the clock offset is measured again, and how many measures are kept.
_CLOCK_EVERY: Final = 30.0

# KEYS: the budget. ARGV: the rate in force (queries a second), the keep time, seconds summed,
# the number of slots. Books that many slots in a row from the next free one and counts them as
# sent; returns, in one line, the wait until the first, the server's time, the pause, the version
# of the shared copy, the sends of every process over whole seconds, the second they end at, and
# the shared curve.
_TAKE = Script(
    """
local now = now_s()
local h = redis.call('HMGET', KEYS[1], 'next', 'paused', 'version', 'curve')
local next_free = tonumber(h[1] or '0')
local paused = tonumber(h[2] or '0')
local slot = math.max(now, paused, next_free)
local n = tonumber(ARGV[4] or '1')
redis.call('HSET', KEYS[1], 'next', string.format('%.6f', slot + n / tonumber(ARGV[1])))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local second = math.floor(now)
local counter = KEYS[1] .. ':sent:' .. second
redis.call('INCRBY', counter, n)
redis.call('EXPIRE', counter, tonumber(ARGV[3]) + 2)
local sent = 0
for s = second - tonumber(ARGV[3]), second - 1 do
  sent = sent + tonumber(redis.call('GET', KEYS[1] .. ':sent:' .. s) or '0')
end
return string.format('%.6f %.6f %.6f ', slot - now, now, paused) .. (h[3] or '0') .. ' '
  .. tostring(sent) .. ' ' .. tostring(second) .. ' ' .. (h[4] or '')
"""
)

# KEYS: the budget. ARGV: the version the writer read, its curve, its pause (server time), the
# keep time. Writes the curve only over that version; a pause only ever grows. Returns whether
# it wrote, and the version, curve and pause in force.
_WRITE = Script(
    """
local h = redis.call('HMGET', KEYS[1], 'version', 'curve', 'paused')
local version = tonumber(h[1] or '0')
local paused = math.max(tonumber(h[3] or '0'), tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'paused', string.format('%.6f', paused))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if version ~= tonumber(ARGV[1]) then
  return {0, tostring(version), h[2] or '', string.format('%.6f', paused)}
end
redis.call('HSET', KEYS[1], 'version', version + 1, 'curve', ARGV[2])
return {1, tostring(version + 1), ARGV[2], string.format('%.6f', paused)}
"""
)


class _Take:
    """The slots one call books for the queries that asked at once, and its answer."""

    __slots__ = (
        "before",
        "curve",
        "paused",
        "rate",
        "rate_at",
        "second",
        "sent",
        "server_now",
        "slots",
        "version",
        "wait",
    )

    def __init__(self, rate_at: Callable[[float], float]) -> None:
        self.rate_at = rate_at
        self.wait: float | None = None  # read from the answer by the first query to hear it

    def args(self, queries: list[None]) -> tuple[str, int, int, int]:
        """The call's arguments, as it leaves with ``queries``: at the rate in force then."""
        self.before = time.monotonic()
        self.rate = self.rate_at(self.before)
        self.slots = len(queries)
        return (repr(self.rate), _KEEP_MS, _SHARE_SECONDS, self.slots)

    def read(self, reply: str) -> float:
        """Read the answer (one line, the curve, JSON with spaces in it, last); return the wait."""
        wait, server_now, paused, version, sent, second, curve = reply.split(" ", 6)
        self.server_now, self.paused, self.curve = float(server_now), float(paused), curve
        self.version, self.sent, self.second = int(version), int(sent), int(second)
        self.wait = float(wait)
        return self.wait


def _server_time(value: float, offset: float) -> float:
    return value + offset if math.isfinite(value) else value


def _encode(curve: RateCurve, offset: float) -> str:
    return json.dumps(
        {
            "base": curve.base,
            "base_at": _server_time(curve.base_at, offset),
            "hold_until": _server_time(curve.hold_until, offset),
            "limit": curve.limit,
            "limit_at": _server_time(curve.limit_at, offset),
            "probe": curve.probe,
        }
    )


def _decode(raw: str, *, ceiling: float, paused: float, offset: float) -> RateCurve | None:
    """Read the server's curve into the local clock (None if there is none or it is unreadable)."""
    try:
        fields: dict[str, Any] = json.loads(raw)
        limit = fields["limit"]
        return RateCurve(
            ceiling=ceiling,
            base=min(ceiling, float(fields["base"])),
            base_at=float(fields["base_at"]) - offset,
            hold_until=float(fields["hold_until"]) - offset,
            limit=None if limit is None else float(limit),
            limit_at=float(fields["limit_at"]) - offset,
            probe=float(fields["probe"]),
            paused_until=paused - offset if paused > 0 else -math.inf,
        )
    except (ValueError, KeyError, TypeError):
        return None


class SharedQueryBudget:
    """A :class:`~shortwan.QueryBudget` whose rate, pause and slots every process shares.

    Made by :meth:`SharedState.query_budget`; give it to ``AsyncShortWan(query_budget=...)``.

    Args:
        link: the shared state.
        name: several budgets may live in one namespace (one per service limit).
        ceiling: the highest combined rate of every process, in queries per second.
        floor: the lowest rate a cut may reach (see :class:`~shortwan.RateController`).
    """

    def __init__(
        self, link: Link, *, name: str, ceiling: float, floor: float | None = None
    ) -> None:
        self._link = link
        self.name = name
        self._key = link.keys.budget(name)
        self.controller = RateController(ceiling, floor=floor, scale=self._share)
        self._local = RateLimiter(ceiling, controller=self.controller)
        self._version = 0  # of the server's copy, as last seen
        self._written = 0  # the controller's edits up to which the server's copy is ours
        # Server time minus local monotonic time, from the quickest round trip seen lately.
        self._offset = 0.0
        self._offset_trip = math.inf
        self._offset_at = -math.inf
        # Sends of this process per server second, and of all of them over whole seconds.
        self._mine: deque[tuple[int, int]] = deque(maxlen=_SHARE_SECONDS + 2)
        self._all = 0
        self._all_until = 0
        self._alone = True  # pacing locally: Redis could not be reached
        # Takes made while a round trip is on its way go together in the next one, with whatever
        # else the process asks at that moment.
        self._takes = link.grouped
        self._writing = -1  # the controller's edits that a write on its way carries

    def __repr__(self) -> str:
        return f"<SharedQueryBudget {self.name!r} namespace={self._link.namespace!r}>"

    # --- QueryBudget ---------------------------------------------------------------------------

    async def acquire(self) -> None:
        await self._acquire(math.inf)

    async def acquire_within(self, seconds: float) -> bool:
        """Take the leave to send one query if it comes within ``seconds``; return whether it
        did. Never waits past them.

        When they are longer than any round trip to Redis can last (``Link.longest_call``),
        the wait for the slot, known once it is booked, is checked against them, and no cancel
        scope (nor its timer) is armed for the call: the common case, a query's first attempt.
        A slot past them is refused once they have passed, as a wait cut short by a cancel
        scope would be.
        """
        if seconds <= self._link.longest_call:
            with anyio.move_on_after(seconds) as scope:
                await self._acquire(math.inf)
            return not scope.cancelled_caught
        return await self._acquire(time.monotonic() + seconds)

    async def _acquire(self, until: float) -> bool:
        """Book a slot and wait for it, unless it comes after ``until``; return whether booked
        and waited for."""
        link = self._link
        if link.closed or not link.online:
            return await self._acquire_alone(
                "the shared state is closed" if link.closed else "Redis is unreachable", until
            )
        try:
            edits = self.controller.edits
            if edits not in (self._written, self._writing):  # one write per decision
                await self._write()
            wait = await self._take()
        except SharedStateError as exc:
            return await self._acquire_alone(str(exc), until)
        except RuntimeError:
            if not self._link.closed:  # read again: it may have closed during the call
                raise
            # Closed while this call was on its way: the client goes on alone.
            return await self._acquire_alone("the shared state is closed", until)
        if self._alone:
            self._alone = False
            logger.info("the query budget %r is shared again", self.name)
        if wait > 0.0005:
            left = until - time.monotonic()
            granted = wait <= left
            # Waiting for a slot: demand the rate does not meet (see RateController.waiting).
            self.controller.waiting += 1
            try:
                # A slot past the deadline is still waited for up to it, as a wait cut short
                # would be: refusing at once would send the caller back to book another slot
                # further out, and a queue of refused slots would never drain.
                await anyio.sleep(wait if granted else max(left, 0.0))
            finally:
                self.controller.waiting -= 1
            return granted
        return True

    def observe(self, *, sent_at: float, refused: bool, retry_after: float | None = None) -> float:
        return self._local.observe(sent_at=sent_at, refused=refused, retry_after=retry_after)

    def pause(self, seconds: float) -> None:
        self._local.pause(seconds)

    def statistics(self) -> RateStatistics:
        """Return a snapshot of the rate in force, the pause and this process's recent answers."""
        return self._local.statistics()

    # --- the server's copy ---------------------------------------------------------------------

    async def _acquire_alone(self, why: str, until: float) -> bool:
        if not self._alone:
            self._alone = True
            logger.warning(
                "the query budget %r cannot be shared (%s); queries are paced locally until "
                "Redis answers again",
                self.name,
                why,
            )
        if math.isinf(until):
            await self._local.acquire()
            return True
        with anyio.move_on_after(until - time.monotonic()) as scope:
            await self._local.acquire()
        return not scope.cancelled_caught

    async def _take(self) -> float:
        """Book a slot on the server; return the wait until it.

        The queries that ask at once book their slots in one call, in a row, at the rate in
        force when it leaves; each learns the wait until its own.
        """
        reply, place, take = await self._takes.call_merged(
            self, _TAKE, (self._key,), self._start_take
        )
        wait = take.wait
        if wait is None:  # the first of them to hear the answer reads it for all
            wait = take.read(text(reply))
            self._clock(take.server_now, take.before, time.monotonic())
            self._count(take.second, take.sent, take.slots)
            self._follow(take.version, take.curve, take.paused)
        return wait + place / take.rate

    def _start_take(self) -> _Take:
        return _Take(self.controller.rate)

    async def _write(self) -> None:
        controller = self.controller
        edits = controller.edits
        curve = controller.curve
        offset = self._offset
        paused = _server_time(curve.paused_until, offset)
        self._writing = edits
        try:
            reply = await self._link.run(
                _WRITE,
                (self._key,),
                (
                    self._version,
                    _encode(curve, offset),
                    repr(paused if math.isfinite(paused) else 0.0),
                    _KEEP_MS,
                ),
            )
        finally:
            self._writing = -1
        wrote, version, raw, paused_text = (text(x) for x in reply)
        if wrote == "1":
            self._version, self._written = int(version), edits
            return
        # Another process decided first: its curve is the one in force.
        self._written = controller.edits
        self._follow(int(version), raw, float(paused_text), force=True)

    def _follow(self, version: int, raw: str, paused: float, *, force: bool = False) -> None:
        """Take the server's copy if it is newer than what this process last saw."""
        controller = self.controller
        local_paused = paused - self._offset if paused > 0 else -math.inf
        controller.curve.paused_until = max(controller.curve.paused_until, local_paused)
        if version <= self._version and not force:
            return
        if controller.edits != self._written and not force:
            # This process decided something since: its write, next, is checked against the
            # version it read, so it is refused and this copy is taken then.
            return
        self._version = version
        curve = _decode(raw, ceiling=controller.ceiling, paused=paused, offset=self._offset)
        if curve is not None:
            controller.install(curve)

    def _clock(self, server_now: float, before: float, after: float) -> None:
        trip = after - before
        now = after
        if trip <= self._offset_trip or now - self._offset_at > _CLOCK_EVERY:
            self._offset = server_now - (before + after) / 2
            self._offset_trip, self._offset_at = trip, now

    def _count(self, second: int, sent: int, slots: int) -> None:
        mine = self._mine
        if mine and mine[-1][0] == second:
            mine[-1] = (second, mine[-1][1] + slots)
        else:
            mine.append((second, slots))
        self._all, self._all_until = sent, second

    def _share(self) -> float:
        """Return how many queries every process sent for each one sent here, lately."""
        until = self._all_until
        mine = sum(n for s, n in self._mine if until - _SHARE_SECONDS <= s < until)
        if mine == 0 or self._all == 0:
            return 1.0
        return self._all / mine
