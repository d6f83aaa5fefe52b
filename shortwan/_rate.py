"""How fast the client may ask: a rate controller that tells a service's limit from noise.

A 429 is evidence, not a command to slow down forever. The controller keeps two numbers that any
implementation can share — the rate in force and the time until which the client pauses — and
decides them from what the service answers:

- A ``Retry-After`` is one pause for the client (capped by the caller), after which the rate in
  force resumes. A pause never becomes a lasting cut.
- The rate is cut only on evidence of a limit: a share of refusals in a recent window of answers
  clearly above the share the service refuses whatever the rate (its *noise*). It is cut to a
  fraction of the rate the service accepted in that window, never by an unbounded product.
- After a cut the controller checks that the refusals fell. If they did not, they never depended
  on the rate: the share is learned as noise and the rate before the cut comes back at once. So
  random refusals cost about their own share of throughput and never collapse the rate.
- The rate climbs back toward the ceiling over seconds: quickly up to just under the limit it
  found, then slowly past it, so a hard limit is held just under, not rediscovered at every step.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

import anyio
import attrs

from ._config import is_testing
from ._rate_curve import CUT_TO, MIN_PROBE, PROBE, RateCurve

__all__ = ["QueryBudget", "RateController", "RateCurve", "RateLimiter", "RateStatistics"]

logger = logging.getLogger("shortwan")

# Answers kept as evidence: enough to tell a 5 % share from a 15 % one, few enough to react in
# a second or two at the default ceiling.
_WINDOW: Final = 64
# The quick test looks at the last few answers only: a limit far below the rate in force refuses
# nearly everything, and every answer spent proving it is one more 429.
_QUICK: Final = 5
# How unlikely the quick test's refusals must be as noise before they count as a limit.
_QUICK_P: Final = 1e-3
# The share assumed to be noise by the quick test before any is learned (a real service refuses
# 5-10 % of requests at random on a bad day).
_PRIOR_NOISE: Final = 0.1
# The sustained test: the window's share must pass the noise by this much and by _Z standard
# deviations of a binomial share (with at least _MIN_VARIANCE as its variance).
_MIN_EXCESS: Final = 0.01
_Z: Final = 3.0
_MIN_VARIANCE: Final = 0.0025
# Answers to queries sent after a cut that must come back before it is judged: a limit (the
# refusals fell to the noise), too shallow (they fell, not that far: cut again) or noise (they
# did not fall: undo). Fewer cannot tell a 5 % noise from none.
_TRIAL: Final = 64
# Refusals above this share are never taken for noise.
_MAX_NOISE: Final = 0.5
# Whole windows in a row with less than half the learned noise before it is halved.
_FADE: Final = 5
# The longest a cut on trial holds the rate, in seconds, should its judge go away.
_MAX_HOLD: Final = 60.0
# The shortest stretch of time over which an accepted rate is measured, and the fewest accepted
# answers that make it a measure at all: with fewer, a cut divides the rate by _MAX_CUT instead.
_MIN_SPAN: Final = 0.1
_MIN_ACCEPTED: Final = 3
# How deep a cut goes when too little was accepted to measure, as a divisor of the rate.
_MAX_CUT: Final = 4.0
# Waits shorter than a timer tick are not worth a trip through the event loop.
_NO_WAIT: Final = 0.0005


@attrs.frozen(kw_only=True)
class RateStatistics:
    """A snapshot of a rate controller, for dashboards and logs.

    Attributes:
        rate: queries per second in force now.
        ceiling: the configured ceiling.
        floor: the rate is never cut below this.
        pause: seconds until the current pause ends (0 when not paused).
        refusal_share: share of 429s among the recent answers (0 to 1).
        window: how many recent answers that share is computed from.
        noise: the share of refusals learned not to depend on the rate.
        limit: the service's limit as last measured (accepted queries per second), if any.
        sent: answers seen in all.
        refused: 429s seen in all.
        cuts: rate cuts made on evidence of a limit.
        undone: cuts taken back because the refusals did not fall (they were noise).
        pauses: pauses started by a Retry-After.
    """

    rate: float
    ceiling: float
    floor: float
    pause: float
    refusal_share: float
    window: int
    noise: float
    limit: float | None
    sent: int
    refused: int
    cuts: int
    undone: int
    pauses: int


@attrs.define
class _Trial:
    """A cut on probation, judged on the answers to queries sent after it."""

    # The rate before this cut, and the refusals that led to it.
    rate_before: float
    share_before: float
    answers_before: int
    # What the service accepted while refusing, when enough was accepted to measure it.
    limit: float | None
    # An earlier step of this episode already showed the refusals falling with the rate (or a
    # storm at the rate it was cut to): whatever the last step shows, the limit is real.
    shown: bool = False
    seen: int = 0
    refused: int = 0


class _Answers:
    """The recent answers to queries sent at the rate in force: the evidence of a window."""

    __slots__ = ("_entries", "refused")

    def __init__(self) -> None:
        # (sent_at, refused), oldest first.
        self._entries: deque[tuple[float, bool]] = deque(maxlen=_WINDOW)
        self.refused = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, sent_at: float, refused: bool) -> None:
        entries = self._entries
        if len(entries) == entries.maxlen and entries[0][1]:
            self.refused -= 1
        entries.append((sent_at, refused))
        self.refused += refused

    def clear(self) -> None:
        self._entries.clear()
        self.refused = 0

    def share(self) -> float:
        """Return the share of the answers that were 429s (0 with none)."""
        return self.refused / len(self._entries) if self._entries else 0.0

    def last_refused(self, count: int) -> int:
        """Return how many of the last ``count`` answers were 429s."""
        entries = self._entries
        return sum(1 for i in range(1, count + 1) if entries[-i][1])

    def span(self) -> float:
        """Return the time over which the queries were sent (their answers came later)."""
        entries = self._entries
        return max(entries[-1][0] - entries[0][0], _MIN_SPAN)


class RateController:
    """Decide the rate in force and the pause from the answers to queries.

    The controller does no I/O and reads no clock: every call passes ``now`` (seconds on one
    monotonic clock), so the same logic serves an in-process limiter and a shared one, and tests
    replay synthetic traces through it. What it decides is its :attr:`curve`; the evidence it
    decides from (recent answers, a cut on trial, the noise learned) stays its own.

    Args:
        ceiling: the highest rate, in queries per second.
        floor: the lowest rate a cut may reach (default: a thousandth of the ceiling, and no
            less than one query a minute).
        name: what is limited, for log lines.
        scale: when several processes send through one shared rate, returns how many queries
            all of them sent for each one sent here lately (1.0 alone): what this process sees
            accepted is then only its share of what the service accepted.
    """

    def __init__(
        self,
        ceiling: float,
        *,
        floor: float | None = None,
        name: str = "query",
        scale: Callable[[], float] | None = None,
    ) -> None:
        if not (math.isfinite(ceiling) and ceiling > 0):
            raise ValueError(f"ceiling must be a finite rate > 0, got {ceiling!r}")
        self.ceiling = float(ceiling)
        if floor is None:
            floor = max(self.ceiling / 1000, 1 / 60)
        self.floor = min(self.ceiling, floor)
        self.name = name
        self._scale = scale
        self.curve = RateCurve(ceiling=self.ceiling, base=self.ceiling)
        self._noise = 0.0
        self._quiet = 0  # whole windows in a row with less than half the noise
        self._window = _Answers()
        self._trial: _Trial | None = None
        # Counts changes of the base rate, so a limiter can drop slots planned at an old rate,
        # and every change of the curve, so a shared copy knows when to be written.
        self.changes = 0
        self.edits = 0
        # Queries waiting for a slot now (the limiter keeps it): demand beyond the rate.
        self.waiting = 0
        self._sent = 0
        self._refused = 0
        self._cuts = 0
        self._undone = 0
        self._pauses = 0

    def __repr__(self) -> str:
        return f"<RateController {self.name} ceiling={self.ceiling:g}/s>"

    @property
    def paused_until(self) -> float:
        """Every query holds off until then."""
        return self.curve.paused_until

    # --- the two numbers ------------------------------------------------------------------------

    def rate(self, now: float) -> float:
        """Return the rate in force at ``now``, in queries per second."""
        curve = self.curve
        if curve.base >= self.ceiling:
            return self.ceiling  # the usual case: nothing to climb, so no need to measure use
        rate = curve.rate(now, self._used())
        if rate >= self.ceiling:
            curve.base, curve.base_at = self.ceiling, now
            self.edits += 1
            logger.info(
                "%s rate back at its ceiling of %.3g/s",
                self.name,
                self.ceiling,
                extra={"rate": rate},
            )
        return rate

    def pause(self, now: float, seconds: float) -> None:
        """Hold every query from ``now`` for ``seconds`` (a pause only ever grows)."""
        until = now + max(0.0, seconds)
        curve = self.curve
        if until <= curve.paused_until:
            return
        if curve.paused_until < now:
            self._pauses += 1
        curve.paused_until = until
        self.edits += 1

    def install(self, curve: RateCurve) -> None:
        """Follow ``curve``, decided elsewhere (another process sharing the rate)."""
        if curve.base != self.curve.base or curve.base_at != self.curve.base_at:
            self.changes += 1
            # Answers to queries sent before the change say nothing about the new rate.
            self._window.clear()
        self.curve = curve

    # --- evidence -------------------------------------------------------------------------------

    def observe(
        self, *, sent_at: float, now: float, refused: bool, retry_after: float | None = None
    ) -> None:
        """Hear how one query went: ``refused`` when the service answered 429.

        ``retry_after`` (already capped by the caller) is honoured as a pause of the client when
        this refusal is the first evidence of a limit; a lone refusal only delays its own query,
        which the caller retries after it. Answers to queries sent before the last change of rate
        say nothing about the new rate and are only counted.
        """
        self._sent += 1
        self._refused += refused
        if sent_at < self.curve.base_at:
            return
        window = self._window
        window.add(sent_at, refused)
        trial = self._trial
        if trial is not None:
            trial.seen += 1
            trial.refused += refused
        quick = self._quick_share(trial) if refused else None
        if quick is not None:
            # Nearly everything refused: the client is far past a limit, and a pause (if the
            # service asked for one) stops the storm while the cut takes hold.
            if retry_after is not None and trial is None:
                self.pause(now, retry_after)
            self._cut(now)
        elif trial is not None:
            if trial.seen >= _TRIAL:
                self._judge(trial, now)
        elif refused and self._sustained_evidence():
            self._cut(now)
        elif len(window) == _WINDOW and self._sent % _WINDOW == 0:
            self._review(now)

    def _review(self, now: float) -> None:
        """Look back at a whole window without evidence of a limit."""
        share = self._window.share()
        # A noise learned once may fade: after several whole windows in a row with less than
        # half of it, it is halved. (Never raised here: a limit's refusals would be taken for
        # noise bit by bit; only a cut that did not help raises it.)
        self._quiet = self._quiet + 1 if share < self._noise / 2 else 0
        if self._quiet >= _FADE:
            self._noise = self._noise / 2 if self._noise > 0.005 else 0.0
            self._quiet = 0
        limit = self.curve.limit
        rate = self.rate(now)
        if limit is not None and rate > 1.2 * limit:
            # Well past the limit and no evidence of it: it is gone, or it never was.
            self.curve.limit = None
            self.edits += 1
            logger.info(
                "%s limit of %.3g/s no longer seen at %.3g/s",
                self.name,
                limit,
                rate,
                extra={"rate": rate},
            )

    def _quick_share(self, trial: _Trial | None) -> float | None:
        """Return a share of recent answers refused that is far too high to be noise, if any.

        The last few answers are looked at, and during a trial all of the trial's answers: a cut
        that was not deep enough shows within a few answers, not only at the end of the trial.
        """
        noise = max(self._noise, _PRIOR_NOISE)
        window = self._window
        if len(window) >= _QUICK:
            refused = window.last_refused(_QUICK)
            if _binomial_tail(refused, _QUICK, noise) < _QUICK_P:
                return refused / _QUICK
        if (
            trial is not None
            and trial.seen > _QUICK
            and _binomial_tail(trial.refused, trial.seen, noise) < _QUICK_P
        ):
            return trial.refused / trial.seen
        return None

    def _sustained_evidence(self) -> bool:
        n = len(self._window)
        return n >= _WINDOW // 2 and self._window.share() > self._noise + self._margin(n)

    def _share_of_all(self) -> float:
        return 1.0 if self._scale is None else max(1.0, self._scale())

    def _used(self) -> float:
        """Return the queries a second sent lately, by every process sharing the rate.

        With queries waiting for a slot, the demand is more than the rate in force, whatever was
        sent: infinite, for the climb's cap.
        """
        if self.waiting:
            return math.inf
        if len(self._window) < _QUICK:
            return 0.0
        return len(self._window) / self._window.span() * self._share_of_all()

    def _accepted_rate(self) -> float | None:
        """Return what the service accepted over the window, or None if too little to tell."""
        accepted = len(self._window) - self._window.refused
        if accepted < _MIN_ACCEPTED:
            return None
        return accepted / self._window.span() / (1.0 - self._noise) * self._share_of_all()

    def _cut(self, now: float) -> None:
        """Cut the rate to just under what the service accepted over the window.

        The window's refusal share is kept for the trial, which compares it with the share
        after the cut.
        """
        before = self.rate(now)
        answers = len(self._window)
        share = self._window.share()
        accepted = self._accepted_rate()
        # Too little accepted to measure: a bounded step down; the trial shows if it was enough.
        target = before / _MAX_CUT if accepted is None else min(before, CUT_TO * accepted)
        trial = self._trial
        if trial is None:
            trial = _Trial(
                rate_before=before,
                share_before=share,
                answers_before=answers,
                limit=accepted,
                # Refusals again where a limit was found before: that limit, not noise.
                shown=self._near_known_limit(accepted, now),
            )
        else:
            # Still too fast: deeper, on the same probation (an undo takes back this step only).
            trial.rate_before, trial.share_before, trial.answers_before = before, share, answers
            trial.limit = accepted
            trial.shown = True
            trial.seen = trial.refused = 0
        self._set_base(target, now)
        # Held while on trial: long enough for the trial's answers at the new rate, no longer.
        self.curve.hold_until = now + min(_MAX_HOLD, 2 * _TRIAL / self.curve.base)
        self._trial = trial
        self._cuts += 1
        logger.info(
            "%s rate cut from %.3g/s to %.3g/s: %d of the last %d answers were 429s; the "
            "service accepted %s",
            self.name,
            before,
            self.curve.base,
            self._window.refused,
            len(self._window),
            "too few to measure" if accepted is None else f"{accepted:.3g}/s",
            extra={"rate": self.curve.base, "refusal_share": share},
        )
        self._window.clear()

    def _near_known_limit(self, accepted: float | None, now: float) -> bool:
        known = self.curve.known_limit(now)
        return known is not None and accepted is not None and 0.8 < accepted / known < 1.25

    def _judge(self, trial: _Trial, now: float) -> None:
        share, seen = trial.refused / trial.seen, trial.seen
        before, answers = trial.share_before, trial.answers_before
        # Did the share fall? Two shares, one test: their difference against its spread.
        pooled = (before * answers + share * seen) / (answers + seen)
        spread = math.sqrt(max(pooled * (1.0 - pooled), _MIN_VARIANCE) * (1 / answers + 1 / seen))
        fell = before - share > 2.0 * spread
        at_noise = share <= self._noise + self._margin(seen)
        if share > _MAX_NOISE or (fell and not at_noise):
            self._cut(now)  # the refusals fell, not enough: still too fast
        elif at_noise and (fell or trial.shown):
            self._confirm(trial, now)  # down to the noise with the rate: the limit is real
        else:
            self._undo(trial, pooled, now)

    def _margin(self, answers: int) -> float:
        """Return how far above the noise a share of ``answers`` may be by chance."""
        noise = self._noise
        return _MIN_EXCESS + _Z * math.sqrt(max(noise * (1.0 - noise), _MIN_VARIANCE) / answers)

    def _confirm(self, trial: _Trial, now: float) -> None:
        """The refusals fell to the noise with the rate: the limit is real."""
        self._trial = None
        curve = self.curve
        curve.hold_until = now  # judged: the climb back starts now
        self.edits += 1
        limit = trial.limit
        if limit is None:
            return  # too little was accepted to measure the limit: climb back and find it
        if self._near_known_limit(limit, now):
            # Found again near the same rate: probe past it more slowly next time, so a steady
            # limit costs fewer and fewer 429s.
            curve.probe = max(MIN_PROBE, curve.probe / 2)
        else:
            curve.probe = PROBE
        curve.limit, curve.limit_at = limit, now

    def _undo(self, trial: _Trial, pooled: float, now: float) -> None:
        """The refusals stayed: they never depended on the rate. Learn them, take the cut back.

        ``pooled`` is the share before and after the cut together: the one before was picked for
        being high, the one after is a small sample; the noise is taken at the top of what they
        allow, since an estimate too low brings false cuts, and one too high only tolerates a
        few more 429s.
        """
        self._trial = None
        share = trial.refused / trial.seen
        answers = trial.answers_before + trial.seen
        high = pooled + math.sqrt(max(pooled * (1.0 - pooled), _MIN_VARIANCE) / answers)
        self._noise = min(_MAX_NOISE, max(self._noise, high))
        self._undone += 1
        self._set_base(trial.rate_before, now)
        self.curve.hold_until = now
        self._window.clear()
        logger.info(
            "%s rate back to %.3g/s: 429s did not fall with the cut (%.0f %% after it), so they "
            "do not depend on the rate: taken as noise",
            self.name,
            self.curve.base,
            share * 100,
            extra={"rate": self.curve.base, "refusal_share": share},
        )

    def _set_base(self, rate: float, now: float) -> None:
        curve = self.curve
        curve.base = min(self.ceiling, max(self.floor, rate))
        curve.base_at = now
        self.changes += 1
        self.edits += 1

    def statistics(self, now: float) -> RateStatistics:
        """Return a snapshot of the controller at ``now``."""
        return RateStatistics(
            rate=self.rate(now),
            ceiling=self.ceiling,
            floor=self.floor,
            pause=max(0.0, self.curve.paused_until - now),
            refusal_share=self._window.share(),
            window=len(self._window),
            noise=self._noise,
            limit=self.curve.known_limit(now),
            sent=self._sent,
            refused=self._refused,
            cuts=self._cuts,
            undone=self._undone,
            pauses=self._pauses,
        )


def _binomial_tail(k: int, n: int, p: float) -> float:
    """Return P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    return sum(math.comb(n, i) * p**i * (1.0 - p) ** (n - i) for i in range(k, n + 1))


