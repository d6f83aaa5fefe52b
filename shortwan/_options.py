"""The options of a batch, declared and checked once for every way of running one.

``generate_many``, ``gather`` and ``shortwan batch`` all build a :class:`BatchOptions`; the batch
reads only that. A bad value is refused when the options are made, before anything is sent.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import TYPE_CHECKING, Final

import attrs

from ._errors import InvalidRequestError
from ._models import check_timeout
from ._spec import DEFAULT_JOB_TIMEOUT
from ._spend import SpendCounter, check_spend

if TYPE_CHECKING:
    from .journal import Journal

__all__ = ["DEFAULT_CONCURRENCY", "BatchOptions", "job_timeout"]

DEFAULT_CONCURRENCY: Final = 16


def job_timeout(value: object) -> float | None:
    """Return a per-job wait as seconds (``None``: no limit); zero is refused.

    Raises:
        InvalidRequestError: not a number of seconds above zero, nor ``None`` or infinity.
    """
    seconds = check_timeout(value)
    if seconds == 0:
        raise InvalidRequestError(["timeout must be > 0 seconds or None, got 0"])
    return seconds


def _check_concurrency(_options: object, _attribute: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError([f"concurrency must be an int >= 1, got {value!r}"])


@attrs.frozen(kw_only=True)
class BatchOptions:
    """How one batch runs (see :meth:`~shortwan.AsyncShortWan.generate_many`).

    Attributes:
        concurrency: requests admitted and not yet reported, at most.
        max_spend: the cap, as an amount in USD or a shared :class:`~shortwan.SpendCounter`
            (``None``: no cap). Amounts are read exactly (a float through its shortest text).
        timeout: seconds to wait for each job once created (``None``: no limit).
        journal: the batch's :class:`~shortwan.journal.Journal`, for crash-safe reruns.
        resubmit_uncertain: with a journal, send again what an earlier run may have sent.
        download_to: a folder to download every video into.
    """

    concurrency: int = attrs.field(default=DEFAULT_CONCURRENCY, validator=_check_concurrency)
    max_spend: Decimal | SpendCounter | None = attrs.field(default=None, converter=check_spend)
    timeout: float | None = attrs.field(default=DEFAULT_JOB_TIMEOUT, converter=job_timeout)
    journal: Journal | None = None
    resubmit_uncertain: bool = False
    download_to: str | os.PathLike[str] | None = None
