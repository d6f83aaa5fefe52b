"""Admission: what becomes of each request a batch pulls, up to its job being tracked.

An item is unpacked and checked, looked up in the batch's ledger (a journal may say it finished,
was created, or may have been sent by an earlier run), held against the spend cap, and only then
sent. From there its job waits in the batch's :class:`~shortwan._waiters.Waiters`; everything
that stops it earlier is its own :class:`~shortwan.Outcome`. One item's trouble never stops the
batch or the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import anyio
import attrs

from ._convert import request_from_args
from ._errors import (
    APIError,
    JobTimeoutError,
    SharedStateError,
    ShortWanError,
    SpendLimitError,
    SubmissionUncertainError,
    TransportError,
    as_shortwan,
)
from ._ledger import NULL_PAGE, AdoptionHook, Ledger, Page
from ._models import BatchItem, ImageToVideo, Outcome
from ._outputs import Outputs
from ._spend import SpendCounter
from ._table import JobRecord
from ._waiters import Waiters

if TYPE_CHECKING:
    from .journal import Entry

__all__ = ["Admission", "BatchEngine", "Item", "RequestItem"]

logger = logging.getLogger("shortwan")

RequestItem: TypeAlias = "ImageToVideo | BatchItem | Mapping[str, Any]"


class BatchEngine(Protocol):
    """What a batch asks of the client's engine."""

    async def create(
        self,
        request: ImageToVideo,
        *,
        on_created: Callable[[JobRecord], Awaitable[None]],
        before_send: Callable[[], Awaitable[None]],
        inline: bool,
    ) -> JobRecord:
        """Create a job; see :meth:`shortwan._creating.Creator.create`."""

    def attach(self, job_id: str) -> JobRecord:
        """Track a job created elsewhere."""

    def query_if_due(self, record: JobRecord) -> Awaitable[None]:
        """Ask about a job this task just created, if it is due at once (await the result)."""

    @property
    def create_room(self) -> int | None:
        """How many creates a batch should have on the wire at once (``None``: no limit)."""

    def on_adoption(self, token: str, hook: AdoptionHook) -> None:
        """Run ``hook`` once the lost create behind ``token`` is adopted."""

    def time_out(self, record: JobRecord, timeout: float | None) -> JobTimeoutError:
        """Mark a wait on ``record`` as timed out locally and return the error that says so."""


@attrs.define(slots=True, eq=False, kw_only=True)
class Item:
    """One request of a batch on its way, and how far it got.

    Attributes:
        index: its position in the input.
        request: the request, once it could be built.
        key: its key (the journal's name for it, once the ledger has its page).
        output: its file name in the download folder.
        page: its journal row (a page that records nothing without a journal).
        tracked: its job is in the waiters: its outcome comes through the job's end.
        sending: its create may have left, so its reservation is no longer ours to give back.
    """

    index: int
    request: ImageToVideo | None = None
    key: str | None = None
    output: str | None = None
    page: Page = NULL_PAGE
    tracked: bool = False
    sending: bool = False


