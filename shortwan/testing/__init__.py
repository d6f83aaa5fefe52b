"""Test helpers for code that uses shortwan: a local fake of the service and test switches.

``FakeShortAPI`` serves the ShortAPI job protocol on 127.0.0.1 with knobs for job timing, failures,
faults, rate limits and callbacks; ``set_testing(True)`` makes retries skip their waits.
"""

from shortwan._config import FAST_POLL, PollPolicy, set_testing

from ._answers import ErrorCodes
from ._fake import DEFAULT_API_KEY, FakeShortAPI
from ._faults import Fault
from ._jobs import FakeJob, JobPlan, Timing
from ._process import FakeProcess, fake_process
from ._stats import FakeStats

__all__ = [
    "DEFAULT_API_KEY",
    "ErrorCodes",
    "FakeJob",
    "FakeProcess",
    "FakeShortAPI",
    "FakeStats",
    "Fault",
    "JobPlan",
    "Timing",
    "fake_process",
    "fast_poll",
    "set_testing",
]


def fast_poll() -> PollPolicy:
    """Return a poll policy for the fake's time scale: jobs of seconds, queries 50 ms apart.

    The production defaults expect jobs of minutes and would wait a minute before the first
    query; use this with :class:`FakeShortAPI` in tests and demos.
    """
    return FAST_POLL
