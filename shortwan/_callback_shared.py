"""What a callback receiver needs of a token registry shared by several workers, and the
receiver's side of it: callbacks for tokens another worker holds.

A web backend runs several workers behind one address, and the service's callback for a job lands
on whichever worker the kernel or the load balancer picks. With a shared registry
(``CallbackReceiver(shared=...)``, a :class:`shortwan.redis.SharedState`), every receiver mirrors
its tokens there, by digest, with the worker that holds them. A worker that gets a callback for a
token it does not hold asks the registry in one round trip, which forwards the body to the owner
and answers at once; the owner then handles it as if it had landed there. If the owner is gone (its
heartbeat lapsed), the registry makes this worker the owner instead, and one of the clients
attached to this receiver confirms the job by one query and publishes its end for every worker.

The core never imports ``shortwan.redis``: these Protocols are the boundary, and the Redis side
implements them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, Literal, Protocol

import anyio
import attrs

from ._callback_wire import ACCEPTED, NOT_FOUND, TOO_LARGE, UNAVAILABLE, digest, job_id_of, payload
from ._errors import SharedStateError

if TYPE_CHECKING:
    from ._models import ImageToVideo, JobSnapshot
    from ._table import JobRecord

__all__ = [
    "ROUTE_TIMEOUT",
    "CallbackTarget",
    "ReceiverSide",
    "ForwardedCallback",
    "Registration",
    "Route",
    "SharedCallbacks",
    "SharedTokens",
    "TokenSource",
    "Workers",
]

logger = logging.getLogger("shortwan")

ROUTE_TIMEOUT: Final = 1.0
"""Seconds a callback for a foreign token waits for the registry before it is answered 503."""
RETRY_AFTER: Final = "5"
"""What a 503 asks the service to wait before it tries again."""

TokenKind = Literal["pending", "job", "uncertain"]
RouteOutcome = Literal["unknown", "forwarded", "held", "taken", "orphaned"]


@attrs.frozen
class Registration:
    """What one live token stands for: a create under way, its job, or a lost create answer."""

    kind: TokenKind
    job_id: str | None = None


@attrs.frozen(kw_only=True)
class Route:
    """What the registry did with a callback for a token this worker does not hold.

    Attributes:
        outcome: ``unknown`` (no live registration: 404), ``forwarded`` (its live owner has it),
            ``held`` (the registry names this worker), ``taken`` (the owner was gone: this
            worker owns the token now) or ``orphaned`` (the owner is gone and this worker could
            not take it).
        kind: what the token stood for, when it was found.
        job_id: its job, for ``kind == "job"``.
    """

    outcome: RouteOutcome
    kind: str | None = None
    job_id: str | None = None


class ForwardedCallback(Protocol):
    """A callback another worker received for a token this worker holds."""

    @property
    def digest(self) -> bytes:
        """The SHA-256 digest of the token (the token itself never leaves its owner)."""

    @property
    def body(self) -> bytes | None:
        """The body, ``None`` when it was too large to read."""

    @property
    def kind(self) -> str | None:
        """What the registry said the token stood for."""

    @property
    def job_id(self) -> str | None:
        """The job the registry tied the token to, if any."""


class CallbackTarget(Protocol):
    """What the receiver asks of the client whose create carried a token (its engine).

    This is the whole boundary between the two: the receiver keeps one target per token, calls
    these methods and nothing else, and compares targets only by identity (to drop a closing
    client's tokens). A target may be asked from the receiver's request handler, so no method may
    block: each one schedules what it needs and returns.
    """

    def confirm(self, record: JobRecord) -> None:
        """Ask the service about ``record`` soon: a callback said it ended (a hint, not proof)."""

    def apply(self, record: JobRecord, snapshot: JobSnapshot) -> None:
        """Take ``snapshot``, read from a trusted callback body, as the latest answer about it."""

    def adopt(self, job_id: str, request: ImageToVideo, token: str) -> None:
        """Confirm ``job_id`` by query and track it: the create of ``request`` lost its answer.

        Once the job is tracked, the target binds it to ``token`` (:meth:`CallbackReceiver.bind`);
        if it cannot be confirmed, the target calls :meth:`CallbackReceiver.keep_uncertain`.
        """

    def attach(self, job_id: str) -> JobRecord:
        """Track ``job_id``, created by a worker that is gone, and ask about it at once.

        A job the target knows already is returned as it stands.
        """


class TokenSource(Protocol):
    """The receiver, as the registry's mirror reads it: the one record of which tokens live."""

    def registration(self, key: bytes) -> Registration | None:
        """Return what the token of digest ``key`` stands for now, ``None`` if it is not live."""

    def registrations(self) -> Iterable[bytes]:
        """Return the digests of every live token (to write them again after an outage)."""


class SharedTokens(Protocol):
    """A token registry shared by the workers of a backend (the Redis side implements it)."""

    @property
    def online(self) -> bool:
        """Whether the registry answered its last call."""

    def start(self, source: TokenSource, on_forwarded: Callable[[ForwardedCallback], None]) -> None:
        """Mirror ``source``'s tokens and hand every callback forwarded here to ``on_forwarded``.

        Raises:
            ConfigurationError: another receiver already uses this registry.
        """

    def changed(self, key: bytes) -> None:
        """Write what the token of digest ``key`` stands for now, soon; never blocks or raises."""

    async def route(self, token: str, body: bytes | None, *, take_over: bool) -> Route:
        """Forward a callback to the live owner of ``token``, or take the token if it is gone.

        Raises:
            SharedStateError: the registry could not be reached; nothing was done.
        """

    def publish_end(self, record: JobRecord) -> None:
        """Publish the end of ``record`` for every worker, soon; never blocks or raises."""


class SharedCallbacks(Protocol):
    """What ``CallbackReceiver(shared=...)`` takes: :class:`shortwan.redis.SharedState`."""

    def callback_tokens(self) -> SharedTokens:
        """Return the token registry a callback receiver shares through."""


class ReceiverSide(TokenSource, Protocol):
    """The receiver, as its dealings with other workers see it."""

    def fallback_target(self) -> CallbackTarget | None:
        """Return the client that confirms the jobs of workers that are gone, if any."""

    def accept_forwarded(self, key: bytes, body: bytes | None) -> bool:
        """Act on a callback forwarded here for the token of digest ``key``; False: not held."""

    def listen_for(self, token: str, engine: CallbackTarget, record: JobRecord) -> None:
        """Listen on ``token`` from now on, for ``record``, a job taken over."""

    def count_received(self) -> None:
        """Count a callback that named a live token of any worker."""

    def count_rejected(self) -> None:
        """Count a callback whose token no worker holds."""


class Workers:
    """A receiver's dealings with the other workers: foreign callbacks, forwarded ones, orphans.

    Args:
        receiver: the receiver it works for.
        shared: the registry.
    """

    def __init__(self, receiver: ReceiverSide, shared: SharedTokens) -> None:
        self._receiver = receiver
        self._shared = shared
        self.forwarded = 0
        self.from_others = 0
        self.taken_over = 0
        self.unavailable = 0
        shared.start(receiver, self._on_forwarded)

    def changed(self, token: str) -> None:
        """Mirror the registration of ``token`` as it stands now."""
        self._shared.changed(digest(token))

    def changed_key(self, key: bytes) -> None:
        """Mirror the registration of the token of digest ``key`` as it stands now."""
        self._shared.changed(key)

    async def dispatch(self, token: str, body: bytes | None) -> tuple[int, bytes]:
        """Take a callback whose token this worker does not hold; return the HTTP answer.

        Redis unreachable: 503 (with ``Retry-After``), never 404, since the token may well be
        another worker's; the safety-net poll of its owner delivers the job whatever the
        service does next.
        """
        receiver = self._receiver
        target = receiver.fallback_target()
        route: Route | None = None
        if self._shared.online:
            try:
                with anyio.fail_after(ROUTE_TIMEOUT):
                    route = await self._shared.route(token, body, take_over=target is not None)
            except (SharedStateError, TimeoutError) as exc:
                logger.warning("a callback could not be routed through the registry: %s", exc)
        if route is not None and route.outcome == "unknown":
            receiver.count_rejected()
            return 404, NOT_FOUND
        if route is None or (route.outcome != "forwarded" and target is None):
            # Unreachable, or a token nobody here can confirm (no client is attached): the
            # service may try again later, and the owner's safety net is there meanwhile.
            self.unavailable += 1
            return 503, UNAVAILABLE
        receiver.count_received()
        if route.outcome == "forwarded":
            self.forwarded += 1
        elif target is not None:
            # The registry names this worker: its owner is gone (or it is this worker, whose
            # client let go of it). The token came with the callback, so this worker listens on
            # it from now on.
            data = None if body is None else payload(body)
            job_id = route.job_id if route.kind == "job" else job_id_of(data)
            record = self._take_over(target, job_id)
            if record is not None:
                receiver.listen_for(token, target, record)
        return (413, TOO_LARGE) if body is None else (200, ACCEPTED)

    def _on_forwarded(self, message: ForwardedCallback) -> None:
        self.from_others += 1
        receiver = self._receiver
        if receiver.accept_forwarded(message.digest, message.body):
            return
        # This worker is the registered owner but no longer listens (its client closed while the
        # process lives on): the job must still be confirmed and published.
        target = receiver.fallback_target()
        if target is None:
            return
        data = None if message.body is None else payload(message.body)
        self._take_over(target, message.job_id if message.kind == "job" else job_id_of(data))

    def _take_over(self, target: CallbackTarget, job_id: str | None) -> JobRecord | None:
        if job_id is None:
            logger.warning(
                "a callback for a token whose worker is gone named no job id; the next one may"
            )
            return None
        self.taken_over += 1
        record = target.attach(job_id)  # confirmed by one query, unless already known here
        logger.info(
            "job %s: its callback's worker is gone; confirmed and published here",
            job_id,
            extra={"job_id": job_id},
        )
        record.add_done_callback(self._publish)
        return record

    def _publish(self, record: JobRecord) -> None:
        if record.is_terminal:
            self._shared.publish_end(record)