class QueryBudget(Protocol):
    """Grants permission to send queries; shared by every job of a client (or of many clients).

    The transport calls :meth:`acquire` before every query attempt (retries included) and
    :meth:`observe` with every answer, so one budget sees all the queries it governs. The
    transport bounds the wait by the call's deadline; a budget that can keep to a deadline
    itself may also offer ``async acquire_within(seconds) -> bool`` (granted, or refused
    without waiting past ``seconds``), which the transport then calls instead.
    """

    async def acquire(self) -> None:
        """Return when one more query may be sent: after any pause, at the rate in force."""

    def observe(self, *, sent_at: float, refused: bool, retry_after: float | None = None) -> float:
        """Hear how a query sent at ``sent_at`` (``time.monotonic()``) went.

        ``refused``: the service answered 429, with ``retry_after`` seconds (already capped).
        Return the seconds for which every call of the client should now hold off (0 if none).
        """

    def pause(self, seconds: float) -> None:
        """Hold every query off for ``seconds`` from now (a pause only ever grows)."""

    def statistics(self) -> RateStatistics:
        """Return a snapshot of the rate in force, the pause and the recent refusals."""


class RateLimiter:
    """The in-memory :class:`QueryBudget`: evenly spaced queries at a controlled rate.

    A :class:`RateController` decides the rate (at most ``rate`` queries a second) and the pause
    from the answers; this class spaces :meth:`acquire` calls by it.

    Args:
        rate: the ceiling, in queries per second.
        floor: the lowest rate a cut may reach (see :class:`RateController`).
        controller: the controller to follow, instead of one of its own (a shared budget hands
            its own over when it paces locally).
    """

    def __init__(
        self,
        rate: float,
        *,
        floor: float | None = None,
        controller: RateController | None = None,
    ) -> None:
        self.controller = controller or RateController(rate, floor=floor)
        self._next = 0.0
        self._changes = 0

    def __repr__(self) -> str:
        return f"<RateLimiter {self.rate:.3g}/s of {self.controller.ceiling:g}/s>"

    @property
    def rate(self) -> float:
        """The rate in force now, in queries per second."""
        return self.controller.rate(time.monotonic())

    def try_acquire(self) -> bool:
        """Take the leave to send one query now if it needs no wait; never waits.

        The same decision as :meth:`acquire`'s first step, so a caller may try this first and
        await :meth:`acquire` only when it returns False.
        """
        now = time.monotonic()
        if self.controller.paused_until > now and not is_testing():
            return False
        slot = self._free_slot(now)
        if slot - now > _NO_WAIT:
            return False
        self._book(slot)
        return True

    async def acquire(self) -> None:
        controller = self.controller
        while True:
            now = time.monotonic()
            if controller.paused_until > now and not is_testing():
                await anyio.sleep(controller.paused_until - now)
                continue
            changes = controller.changes
            slot = self._free_slot(now)
            booked = self._book(slot)
            if slot - now <= _NO_WAIT:
                return  # the common case: no wait, so no trip through the event loop
            # Queries waiting for their slot are demand the rate does not meet: while any wait,
            # the rate may climb whatever was sent lately.
            controller.waiting += 1
            try:
                await anyio.sleep(slot - now)
            except BaseException:
                if self._next == booked:  # the last slot booked, so no one queues behind it
                    self._next = slot  # a query that leaves gives its slot back
                raise
            finally:
                controller.waiting -= 1
            if controller.changes == changes and controller.paused_until <= slot:
                return

    def _free_slot(self, now: float) -> float:
        """Return the next free slot; after a cut (or a restore), those planned before lapse,
        and the queries waiting for them line up again at the new rate."""
        changes = self.controller.changes
        if changes != self._changes:
            self._changes = changes
            self._next = now
        return max(now, self._next)

    def _book(self, slot: float) -> float:
        """Book ``slot``; return where the next one starts."""
        self._next = slot + 1.0 / self.controller.rate(slot)
        return self._next

    def observe(self, *, sent_at: float, refused: bool, retry_after: float | None = None) -> float:
        now = time.monotonic()
        self.controller.observe(sent_at=sent_at, now=now, refused=refused, retry_after=retry_after)
        return max(0.0, self.controller.paused_until - now)

    def pause(self, seconds: float) -> None:
        self.controller.pause(time.monotonic(), seconds)

    def statistics(self) -> RateStatistics:
        """Return a snapshot of the rate in force, the pause and the recent refusals."""
        return self.controller.statistics(time.monotonic())
