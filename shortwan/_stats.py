"""Read-only snapshots of the client's figures, in the manner of anyio's ``statistics()``.

Each part of the client that counts something returns a frozen snapshot of it;
:class:`ClientStatistics` puts them together for :meth:`shortwan.AsyncShortWan.statistics`. A new
part's figures are one more field here.
"""

from __future__ import annotations

import attrs

from ._poller import PollerStatistics
from ._rate import RateStatistics
from ._sharing import SharingStatistics
from ._table import JobTableStatistics

__all__ = ["CallbackStatistics", "ClientStatistics"]


@attrs.frozen(kw_only=True)
class CallbackStatistics:
    """A snapshot of a callback receiver's figures (``CallbackReceiver.statistics()``).

    Attributes:
        received: callbacks that named a live token (of this worker or, with a shared
            registry, of another one).
        rejected: callbacks with an unknown token (answered 404; they changed nothing).
        listening: tokens live now: creates in flight, jobs not finished, lost creates.
        forwarded: callbacks received here and forwarded to the worker holding their token.
        from_other_workers: callbacks other workers forwarded here.
        taken_over: callbacks whose worker was gone, confirmed and published here.
        unavailable: callbacks answered 503 because the shared registry could not be asked.
    """

    received: int
    rejected: int
    listening: int
    forwarded: int = 0
    from_other_workers: int = 0
    taken_over: int = 0
    unavailable: int = 0


@attrs.frozen(kw_only=True)
class ClientStatistics:
    """A snapshot of a client's figures (see :meth:`shortwan.AsyncShortWan.statistics`).

    Attributes:
        jobs: the job table: jobs by state, money, uncertain and adopted creates.
        polling: the shared poller: queries answered, what it learned of running times.
        rate: the query budget: the rate in force, any pause, the recent share of 429s, the
            noise and the limit it has learned.
        callbacks: the callback receiver, when the client has one.
        shared: what the client shared through its ``shared`` state, when it has one.
    """

    jobs: JobTableStatistics
    polling: PollerStatistics
    rate: RateStatistics
    callbacks: CallbackStatistics | None = None
    shared: SharingStatistics | None = None