@attrs.define(kw_only=True, eq=False)
class Admission:
    """Admits the items of one batch, one :meth:`admit` call each.

    Attributes:
        engine: the client's engine.
        ledger: where each item's steps are written.
        budget: the spend cap.
        outputs: the download folder.
        resubmit_uncertain: send again what an earlier run may have sent.
        waiters: where a tracked job waits.
        emit: takes every outcome admission settles itself.
    """

    _engine: BatchEngine
    _ledger: Ledger
    _budget: SpendCounter
    _outputs: Outputs
    _resubmit_uncertain: bool
    _waiters: Waiters[Item]
    _emit: Callable[[Outcome], None]
    _cap_reached: bool = attrs.field(init=False, default=False)

    async def admit(self, index: int, raw: RequestItem) -> None:
        """See one input item to its tracked job or to its outcome; never raise for it."""
        item = Item(index=index)
        try:
            await self._admit(item, raw)
        except Exception as exc:
            if item.tracked:
                # Its outcome comes (or came) through the job's own end.
                logger.exception("a batch item failed after its job was tracked")
                return
            logger.exception("a batch item failed unexpectedly")
            error = as_shortwan(exc, "this request failed unexpectedly")
            self._emit(Outcome(index=index, request=item.request, key=item.key, error=error))

    async def _admit(self, item: Item, raw: RequestItem) -> None:
        try:
            request = self._unpack(item, raw)
            page = self._ledger.page(request, item.key)
        except ShortWanError as exc:
            self._emit(Outcome(index=item.index, key=item.key, error=exc))
            return
        item.request, item.page, item.key = request, page, page.key
        entry = await page.entry()
        if entry is not None and await self._resumed(item, request, entry):
            return
        try:
            granted = not self._cap_reached and await self._budget.reserve(request.estimated_cost)
        except SharedStateError as exc:
            # Fail closed: nothing is sent past a cap nobody can check. The cap is not reached
            # for all that: the next request asks again.
            self._emit(self._refused(item, request, exc))
            return
        if not granted:
            self._cap_reached = True
            self._emit(self._refused(item, request, self._cap_error(request)))
            return
        await self._send(item, request)

    def _unpack(self, item: Item, raw: RequestItem) -> ImageToVideo:
        """Return the item's request, with its key and output on ``item``."""
        if type(raw) is ImageToVideo:
            return raw  # the common case: no key, and no output name to check
        if isinstance(raw, BatchItem):
            item.key, item.output, raw = raw.key, raw.output, raw.request
        elif isinstance(raw, Mapping) and ("key" in raw or "output" in raw):
            raw = dict(raw)
            key, output = raw.pop("key", None), raw.pop("output", None)
            BatchItem(request=raw, key=key, output=output)  # checks the key and the output
            item.key, item.output = key, output
        request = raw if isinstance(raw, ImageToVideo) else request_from_args(raw)
        self._outputs.reserve(item.output)  # refused before paying: a bad or taken name
        return request

    async def _resumed(self, item: Item, request: ImageToVideo, entry: Entry) -> bool:
        """Act on what an earlier run recorded; return whether nothing is left to send."""
        if entry.is_done:
            outcome = Outcome(
                index=item.index,
                request=request,
                job_id=entry.job_id,
                video=entry.video,
                error=entry.error,
                amount=entry.amount,
                key=entry.key,
                path=entry.path,
                replayed=True,
            )
            self._emit(await self._outputs.save(outcome, item.output, item.page))
            return True
        if entry.job_id is not None:
            # Created in an earlier run: collect it by id, never create it again.
            record = self._engine.attach(entry.job_id)
            if record.request is None:
                record.request = request
            if record.amount is None:
                record.amount = entry.amount
            item.tracked = True
            self._waiters.add(item.index, record, item)
            return True
        if self._resubmit_uncertain:
            return False
        error = SubmissionUncertainError(
            f"a create for {item.key!r} may have been sent by an earlier run and its answer was "
            "lost; not sent again (pass resubmit_uncertain=True to send it, at the risk of "
            "paying twice)",
            request=request,
        )
        self._emit(self._refused(item, request, error))
        return True

    async def _send(self, item: Item, request: ImageToVideo) -> None:
        """Send the create of a request whose cost is reserved, and track its job."""
        cost = request.estimated_cost
        page = item.page

        async def before_send() -> None:
            await page.intent(request, cost)
            item.sending = True

        try:
            # The senders are the engine's own tasks, cancelled only through anyio, whose shield
            # keeps a create that has left from being abandoned: no task of its own is needed.
            record = await self._engine.create(
                request, on_created=page.submitted, before_send=before_send, inline=True
            )
        except SubmissionUncertainError as exc:
            # Maybe charged: the reservation stays, so the cap still counts it.
            await page.uncertain(exc, self._engine)
            self._emit(self._refused(item, request, exc))
            return
        except (APIError, TransportError) as exc:
            await page.refused()  # refused: no job exists
            await self._budget.release(cost)
            self._emit(self._refused(item, request, exc))
            return
        except BaseException:
            if not item.sending:
                # Refused before it could leave (a journal or callback fault, a cancellation):
                # nothing was spent.
                with anyio.CancelScope(shield=True):
                    await self._budget.release(cost)
            raise
        item.tracked = True
        self._waiters.add(item.index, record, item)
        await self._budget.settle(cost, record.amount)
        # A job due at once is asked about here, by its sender: no hand-off to a worker and back.
        await self._engine.query_if_due(record)

    @staticmethod
    def _refused(item: Item, request: ImageToVideo, error: ShortWanError) -> Outcome:
        return Outcome(index=item.index, request=request, key=item.key, error=error)

    def _cap_error(self, request: ImageToVideo) -> SpendLimitError:
        budget = self._budget
        limit, used = budget.limit, budget.committed
        return SpendLimitError(
            f"not sent: ${request.estimated_cost} more would cross the spend cap of ${limit} "
            f"(${used} spent or reserved)",
            limit=limit,
            committed=used,
            cost=request.estimated_cost,
        )
