"""The shared job view: job ends published by any process, read or awaited by any other.

A job end is stored under its id with a time to live (result URLs expire after about a day, so
does the end) and announced on one stream of the namespace. Every process reads that stream once
(:class:`~shortwan.redis._reader.StreamReader`) and wakes its own waiters: there is one reader
per process, not one subscription per waiter.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Final

import anyio
import attrs
from cattrs.preconf.json import make_converter

from .._errors import InvalidRequestError, JobTimeoutError, SharedStateError, ShortWanError
from .._models import check_timeout, job_id_problem
from .._shared import JobEnd
from .._spec import DEFAULT_JOB_TIMEOUT
from ._core import Link, text
from ._lua import Call, Script
from ._reader import Entry, StreamReader

__all__ = ["JobEnd", "JobView"]

logger = logging.getLogger("shortwan")

DEFAULT_END_TTL: Final = 24 * 3600.0
"""How long a published job end is kept: about as long as its result URLs live."""
_STREAM_LENGTH: Final = 10_000

# The first end published for a job is the one kept: a job ends once. KEYS: job, stream, its
# polling claim. ARGV: the end (JSON), its time to live in ms, the job id, the stream's length.
_PUBLISH = Script(
    """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'job', ARGV[3], 'end', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
return 1
"""
)

# KEYS: polling claims. ARGV: the prefix of heartbeat keys, this worker, the claim's ttl in ms.
# A claim held by a live worker stays its; a lapsed one, or one whose worker is gone, is taken.
_CLAIM = Script(
    """
local holders = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder and holder ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. holder) == 1 then
    holders[i] = holder
  else
    redis.call('SET', key, ARGV[2], 'PX', ARGV[3])
    holders[i] = ARGV[2]
  end
