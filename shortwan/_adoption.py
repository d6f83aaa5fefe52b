"""Adoption: the job of a create whose answer was lost, found again through its callback.

The callback is only a hint (it is not signed), so the job is confirmed by one query first, and
only a job the client does not know yet is taken: a forged callback cannot hand one caller's job
to another. Whoever waits to hear of the adoption (a batch's journal) is told once it happens.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs

from ._errors import ShortWanError
from ._models import ImageToVideo, JobSnapshot
from ._poller import Poller
from ._table import JobRecord, JobState, JobTable

if TYPE_CHECKING:
    from .callbacks import CallbackReceiver

__all__ = ["Adoptions"]

logger = logging.getLogger("shortwan")

AdoptionHook = Callable[[JobRecord], Awaitable[None]]
StartSoon = Callable[..., None]
"""Runs ``func(*args)``, a coroutine function, in the client's task group."""

# Adoptions nobody asked to hear of are kept for a late ask, up to this many.
_MAX_EARLY = 1024


@attrs.define(kw_only=True, eq=False)
class Adoptions:
    """The adoptions of one client.

    Attributes:
        table: where an adopted job goes.
        poller: takes the confirming answer and polls the job from there.
        query: asks the service about a job once.
        callbacks: the receiver the lost creates' tokens live in.
        start_soon: runs a coroutine function in the client's task group (does nothing once the
            client is closing).
    """

    _table: JobTable
    _poller: Poller
    _query: Callable[[str], Awaitable[JobSnapshot]]
    _callbacks: CallbackReceiver | None
    _start_soon: StartSoon
    _hooks: dict[str, AdoptionHook] = attrs.field(init=False, factory=dict)
    # Adoptions that came before anyone asked to hear of them (see on_adoption).
    _early: dict[str, JobRecord] = attrs.field(init=False, factory=dict)

    def clear(self) -> None:
        """Forget every hook and early adoption: the client is closing."""
        self._hooks.clear()
        self._early.clear()

    def adopt(self, job_id: str, request: ImageToVideo, token: str) -> None:
        """Take over the job a lost create made, once a query confirms it exists."""
        self._start_soon(self._adopt, job_id, request, token)

    def on_adoption(self, token: str, hook: AdoptionHook) -> None:
        """Run ``hook(record)`` once the lost create behind ``token`` is adopted (or now)."""
        record = self._early.pop(token, None)
        if record is None:
            self._hooks[token] = hook
            return
        adopted = record

        async def run_hook() -> None:
            await hook(adopted)

        self._start_soon(run_hook)

    async def _adopt(self, job_id: str, request: ImageToVideo, token: str) -> None:
        receiver = self._callbacks
        assert receiver is not None  # noqa: S101 - only reached through a receiver
        try:
            snapshot = await self._query(job_id)
        except ShortWanError as exc:
            logger.warning(
                "a callback named job %s for a lost create, but it could not be confirmed: %s",
                job_id,
                exc,
                extra={"job_id": job_id},
            )
            receiver.keep_uncertain(token)
            return
        if job_id in self._table:
            # Already known: a forged callback cannot hand us another caller's job. The token
            # keeps listening, in case the real callback of the lost create is still to come.
            receiver.keep_uncertain(token)
            return
        record = self._table.add(
            JobRecord(
                id=job_id,
                request=request,
                amount=snapshot.credit,
                state=JobState.QUEUED,
                callback=True,
            ),
            created=True,
        )
        self._table.note_adopted()
        logger.warning(
            "adopted job %s: its create's answer was lost, its callback found it",
            job_id,
            extra={"job_id": job_id},
        )
        receiver.bind(token, record)
        self._poller.apply(record, snapshot)
        hook = self._hooks.pop(token, None)
        if hook is not None:
            await hook(record)
        else:
            self._early[token] = record
            if len(self._early) > _MAX_EARLY:  # callers that never ask must not grow it
                del self._early[next(iter(self._early))]
