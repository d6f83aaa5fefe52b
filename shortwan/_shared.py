"""The seam to state shared by processes: how a job ended, and what a shared store offers.

The core never imports ``shortwan.redis`` (an extra). It speaks to it through the small protocols
here, as it speaks to a shared cap through :class:`~shortwan.SpendCounter`: a
:class:`shortwan.redis.SharedState` is a :class:`SharedStore`. :class:`JobEnd` is the value that
crosses the seam, so both sides build and read it the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Literal, Protocol

import attrs

from ._errors import JobFailedError
from ._models import JobSnapshot, JobStatus, Video
from ._spend import SpendCounter
from ._table import JobRecord

__all__ = ["JobEnd", "SharedJobs", "SharedStore"]


@attrs.frozen(kw_only=True)
class JobEnd:
    """How a job ended, as the process that saw it publishes it.

    Attributes:
        job_id: the job.
        state: ``"succeeded"`` or ``"failed"``.
        status: the raw status number the service reported last.
        amount: what the job was charged, when known.
        urls: the result URLs of a succeeded job.
        error_type: the class name of the error of a failed job (``JobFailedError``, ...).
        error: its text.
        refunded: whether the charge of a failed job was returned.
        seen_by: the worker that published it.
    """

    job_id: str
    state: str
    status: int | None = None
    amount: Decimal | None = None
    urls: tuple[str, ...] = ()
    error_type: str | None = None
    error: str | None = None
    refunded: bool | None = None
    seen_by: str | None = None

    @property
    def url(self) -> str | None:
        """The first result URL, if the job succeeded."""
        return self.urls[0] if self.urls else None

    @property
    def succeeded(self) -> bool:
        """Whether the job made its video."""
        return self.state == "succeeded" and bool(self.urls)

    def video(self) -> Video | None:
        """Return the job's video, or ``None`` for a failed job."""
        if not self.succeeded:
            return None
        return Video(job_id=self.job_id, url=self.urls[0], urls=self.urls, credit=self.amount)

    def failure(self) -> JobFailedError | None:
        """Return the error a failed job ended with, ``None`` for one that succeeded."""
        if self.succeeded:
            return None
        return JobFailedError(self.job_id, self.error, refunded=self.refunded, status=self.status)

    def snapshot(self) -> JobSnapshot:
        """Return the end as the answer a query about the job would have given.

        Only what an end keeps is there: status, URLs, error, refund and charge. The fields the
        service echoes (model, arguments, timestamps) are ``None``.
        """
        raw = self.status
        if raw is None or raw < JobStatus.SUCCEEDED:
            raw = JobStatus.SUCCEEDED if self.state == "succeeded" else JobStatus.FAILED
        return JobSnapshot(
            id=self.job_id,
            status=JobStatus.from_raw(raw),
            raw_status=raw,
            urls=self.urls,
            error=self.error,
            refunded=self.refunded,
            credit=self.amount,
        )

    @classmethod
    def from_snapshot(cls, snapshot: JobSnapshot, *, seen_by: str | None = None) -> JobEnd:
        """Describe the end a query answer reports.

        Raises:
            ValueError: the answer says the job has not ended.
        """
        if not snapshot.is_terminal:
            raise ValueError(f"job {snapshot.id} has not ended (status {snapshot.raw_status})")
        video = snapshot.video
        return cls(
            job_id=snapshot.id,
            state="succeeded" if video is not None else "failed",
            status=snapshot.raw_status,
            amount=snapshot.credit,
            urls=() if video is None else video.urls,
            error_type=None if video is not None else "JobFailedError",
            error=snapshot.error,
            refunded=snapshot.refunded,
            seen_by=seen_by,
        )

    @classmethod
    def from_record(cls, record: JobRecord, *, seen_by: str | None = None) -> JobEnd:
        """Describe a finished job of the job table.

        Raises:
            ValueError: the job has not ended.
        """
        if not record.is_terminal:
            raise ValueError(f"job {record.id} has not ended ({record.state.value})")
        video = record.video
        snapshot = record.snapshot
        error = record.error
        return cls(
            job_id=record.id,
            state=record.state.value,
            status=record.raw_status if record.raw_status >= 0 else None,
            amount=record.amount,
            urls=() if video is None else (video.urls or (video.url,)),
            error_type=None if error is None else type(error).__name__,
            error=None
            if error is None
            else (error.reason if isinstance(error, JobFailedError) else str(error)),
            refunded=None if snapshot is None else snapshot.refunded,
            seen_by=seen_by,
        )


class SharedJobs(Protocol):
    """Job ends seen by any process (``shortwan.redis.JobView``), and who polls which job."""

    async def publish_many(self, ends: Sequence[JobEnd]) -> list[bool]:
        """Store and announce ``ends`` in one go; say for each whether it was the first."""

    async def get_many(self, job_ids: Sequence[str]) -> dict[str, JobEnd]:
        """Return the published ends of those of ``job_ids`` that have one."""

    def subscribe(self, job_id: str, callback: Callable[[JobEnd], None]) -> Callable[[], None]:
        """Call ``callback(end)`` once any process publishes the end; return the cancel."""

    async def claim(self, job_ids: Sequence[str], *, ttl: float) -> dict[str, str]:
        """Claim the polling of ``job_ids`` for ``ttl`` seconds; return who polls each one."""


class SharedStore(Protocol):
    """State shared by processes, as the client uses it (``shortwan.redis.SharedState``).

    Every call may raise :class:`~shortwan.SharedStateError` while the store is unreachable.
    """

    @property
    def worker_id(self) -> str:
        """This process's name among the workers."""

    @property
    def online(self) -> bool:
        """Whether the store answered the last call made to it."""

    @property
    def closed(self) -> bool:
        """Whether the store was closed (it then refuses every call)."""

    @property
    def heartbeat(self) -> float:
        """Seconds a worker counts as alive after its last heartbeat."""

    @property
    def jobs(self) -> SharedJobs:
        """The shared job view."""

    async def wait_online(self) -> None:
        """Return once the store is reachable again (at once if it is)."""

    async def spend_counter(
        self,
        limit: Decimal,
        *,
        name: str = "default",
        window: Literal["day", "month"] | None = None,
    ) -> SpendCounter:
        """Open the spend counter ``name`` with the cap ``limit``, shared by every process."""
