"""The callback token registry: which worker owns a token, forwarding to it, and its liveness.

A callback may land on any worker of a web backend. The registry maps each token's SHA-256 digest
(never the token) to the worker that made it and to what it stands for: a create under way, the
job it made, or a create whose answer was lost. A worker that gets a callback for a token it does
not hold looks it up, and forwards the body to the owner's inbox (a stream per worker), or, when
the owner's heartbeat has lapsed, handles the callback itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Final, Literal

import attrs
from redis.typing import EncodableT

from .._callback_shared import Registration, Route
from .._callback_wire import UNCERTAIN_TTL
from .._callback_wire import digest as _digest
from .._errors import SharedStateError
from ._core import Link, text
from ._lua import Script
from ._reader import Entry, StreamReader

__all__ = ["Forwarded", "TokenEntry", "TokenRegistry"]

logger = logging.getLogger("shortwan")

PENDING_TTL: Final = 15 * 60.0
"""How long a create under way holds its token: far beyond a create's own timeouts."""
JOB_TTL: Final = 24 * 3600.0
"""How long the token of a created job is kept: late and repeated callbacks still find it."""
_INBOX_TTL: Final = 3600.0
_INBOX_LENGTH: Final = 10_000

TokenKind = Literal["pending", "job", "uncertain"]
_TTL: Final[dict[str, float]] = {"pending": PENDING_TTL, "job": JOB_TTL, "uncertain": UNCERTAIN_TTL}

# KEYS: the token. ARGV: the prefix of heartbeat keys.
_LOOKUP = Script(
    """
local found = redis.call('HMGET', KEYS[1], 'owner', 'kind', 'job')
if not found[1] then return false end
found[4] = redis.call('EXISTS', ARGV[1] .. found[1])
return found
"""
)

# Forward only to a live owner. KEYS: its heartbeat, its inbox. ARGV: digest, sender, inbox
# length, inbox ttl in ms, then the body ('' and a flag 0 for a body that was too large).
_FORWARD = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'digest', ARGV[1], 'from', ARGV[2],
  'has_body', ARGV[6], 'body', ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""
)

# Route a callback for a token the receiving worker does not hold, in one round trip. KEYS: the
# token. ARGV: heartbeat prefix, inbox prefix, this worker, whether it may take the token over,
# digest, body, has-body flag, inbox length, inbox ttl in ms. A live owner gets the body in its
# inbox; a token whose owner is gone becomes this worker's, atomically, so two workers that get
# duplicates of one callback do not both take it.
_ROUTE = Script(
    """
local found = redis.call('HMGET', KEYS[1], 'owner', 'kind', 'job')
local owner = found[1]
if not owner then return false end
local kind = found[2] or 'pending'
local job = found[3] or ''
if owner == ARGV[3] then return {'held', kind, job} end
if redis.call('EXISTS', ARGV[1] .. owner) == 1 then
  local inbox = ARGV[2] .. owner
  redis.call('XADD', inbox, 'MAXLEN', '~', ARGV[8], '*', 'digest', ARGV[5], 'from', ARGV[3],
    'has_body', ARGV[7], 'body', ARGV[6], 'kind', kind, 'job', job)
  redis.call('PEXPIRE', inbox, ARGV[9])
  return {'forwarded', kind, job}
end
if ARGV[4] ~= '1' then return {'orphaned', kind, job} end
redis.call('HSET', KEYS[1], 'owner', ARGV[3])
return {'taken', kind, job}
"""
)


@attrs.frozen(kw_only=True)
class TokenEntry:
    """What the registry knows of one token.

    Attributes:
        owner: the worker that made the token (and whose client waits on it).
        kind: ``"pending"`` (its create is under way), ``"job"`` (its create made ``job_id``) or
            ``"uncertain"`` (its create's answer was lost; a callback would adopt the job).
        job_id: the job, for ``"job"``.
        owner_alive: whether the owner's heartbeat was fresh when looked up.
    """

    owner: str
    kind: str
    job_id: str | None
    owner_alive: bool