end
return holders
"""
)

_converter = make_converter()
_converter.register_unstructure_hook(Decimal, str)
_converter.register_structure_hook(Decimal, lambda value, _: Decimal(value))


def _encode(end: JobEnd) -> str:
    return json.dumps(_converter.unstructure(end), separators=(",", ":"))


def _decode(raw: bytes | str) -> JobEnd:
    try:
        return _converter.structure(json.loads(raw), JobEnd)
    except Exception as exc:  # bad JSON, or cattrs' group of structuring errors
        raise SharedStateError(f"a shared job end could not be read: {exc!r}") from exc


def _check_id(job_id: str) -> str:
    problem = job_id_problem(job_id)
    if problem is not None:
        raise InvalidRequestError([problem])
    return job_id


class JobView:
    """Job ends seen by any process of the namespace: :meth:`publish`, :meth:`get`, :meth:`wait`.

    Args:
        link: the connection it shares.
        reader: the stream reader of the process.
        ttl: seconds a published end is kept.
    """

    def __init__(self, link: Link, reader: StreamReader, *, ttl: float = DEFAULT_END_TTL) -> None:
        self._link = link
        self._reader = reader
        self.ttl = ttl
        self._subscribers: dict[str, list[Callable[[JobEnd], None]]] = {}
        self._listening = False
        # Ids subscribed to since the last look-up: one MGET serves a burst of subscriptions.
        self._to_look_up: set[str] = set()

    def __repr__(self) -> str:
        return f"<JobView namespace={self._link.namespace!r} watched={len(self._subscribers)}>"

    @property
    def watched(self) -> int:
        """How many job ids this process waits for."""
        return len(self._subscribers)

    async def publish(self, end: JobEnd, *, ttl: float | None = None) -> bool:
        """Store ``end`` and announce it; return False if an end was published for it before.

        Raises:
            SharedStateError: Redis could not be reached; nothing was published.
        """
        _check_id(end.job_id)
        keep = self.ttl if ttl is None else ttl
        if not 0 < keep < math.inf:
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        if end.seen_by is None:
            end = attrs.evolve(end, seen_by=self._link.worker_id)
        keys = self._link.keys
        first = await self._link.run(
            _PUBLISH,
            (keys.job(end.job_id), keys.ends, keys.polling(end.job_id)),
            (_encode(end), max(1, int(keep * 1000)), end.job_id, _STREAM_LENGTH),
        )
        return bool(first)

    async def publish_many(self, ends: Sequence[JobEnd]) -> list[bool]:
        """Publish several ends in one round trip (see :meth:`publish`); say which were first.

        Raises:
            SharedStateError: Redis could not be reached; some of them may have been published
                (publishing one again changes nothing).
        """
        keys = self._link.keys
        calls: list[Call] = []
        for given in ends:
            job_id = _check_id(given.job_id)
            end = given if given.seen_by else attrs.evolve(given, seen_by=self._link.worker_id)
            calls.append(
                (
                    _PUBLISH,
                    (keys.job(job_id), keys.ends, keys.polling(job_id)),
                    (_encode(end), max(1, int(self.ttl * 1000)), job_id, _STREAM_LENGTH),
                )
            )
        if not calls:
            return []
        firsts = await self._link.run_many(calls)
        for first in firsts:
            if isinstance(first, SharedStateError):
                raise first
        return [bool(first) for first in firsts]

    async def get(self, job_id: str) -> JobEnd | None:
        """Return the published end of ``job_id``, ``None`` if no process published one.

        Raises:
            SharedStateError: Redis could not be reached, or holds an end it cannot read.
        """
        key = self._link.keys.job(_check_id(job_id))
        raw = await self._link.call(lambda: self._link.redis.get(key))
        return None if raw is None else _decode(raw)

    async def get_many(self, job_ids: Sequence[str]) -> dict[str, JobEnd]:
        """Return the published ends of those of ``job_ids`` that have one, in one round trip.

        An end that cannot be read is left out (and logged), as if none were published.

        Raises:
            SharedStateError: Redis could not be reached.
        """
        ids = [_check_id(job_id) for job_id in job_ids]
        if not ids:
            return {}
        keys = [self._link.keys.job(job_id) for job_id in ids]
        values = await self._link.call(lambda: self._link.redis.mget(keys))
        found: dict[str, JobEnd] = {}
        for job_id, raw in zip(ids, values, strict=True):
            if raw is None:
                continue
            try:
                found[job_id] = _decode(raw)
            except SharedStateError:
                logger.warning("the shared end of job %s cannot be read", job_id)
        return found

    async def ttl_of(self, job_id: str) -> float | None:
        """Return the seconds the end of ``job_id`` is still kept, ``None`` if there is none."""
        key = self._link.keys.job(_check_id(job_id))
        left = await self._link.call(lambda: self._link.redis.pttl(key))
        return None if left < 0 else left / 1000

    async def claim(self, job_ids: Sequence[str], *, ttl: float) -> dict[str, str]:
        """Claim the polling of ``job_ids`` for ``ttl`` seconds; return who polls each one.

        A job another live worker has claimed stays its (poll it rarely, and wait on its end);
        the others become this worker's, or stay so: claim again before ``ttl`` runs out. A
        claim whose worker is gone passes on; a published end drops the claim.
        """
        if not 0 < ttl < math.inf:
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        ids = [_check_id(job_id) for job_id in job_ids]
        if not ids:
            return {}
        keys = self._link.keys
        holders = await self._link.run(
            _CLAIM,
            [keys.polling(job_id) for job_id in ids],
            (keys.worker(""), self._link.worker_id, max(1, int(ttl * 1000))),
        )
        return {job_id: text(holder) for job_id, holder in zip(ids, holders, strict=True)}

    def subscribe(self, job_id: str, callback: Callable[[JobEnd], None]) -> Callable[[], None]:
        """Call ``callback(end)`` when any process publishes the end of ``job_id``.

        The callback runs in the event loop, at most once. An end published before is found
        too. A Redis outage only delays it. Returns a function that cancels the subscription.
        """
        _check_id(job_id)
        done = False

        def once(end: JobEnd) -> None:
            nonlocal done
            if not done:
                done = True
                cancel()
                callback(end)

        def cancel() -> None:
            callbacks = self._subscribers.get(job_id)
            if callbacks is not None and once in callbacks:
                callbacks.remove(once)
                if not callbacks:
                    del self._subscribers[job_id]

        self._subscribers.setdefault(job_id, []).append(once)
        if not self._listening:
            self._listening = True
            self._reader.listen(
                self._link.keys.ends, self._on_entries, from_now=True, armed=self._look_up_all
            )
        if not self._to_look_up:
            self._link.spawn(self._look_up_new)
        self._to_look_up.add(job_id)
        return cancel

    async def wait(self, job_id: str, *, timeout: float | None = DEFAULT_JOB_TIMEOUT) -> JobEnd:
        """Wait until any process publishes the end of ``job_id`` and return it.

        Args:
            job_id: the job.
            timeout: seconds to wait; ``None`` waits without a limit.

        Raises:
            JobTimeoutError: no end was published in time (the job may still end).
        """
        timeout = check_timeout(timeout)
        found: list[JobEnd] = []
        event = anyio.Event()

        def take(end: JobEnd) -> None:
            found.append(end)
            event.set()

        cancel = self.subscribe(job_id, take)
        try:
            with anyio.move_on_after(math.inf if timeout is None else timeout):
                await event.wait()
        finally:
            cancel()
        if not found:
            raise JobTimeoutError(
                f"no process published the end of job {job_id} within {timeout} s",
                job_id=job_id,
            )
        return found[0]

    # --- the reader's side ---------------------------------------------------------------------

    def _deliver(self, end: JobEnd) -> None:
        for callback in list(self._subscribers.get(end.job_id, ())):
            try:
                callback(end)
            except Exception:
                logger.exception("a job end subscriber failed", extra={"job_id": end.job_id})

    def _on_entries(self, entries: list[Entry]) -> None:
        for _entry_id, fields in entries:
            job_id = fields.get(b"job", b"").decode(errors="replace")
            if job_id not in self._subscribers:
                continue  # most ends are of jobs nobody here waits for: not even decoded
            try:
                end = _decode(fields[b"end"])
            except (SharedStateError, KeyError):
                logger.warning("an unreadable job end was announced", extra={"job_id": job_id})
                continue
            self._deliver(end)

    async def _look_up_all(self) -> None:
        await self._look_up(list(self._subscribers))

    async def _look_up_new(self) -> None:
        await self._reader.ready()
        ids, self._to_look_up = list(self._to_look_up), set()
        await self._look_up(ids)

    async def _look_up(self, job_ids: Iterable[str]) -> None:
        # The reader must be reading before the look-up, so that an end published between the
        # two is seen by one or the other.
        await self._reader.ready()
        ids = [job_id for job_id in job_ids if job_id in self._subscribers]
        if not ids:
            return
        keys = [self._link.keys.job(job_id) for job_id in ids]
        try:
            values = await self._link.call(lambda: self._link.redis.mget(keys))
        except SharedStateError:
            return  # looked up again when the reader is armed after the outage
        for raw in values:
            if raw is None:
                continue
            try:
                end = _decode(raw)
            except ShortWanError:
                continue
            self._deliver(end)
