"""Creates: the paid call, sent so that its job always reaches the table.

Once a create has left, nothing may abandon it: it runs in a task of its own (or, for callers only
anyio can cancel, inline under a shield), and its job enters the table the moment its answer is
read. ``max_in_flight`` slots are held from before the create leaves until the job ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import attrs
from anyio.lowlevel import checkpoint_if_cancelled

from ._aio import wait_through_cancellation
from ._convert import request_args
from ._errors import SubmissionUncertainError
from ._http import Transport
from ._models import ImageToVideo
from ._poller import Poller
from ._table import JobRecord, JobState, JobTable

if TYPE_CHECKING:
    from .callbacks import CallbackReceiver, CallbackTarget

__all__ = ["Creator"]

logger = logging.getLogger("shortwan")


@attrs.define(kw_only=True, eq=False)
class Creator:
    """Sends the creates of one client.

    Attributes:
        transport: sends the create.
        table: where every created job goes.
        poller: starts polling each created job.
        callbacks: the receiver whose token each create carries, if any.
        target: what the receiver hands the callbacks of these creates to (the engine).
        max_in_flight: jobs created and not yet ended, at most (``None``: no limit).
        ensure_running: starts the client's background work, if it has not started yet.
        claimed: awaited once a job is tracked, before its id leaves the create: with a shared
            store, until this worker's claim on the job is written, so that a process which
            hears of the job from the caller finds it claimed.
    """

    _transport: Transport
    _table: JobTable
    _poller: Poller
    _callbacks: CallbackReceiver | None
    _target: CallbackTarget
    _max_in_flight: int | None
    _ensure_running: Callable[[], None]
    _claimed: Callable[[], Awaitable[None]] | None = None
    _slots: anyio.Semaphore | None = attrs.field(init=False, default=None)
    # Creates under way in tasks of their own; close waits for them.
    _creating: set[asyncio.Task[JobRecord]] = attrs.field(init=False, factory=set)
    _closing: bool = attrs.field(init=False, default=False)

    async def close(self) -> asyncio.CancelledError | None:
        """Refuse new creates, then wait for those under way (see :func:`_aio`'s wait).

        Returns:
            a native cancellation that arrived meanwhile, for the caller to raise when done.
        """
        self._closing = True  # no create leaves from here on, not even one waiting for a slot
        return await wait_through_cancellation(self._creating)

    async def create(
        self,
        request: ImageToVideo,
        *,
        on_created: Callable[[JobRecord], Awaitable[None]] | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
        inline: bool = False,
    ) -> JobRecord:
        """Create a job and put it in the table before anything else can fail.

        The create runs in a task of its own, awaited through both an anyio shield and
        :func:`asyncio.shield`: a caller cancelled by anyio gets the record and then its
        cancellation; a caller cancelled natively (``asyncio.timeout``, ``Task.cancel``, a web
        framework dropping a request) is released at once while the create goes on, so a job
        that is paid for always reaches the table. Its own timeouts still bound it.
        ``before_send`` runs once a ``max_in_flight`` slot is held, just before the create
        leaves (a journal writes its intent there); ``on_created`` runs in the create's task as
        soon as the job is in the table (a journal records the id there); if it fails, the job
        is still tracked and its error is raised.

        ``inline=True`` runs the create in the calling task, under the anyio shield alone: for
        callers that only anyio can cancel (the engine's own tasks, such as a batch's senders),
        it saves a task per create. Such a caller learns of a cancellation that came during the
        create at its next wait rather than on return.

        With a shared store, a create waits for the claim on its job's polling to be written
        before it returns the record, so a worker told of the id at once finds it claimed. An
        inline create does not wait: the claim goes out with the next round all the same, and a
        batch's ids reach its caller with the outcomes, once the jobs have ended and their ends
        are published for every worker (or through ``in_flight``, where an id read before its
        claim is written may be polled by another worker too: a query, never a charge). Its
        sender asks about the job meanwhile.
        """
        self._ensure_running()
        self._refuse_if_closing()
        slots = self._slots
        if slots is None and self._max_in_flight is not None:
            slots = self._slots = anyio.Semaphore(self._max_in_flight)
        if slots is not None:
            # Waiting for a slot is cancellable: nothing has been sent yet.
            await slots.acquire()
            try:
                self._refuse_if_closing()  # the slot may have come free because of the close
            except RuntimeError:
                slots.release()
                raise
        token = callback_url = None
        receiver = self._callbacks
        try:
            # Everything that can refuse the create runs before before_send, so a refusal never
            # leaves a journal saying "maybe sent".
            if receiver is not None:
                token, callback_url = receiver.register(self._target, request)
            if before_send is not None:
                await before_send()
            # Last chance to back out: from here the create leaves with no await in between.
            await checkpoint_if_cancelled()
            sending = self._send(
                request,
                on_created=on_created,
                slots=slots,
                token=token,
                callback_url=callback_url,
                wait_for_claim=not inline,
            )
        except BaseException:
            if receiver is not None and token is not None:
                receiver.forget(token)
            if slots is not None:
                slots.release()
            raise
        # From here _send owns the slot and the token, and lets go of them if it fails.
        if inline:
            # An inline caller (an engine task) cancelled meanwhile learns of it at its next
            # wait, where anyio delivers it: the job is in the table already.
            with anyio.CancelScope(shield=True):
                return await sending
        task = asyncio.get_running_loop().create_task(sending)
        self._creating.add(task)
        task.add_done_callback(self._created)
        with anyio.CancelScope(shield=True):
            record = await asyncio.shield(task)
        # A caller cancelled during the shielded create learns of it now; the job stays tracked.
        await checkpoint_if_cancelled()
        return record

    def _refuse_if_closing(self) -> None:
        if self._closing:
            raise RuntimeError("the client was closed; nothing was sent")

    def _created(self, task: asyncio.Task[JobRecord]) -> None:
        self._creating.discard(task)
        if not task.cancelled():
            task.exception()  # seen here, so a caller that left does not leave it unretrieved

    async def _send(
        self,
        request: ImageToVideo,
        *,
        on_created: Callable[[JobRecord], Awaitable[None]] | None,
        slots: anyio.Semaphore | None,
        token: str | None,
        callback_url: str | None,
        wait_for_claim: bool,
    ) -> JobRecord:
        receiver = self._callbacks
        try:
            created = await self._transport.create(
                request.model, request_args(request), callback_url=callback_url
            )
        except BaseException as exc:
            if slots is not None:
                slots.release()
            if isinstance(exc, SubmissionUncertainError):
                exc.request = request
                self._table.note_uncertain()
                if receiver is not None and token is not None:
                    # The job may exist: if the service calls back on this token, adopt it.
                    exc.callback_token = token
                    receiver.keep_uncertain(token)
                logger.warning("create outcome unknown, not resubmitted: %s", exc)
            elif receiver is not None and token is not None:
                receiver.forget(token)
            raise
        record = self._table.add(
            JobRecord(
                id=created.job_id,
                request=request,
                amount=created.amount,
                state=JobState.QUEUED,
                callback=token is not None,
            ),
            created=True,
        )
        if slots is not None:
            # The slot is the job's until it ends (or the client lets go of it).
            record.add_done_callback(lambda _record: slots.release())
        if logger.isEnabledFor(logging.INFO):  # its extra fields cost more than the check
            logger.info(
                "job %s created, charged %s",
                record.id,
                record.amount,
                extra={"job_id": record.id, "amount": str(record.amount)},
            )
        try:
            if on_created is not None:
                await on_created(record)
        finally:
            self._poller.track(record)
            if receiver is not None and token is not None:
                receiver.bind(token, record)
        if wait_for_claim and self._claimed is not None:
            await self._claimed()
        return record