@attrs.frozen(kw_only=True)
class Forwarded:
    """A callback another worker received for a token this worker holds.

    Attributes:
        digest: the SHA-256 digest of the token (the token itself never leaves its worker).
        body: the callback's body, ``None`` when it was too large to be read.
        sender: the worker that received it.
        kind: what the registry said the token stood for, when the sender routed it there.
        job_id: the job the registry tied the token to, if any.
    """

    digest: bytes
    body: bytes | None
    sender: str
    kind: str | None = None
    job_id: str | None = None


class TokenRegistry:
    """Callback tokens of every worker of the namespace.

    The owner writes (:meth:`hold`, :meth:`bind`, :meth:`uncertain`, :meth:`forget`); any worker
    reads (:meth:`lookup`) and forwards (:meth:`forward`); the owner takes what was forwarded to
    it through :meth:`on_forwarded`.
    """

    def __init__(self, link: Link, reader: StreamReader) -> None:
        self._link = link
        self._reader = reader
        self._handler: Callable[[Forwarded], None] | None = None

    def __repr__(self) -> str:
        return f"<TokenRegistry namespace={self._link.namespace!r} worker={self._link.worker_id!r}>"

    async def hold(
        self,
        token: str,
        *,
        kind: TokenKind = "pending",
        job_id: str | None = None,
        ttl: float | None = None,
    ) -> None:
        """Record that this worker holds ``token``, for a create under way by default.

        Raises:
            SharedStateError: Redis could not be reached.
        """
        if kind not in _TTL:
            raise ValueError(f"kind must be pending, job or uncertain, got {kind!r}")
        if kind == "job" and not job_id:
            raise ValueError("a token of kind 'job' needs its job_id")
        keep = _TTL[kind] if ttl is None else ttl
        if not 0 < keep < math.inf:
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        key = self._link.keys.token(_digest(token))
        fields: dict[EncodableT, EncodableT] = {
            "owner": self._link.worker_id,
            "kind": kind,
            "job": job_id or "",
        }

        async def write() -> None:
            async with self._link.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.pexpire(key, max(1, int(keep * 1000)))
                await pipe.execute()

        await self._link.call(write)

    async def bind(self, token: str, job_id: str) -> None:
        """Record that the create of ``token`` made ``job_id``."""
        await self.hold(token, kind="job", job_id=job_id)

    async def uncertain(self, token: str) -> None:
        """Record that the create of ``token`` lost its answer: its callback would adopt the job."""
        await self.hold(token, kind="uncertain")

    async def forget(self, token: str) -> None:
        """Drop ``token`` from the registry."""
        key = self._link.keys.token(_digest(token))
        await self._link.call(lambda: self._link.redis.delete(key))

    async def lookup(self, token: str) -> TokenEntry | None:
        """Return what ``token`` stands for, ``None`` if no live registration has it."""
        keys = self._link.keys
        found = await self._link.run(_LOOKUP, (keys.token(_digest(token)),), (keys.worker(""),))
        if not found:
            return None
        owner, kind, job, alive = found
        return TokenEntry(
            owner=owner.decode(),
            kind=kind.decode() if kind else "pending",
            job_id=job.decode() if job else None,
            owner_alive=bool(alive),
        )

    async def alive(self, worker_id: str) -> bool:
        """Return whether the heartbeat of ``worker_id`` is fresh."""
        key = self._link.keys.worker(worker_id)
        return bool(await self._link.call(lambda: self._link.redis.exists(key)))

    async def forward(self, owner: str, token: str, body: bytes | None) -> bool:
        """Put a callback for ``token`` in the inbox of ``owner``; False if the owner is gone.

        Raises:
            SharedStateError: Redis could not be reached; nothing was forwarded.
        """
        keys = self._link.keys
        sent = await self._link.run(
            _FORWARD,
            (keys.worker(owner), keys.inbox(owner)),
            (
                _digest(token).hex(),
                self._link.worker_id,
                _INBOX_LENGTH,
                int(_INBOX_TTL * 1000),
                b"" if body is None else body,
                0 if body is None else 1,
            ),
        )
        return bool(sent)

    async def route(self, token: str, body: bytes | None, *, take_over: bool) -> Route:
        """Forward a callback for ``token`` to its live owner, or take the token if it is gone.

        One round trip: the token's registration is read, and the body is put in the owner's
        inbox if its heartbeat is fresh. If the owner is gone and ``take_over`` is set, this
        worker becomes the owner (the registration's kind, job and time to live stay).

        Raises:
            SharedStateError: Redis could not be reached; nothing was forwarded.
        """
        keys = self._link.keys
        found = await self._link.run(
            _ROUTE,
            (keys.token(_digest(token)),),
            (
                keys.worker(""),
                keys.inbox(""),
                self._link.worker_id,
                1 if take_over else 0,
                _digest(token).hex(),
                b"" if body is None else body,
                0 if body is None else 1,
                _INBOX_LENGTH,
                int(_INBOX_TTL * 1000),
            ),
        )
        if not found:
            return Route(outcome="unknown")
        outcome, kind, job = (text(part) for part in found)
        return Route(outcome=outcome, kind=kind, job_id=job or None)  # type: ignore[arg-type]

    async def write(self, entries: list[tuple[bytes, Registration | None]]) -> None:
        """Write the registrations of many tokens by digest, in one round trip.

        ``None`` drops the token. Each one is held by this worker, for its kind's time to live.

        Raises:
            SharedStateError: Redis could not be reached; some may have been written.
        """
        if not entries:
            return
        keys = self._link.keys

        async def write() -> None:
            async with self._link.redis.pipeline(transaction=False) as pipe:
                for key, registration in entries:
                    name = keys.token(key)
                    if registration is None:
                        pipe.delete(name)
                        continue
                    fields: dict[EncodableT, EncodableT] = {
                        "owner": self._link.worker_id,
                        "kind": registration.kind,
                        "job": registration.job_id or "",
                    }
                    pipe.hset(name, mapping=fields)
                    pipe.pexpire(name, int(_TTL[registration.kind] * 1000))
                await pipe.execute()

        await self._link.call(write)

    def on_forwarded(self, handler: Callable[[Forwarded], None]) -> None:
        """Call ``handler(message)`` in the event loop for every callback forwarded here.

        Callbacks forwarded before the handler was set wait in the inbox and come first.
        """
        first = self._handler is None
        self._handler = handler
        if first:
            self._reader.listen(
                self._link.keys.inbox(self._link.worker_id), self._on_entries, from_now=False
            )

    def _on_entries(self, entries: list[Entry]) -> None:
        handler = self._handler
        if handler is None:
            return
        for _entry_id, fields in entries:
            try:
                message = Forwarded(
                    digest=bytes.fromhex(fields[b"digest"].decode()),
                    body=fields.get(b"body", b"") if fields.get(b"has_body") == b"1" else None,
                    sender=fields.get(b"from", b"").decode(errors="replace"),
                    kind=fields[b"kind"].decode() if b"kind" in fields else None,
                    job_id=fields.get(b"job", b"").decode(errors="replace") or None,
                )
            except (KeyError, ValueError):
                logger.warning("an unreadable forwarded callback was dropped")
                continue
            try:
                handler(message)
            except Exception:
                logger.exception("the handler of a forwarded callback failed")
        # Handled: drop them, so a reader that starts over reads only what is new.
        inbox = self._link.keys.inbox(self._link.worker_id)
        ids = [entry_id for entry_id, _fields in entries]
        self._link.spawn(lambda: self._drop(inbox, ids))

    async def _drop(self, inbox: str, ids: list[str]) -> None:
        try:
            await self._link.call(lambda: self._link.redis.xdel(inbox, *ids))
        except SharedStateError:  # harmless: the entries expire with the inbox, duplicates are fine
            logger.debug("forwarded callbacks could not be dropped from the inbox", exc_info=True)
