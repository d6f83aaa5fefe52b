"""The journal steps of a batch, behind one interface with a do-nothing variant.

Every request of a batch gets a :class:`Page`: the place its steps are written (intent before the
create leaves, the job id once created, how the job ended, where its video went). With a
:class:`~shortwan.journal.Journal` the page is a row of it (:class:`JournalLedger`); without one,
:class:`NullLedger` hands out pages that write nothing, so the batch never asks whether there is a
journal.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from ._errors import InvalidRequestError, JobFailedError, ShortWanError, SubmissionUncertainError
from ._models import ImageToVideo, Outcome
from ._table import JobRecord

if TYPE_CHECKING:
    from .journal import Entry, Journal

__all__ = [
    "NULL_PAGE",
    "AdoptionHook",
    "AdoptionWatch",
    "JournalLedger",
    "Ledger",
    "NullLedger",
    "Page",
    "ledger_for",
]

logger = logging.getLogger("shortwan")

AdoptionHook = Callable[[JobRecord], Awaitable[None]]


class AdoptionWatch(Protocol):
    """Where to ask to hear of a lost create's job, if its callback finds it (the engine)."""

    def on_adoption(self, token: str, hook: AdoptionHook) -> None:
        """Run ``hook(record)`` once the lost create behind ``token`` is adopted."""


class Page(Protocol):
    """The journal row of one request of a batch (or nothing at all)."""

    @property
    def key(self) -> str | None:
        """The request's key: its row's name in the journal."""

    async def entry(self) -> Entry | None:
        """Return what an earlier run recorded for the request, if anything."""

    async def intent(self, request: ImageToVideo, cost: Decimal) -> None:
        """Record, durably, that the create is about to leave; undo it if cancelled meanwhile."""

    async def submitted(self, record: JobRecord) -> None:
        """Record the job the create made; a failure is logged, never raised."""

    async def uncertain(self, error: SubmissionUncertainError, watch: AdoptionWatch) -> None:
        """Record that the create may have made a job; note the job if a callback finds it."""

    async def refused(self) -> None:
        """Drop the row: the create was refused, so no job exists and a rerun may send it."""

    async def finished(self, outcome: Outcome) -> None:
        """Record how the job ended: the outcome's video, or its :class:`JobFailedError`."""

    async def downloaded(self, path: Path) -> None:
        """Record where the video was saved."""


class Ledger(Protocol):
    """Hands out the page of every request of one batch."""

    @property
    def remembers(self) -> bool:
        """Whether a rerun can learn what this run did (only then is a job's end recorded)."""

    async def spent(self) -> Decimal:
        """Return the money earlier runs of the batch committed."""

    def page(self, request: ImageToVideo, key: str | None) -> Page:
        """Return the page of ``request``, named ``key`` (or after the request).

        Raises:
            InvalidRequestError: ``key`` is taken by another request of the batch.
        """


class _NullPage:
    __slots__ = ("key",)

    def __init__(self, key: str | None) -> None:
        self.key = key

    async def entry(self) -> Entry | None:
        return None

    async def intent(self, request: ImageToVideo, cost: Decimal) -> None:
        pass

    async def submitted(self, record: JobRecord) -> None:
        pass

    async def uncertain(self, error: SubmissionUncertainError, watch: AdoptionWatch) -> None:
        pass

    async def refused(self) -> None:
        pass

    async def finished(self, outcome: Outcome) -> None:
        pass

    async def downloaded(self, path: Path) -> None:
        pass


NULL_PAGE: Final[Page] = _NullPage(None)
"""A page that records nothing, for an item before the ledger has named it."""


class NullLedger:
    """The ledger of a batch without a journal: its pages record nothing."""

    remembers: Final = False

    async def spent(self) -> Decimal:
        """Return zero: nothing is known of earlier runs."""
        return Decimal(0)

    def page(self, request: ImageToVideo, key: str | None) -> Page:
        """Return a page that records nothing, keeping the caller's key (duplicates allowed)."""
        return _NullPage(key)


class _JournalPage:
    __slots__ = ("_journal", "key")

    def __init__(self, journal: Journal, key: str) -> None:
        self._journal = journal
        self.key = key

    async def entry(self) -> Entry | None:
        return await self._journal.get(self.key)

    async def intent(self, request: ImageToVideo, cost: Decimal) -> None:
        # Durable before the create leaves (and only once a client-wide slot is held, so a
        # request still waiting for one is not taken for maybe-sent): a crash from here on is
        # never a silent double.
        await self._journal.intent(self.key, model=request.model, estimate=cost)
        try:
            await checkpoint_if_cancelled()  # stopped meanwhile: it never leaves
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._journal.forget(self.key)
            raise

    async def submitted(self, record: JobRecord) -> None:
        try:
            await self._journal.submitted(self.key, job_id=record.id, amount=record.amount)
        except Exception:
            # The job is tracked and reported all the same; a rerun finds only the intent and
            # reports the request uncertain rather than paying again.
            logger.exception("job %s could not be written to the journal", record.id)

    async def uncertain(self, error: SubmissionUncertainError, watch: AdoptionWatch) -> None:
        if error.callback_token is not None:
            # Before the write below: an adoption may land while it is under way.
            watch.on_adoption(error.callback_token, self._adopted)
        try:
            await self._journal.uncertain(self.key)
        except Exception:
            # The intent already says "maybe sent"; the outcome keeps saying so too.
            logger.exception("the lost create of %r could not be journaled", self.key)

    async def _adopted(self, record: JobRecord) -> None:
        # The lost create's job was found through its callback: a rerun must collect it by id
        # instead of calling it uncertain. The journal may be closed by now.
        try:
            await self._journal.submitted(self.key, job_id=record.id, amount=record.amount)
        except (RuntimeError, ShortWanError) as exc:
            logger.warning(
                "adopted job %s could not be written to the journal: %s",
                record.id,
                exc,
                extra={"job_id": record.id},
            )

    async def refused(self) -> None:
        await self._journal.forget(self.key)

    async def finished(self, outcome: Outcome) -> None:
        if outcome.video is not None:
            await self._journal.finished(self.key, video=outcome.video)
        elif isinstance(outcome.error, JobFailedError):
            await self._journal.finished(self.key, error=outcome.error)

    async def downloaded(self, path: Path) -> None:
        await self._journal.downloaded(self.key, path)


class JournalLedger:
    """The ledger of a batch with a journal: each request's page is its row.

    A request without a key is named after a hash of itself; equal requests are told apart by
    their order, so asking twice makes two videos.
    """

    remembers: Final = True

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._keys_seen: dict[str, int] = {}

    async def spent(self) -> Decimal:
        """Return what the journal says earlier runs committed."""
        return await self._journal.spent()

    def page(self, request: ImageToVideo, key: str | None) -> Page:
        """Return the row of ``request``: ``key``, else its hash with its rank among equals."""
        from .journal import request_key  # noqa: PLC0415 - only batches with a journal need it

        if key is not None:
            if key in self._keys_seen:
                raise InvalidRequestError([f"key {key!r} appears twice in this batch"])
            self._keys_seen[key] = 1
            return _JournalPage(self._journal, key)
        base = request_key(request)
        seen = self._keys_seen.get(base, 0) + 1
        self._keys_seen[base] = seen
        return _JournalPage(self._journal, base if seen == 1 else f"{base}#{seen}")


def ledger_for(journal: Journal | None) -> Ledger:
    """Return the ledger of a batch that uses ``journal`` (or none)."""
    return NullLedger() if journal is None else JournalLedger(journal)
