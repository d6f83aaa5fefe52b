"""The client's side of a shared store: job ends both ways, polling claims, the shared cap.

With ``AsyncShortWan(shared=...)`` every job end this client learns from the service is published,
a job attached by id is first looked up among the ends other processes published, and a job is
polled here only if no other live worker polls it: before polling, this worker claims the job,
and a job another worker holds is only asked about at the slow safety-net interval while its end
is awaited through the store's one subscription per process.

One task of the engine talks to the store for all of this, in batches (one look-up, one claim and
one round of publishes for everything that came in meanwhile), so sharing adds a few round trips
per burst of jobs, not per job. While the store is unreachable nothing waits on it: attached jobs
are polled here, claims are skipped, and job ends are kept (up to ``_KEEP_ENDS``) and published
once it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Final

import anyio
import attrs

from ._errors import SharedStateError
from ._models import JobSnapshot
from ._poller import Poller
from ._shared import JobEnd, SharedStore
from ._spend import SpendCounter
from ._table import JobRecord, JobState, JobTable

__all__ = ["Sharing", "SharingStatistics"]

logger = logging.getLogger("shortwan")

# Ids per claim call: one script call stays short on the server.
_CLAIM_BATCH: Final = 1000
# Ends per round trip when publishing.
_PUBLISH_BATCH: Final = 256
# After a wake-up, the task waits this long for more work, so that a burst of jobs (many ends,
# many new jobs to claim) goes out in one round trip rather than one each. Nothing waits on it:
# the jobs are polled meanwhile, and other processes hear of an end this much later.
_GATHER: Final = 0.01
# The longest a create waits for its claim to be written before its id is handed out: a store
# that answers slowly delays creates by this much at most (their jobs are polled meanwhile).
_CLAIM_WAIT: Final = 1.0
# The longest the task sleeps between two looks at the store's state.
_LOOK: Final = 1.0
# Ends kept while the store is unreachable; past this, the oldest are dropped (they are then only
# found by other processes' own queries).
_KEEP_ENDS: Final = 10_000


@attrs.define
class _ClaimsRound:
    """The claims asked for since the last were written: their creates wait for it to end."""

    done: asyncio.Event
    timer: asyncio.TimerHandle

    @classmethod
    def start(cls) -> _ClaimsRound:
        """Begin a round; it ends by itself after _CLAIM_WAIT if the store has not answered."""
        done = asyncio.Event()
        return cls(done, asyncio.get_running_loop().call_later(_CLAIM_WAIT, done.set))

    def end(self) -> None:
        """Let the creates waiting for these claims go on."""
        self.timer.cancel()
        self.done.set()


@attrs.frozen(kw_only=True)
class SharingStatistics:
    """A snapshot of what a client shared through its store (``ClientStatistics.shared``).

    Attributes:
        published: job ends this client published.
        unpublished: job ends waiting for the store to answer again.
        dropped: job ends seen during an outage and never published (too many were waiting).
        from_elsewhere: jobs that ended here on an end another process published (no query).
        polled_elsewhere: jobs tracked here that another live worker polls, now.
    """

    published: int
    unpublished: int
    dropped: int
    from_elsewhere: int
    polled_elsewhere: int


class Sharing:
    """What one client shares through a :class:`~shortwan._shared.SharedStore`.

    Args:
        store: the shared store (borrowed: never closed here).
        table: the client's job table.
        poller: the client's poller; jobs are scheduled on it once their claim is known.
        apply_end: takes an end another process published as the end of a record.
    """

    def __init__(
        self,
        store: SharedStore,
        *,
        table: JobTable,
        poller: Poller,
        apply_end: Callable[[JobRecord, JobEnd], None],
    ) -> None:
        self.store = store
        self._jobs = store.jobs
        self._table = table
        self._poller = poller
        self._apply_end = apply_end
        # A claim outlives two heartbeats, and is renewed every third of it: a worker that dies
        # loses its jobs to the others within about one heartbeat and a renewal.
        self._ttl = 2.0 * store.heartbeat
        self._watching: list[JobRecord] = []
        self._claiming: list[JobRecord] = []
        # The claims asked for since the last round went out: one event and one timer for all
        # the creates waiting on them, not one per create.
        self._claims: _ClaimsRound | None = None
        self._ends: deque[JobEnd] = deque()
        # Jobs another worker polls: id → the record and the cancel of the subscription to its end.
        self._elsewhere: dict[str, tuple[JobRecord, Callable[[], None]]] = {}
        self._counters: dict[Decimal, SpendCounter] = {}
        self._wake: asyncio.Event | None = None
        self._publishing = anyio.Lock()
        self._in_outage = False
        self._published = 0
        self._dropped = 0
        self._from_elsewhere = 0

    def statistics(self) -> SharingStatistics:
        """Return a snapshot of the figures; later changes do not touch it."""
        return SharingStatistics(
            published=self._published,
            unpublished=len(self._ends),
            dropped=self._dropped,
            from_elsewhere=self._from_elsewhere,
            polled_elsewhere=len(self._elsewhere),
        )

    async def spend_counter(self, limit: Decimal) -> SpendCounter:
        """Return the store's default spend counter with the cap ``limit`` (one per cap)."""
        counter = self._counters.get(limit)
        if counter is None:
            counter = self._counters[limit] = await self.store.spend_counter(limit)
        return counter

    # --- what the engine and the poller tell it ------------------------------------------------

    def watch(self, record: JobRecord) -> None:
        """Start on a job attached by id: its end may be published, or another worker polls it."""
        if not self.store.online:
            self._poller.schedule(record, 0.0)  # nothing to ask the store: ask the service
            return
        self._watching.append(record)
        self._poke()

    def created(self, record: JobRecord) -> None:
        """Claim the polling of a job this client made (its polling starts meanwhile)."""
        if self.store.online:
            self._claiming.append(record)
            if self._claims is None:
                self._claims = _ClaimsRound.start()
            self._poke()

    async def claimed(self) -> None:
        """Wait until the claims of the jobs created so far are written (or cannot be).

        A create awaits this before handing out its job's id: another worker told of the job at
        once (a web backend's next request) then finds it claimed, and leaves its polling here.
        """
        claims = self._claims
        if claims is not None:
            await claims.done.wait()  # set within _CLAIM_WAIT in any case

    def _end_claims_round(self) -> None:
        claims, self._claims = self._claims, None
        if claims is not None:
            claims.end()

    def ended(self, record: JobRecord) -> None:
        """Publish the end of ``record``, which the service just reported."""
        self._bring_back(record)
        # Signed here: publishing an end that is not costs a copy of it.
        self._keep(JobEnd.from_record(record, seen_by=self.store.worker_id))

    def saw(self, snapshot: JobSnapshot) -> None:
        """Publish the end a query reported about a job that may not be tracked here."""
        self._keep(JobEnd.from_snapshot(snapshot, seen_by=self.store.worker_id))

    async def find(self, job_id: str) -> JobEnd | None:
        """Return the end some process published for ``job_id``; ``None`` if none, or offline."""
        if not self.store.online or self.store.closed:
            return None
        try:
            return (await self._jobs.get_many([job_id])).get(job_id)
        except SharedStateError:
            return None

    def _keep(self, end: JobEnd) -> None:
        if len(self._ends) >= _KEEP_ENDS:
            self._ends.popleft()
            self._dropped += 1
        self._ends.append(end)
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # --- the task that talks to the store -------------------------------------------------------

    async def run(self) -> None:
        """Talk to the store until cancelled: look-ups, claims, renewals, publishes."""
        self._wake = wake = asyncio.Event()
        wake.set()
        renew_at = time.monotonic() + self._ttl / 3
        while True:
            # Awake at least every _LOOK seconds: a store closed or lost under the client is
            # noticed soon, not at the next renewal.
            with anyio.move_on_after(max(0.0, min(renew_at - time.monotonic(), _LOOK))):
                await wake.wait()
            await anyio.sleep(_GATHER)
            wake.clear()
            if self.store.closed:
                self._go_local()
                for record, _cancel in list(self._elsewhere.values()):
                    self._bring_back(record)  # nobody will tell this client of their ends now
                    self._poller.schedule(record, 0.0)
                logger.warning("the shared state was closed; this client goes on alone")
                return
            if not self.store.online:
                self._outage("the server does not answer")
                await self.store.wait_online()
                wake.set()  # what was kept goes out at once
                continue
            try:
                await self._flush()
                if time.monotonic() >= renew_at:
                    renew_at = time.monotonic() + self._ttl / 3
                    await self._claim(
                        [r for r in self._table.pending() if r.state is not JobState.DETACHED]
                    )
            except SharedStateError as exc:
                self._outage(str(exc))
                if self._gone():
                    wake.set()  # straight to waiting for it to come back
            except RuntimeError:
                if not self._gone():
                    raise
                wake.set()  # closed under us: the next round says so and stops

    def _gone(self) -> bool:
        # A method, not an inline test: the store's state changes under every await.
        return self.store.closed or not self.store.online

    async def _flush(self) -> None:
        if self._watching:
            records, self._watching = self._watching, []
            await self._look_up(records)
        if self._claiming:
            records, self._claiming = self._claiming, []
            claims, self._claims = self._claims, None
            try:
                await self._claim(records)
            finally:
                if claims is not None:
                    claims.end()
        await self._publish()
        if self._in_outage:
            self._in_outage = False
            logger.info("shared state reachable again: job ends are published, jobs claimed")

    async def _publish(self) -> None:
        # The ends kept when it starts; those that come meanwhile wait for the next round, and
        # go out together.
        async with self._publishing:
            ends = self._ends
            left = len(ends)
            while left and ends:
                batch = [ends[i] for i in range(min(len(ends), left, _PUBLISH_BATCH))]
                await self._jobs.publish_many(batch)
                # Taken off only once sent: after a failure they are sent again (a second
                # publish of an end changes nothing).
                for _ in batch:
                    ends.popleft()
                self._published += len(batch)
                left -= len(batch)

    async def _look_up(self, records: list[JobRecord]) -> None:
        live = [r for r in records if r.is_live]
        if not live:
            return
        try:
            found = await self._jobs.get_many([r.id for r in live])
        except SharedStateError:
            for record in live:
                self._poller.schedule(record, 0.0)
            raise
        rest = []
        for record in live:
            end = found.get(record.id)
            if end is None:
                rest.append(record)
            else:
                self._from_elsewhere += 1
                self._apply_end(record, end)
        await self._claim(rest, attached=True)

    async def _claim(self, records: list[JobRecord], *, attached: bool = False) -> None:
        """Claim ``records`` and act on who holds each; attached ones are scheduled here."""
        live = [r for r in records if r.is_live]
        for start in range(0, len(live), _CLAIM_BATCH):
            chunk = live[start : start + _CLAIM_BATCH]
            try:
                holders = await self._jobs.claim([r.id for r in chunk], ttl=self._ttl)
            except SharedStateError:
                if attached:
                    for record in live[start:]:
                        self._poller.schedule(record, 0.0)
                raise
            self._take(chunk, holders, attached=attached)

    def _take(self, records: list[JobRecord], holders: dict[str, str], *, attached: bool) -> None:
        me = self.store.worker_id
        for record in records:
            if not record.is_live:
                continue
            if holders.get(record.id, me) == me:
                if record.elsewhere:
                    # Its poller is gone (or its claim lapsed): this worker takes over, now.
                    self._bring_back(record)
                    self._poller.schedule(record, 0.0)
                elif attached:
                    self._poller.schedule(record, 0.0)
            elif not record.elsewhere:
                self._subscribe(record)  # first: a store closed meanwhile leaves it polled here
                record.elsewhere = True
                self._poller.defer(record, self._poller.policy.callback_interval)

    def _subscribe(self, record: JobRecord) -> None:
        def arrived(end: JobEnd) -> None:
            self._elsewhere.pop(record.id, None)
            if record.is_live:
                self._from_elsewhere += 1
                self._apply_end(record, end)

        self._elsewhere[record.id] = (record, self._jobs.subscribe(record.id, arrived))

    def _bring_back(self, record: JobRecord) -> None:
        # Polled here again (it ended here, its poller left, or the store did): no subscription.
        record.elsewhere = False
        held = self._elsewhere.pop(record.id, None)
        if held is not None:
            held[1]()

    def _go_local(self) -> None:
        # Attached jobs waiting for a look-up are asked about here; claims wait for the renewal
        # after the outage; ends stay queued.
        records, self._watching = self._watching, []
        for record in records:
            if record.is_live:
                self._poller.schedule(record, 0.0)
        self._claiming.clear()
        self._end_claims_round()  # the creates waiting for their claims go on without

    def _outage(self, why: str) -> None:
        self._go_local()
        if not self._in_outage:
            # One warning per outage, however many jobs end during it.
            self._in_outage = True
            logger.warning(
                "shared state unreachable (%s): job ends are kept until it is back (%d now), "
                "jobs are polled here meanwhile",
                why,
                len(self._ends),
            )

    async def drain(self, timeout: float) -> None:
        """Publish the ends still kept, for at most ``timeout`` seconds (the client is closing)."""
        if not self._ends or not self.store.online or self.store.closed:
            return
        with anyio.move_on_after(timeout, shield=True):
            try:
                await self._publish()
            except SharedStateError as exc:
                logger.warning("%d job ends were not published: %s", len(self._ends), exc)

    def close(self) -> None:
        """Drop every subscription and queue: the client is closed."""
        for _record, cancel in self._elsewhere.values():
            cancel()
        self._elsewhere.clear()
        self._watching.clear()
        self._claiming.clear()
        self._end_claims_round()
