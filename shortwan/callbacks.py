"""Callback-fed jobs: the service calls back when a job ends, and the waiting future resolves.

The service's callbacks are unsigned and may be lost, duplicated, late or forged, so a callback is
only a hint. Every create carries its own unguessable token in the callback URL; a request with an
unknown token changes nothing and gets 404. By default a callback makes the client confirm the job
with one query before anything resolves, so a forged body can never plant a result URL. Polling
goes on as a slow safety net (``PollPolicy.callback_interval``): a lost callback only delays a
result.

One :class:`CallbackReceiver` serves three ways: on its own (``async with`` starts an aiohttp
server), inside an aiohttp application (:meth:`CallbackReceiver.aiohttp_app` as a sub-application),
or as a plain ASGI application (:meth:`CallbackReceiver.asgi`) for Starlette or FastAPI ``mount``.
It must run in the event loop of the clients that use it. Given a shared state
(``shared=``, see :mod:`shortwan.redis`), the receivers of several workers behind one address
share their tokens: a callback that lands on the wrong worker reaches the right one.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from ._aio import ClosedOnExit
from ._callback_http import ASGIApp, aiohttp_handler
from ._callback_shared import CallbackTarget, Registration, SharedCallbacks, Workers
from ._callback_wire import (
    ACCEPTED,
    DEFAULT_MAX_BODY,
    DEFAULT_PATH_PREFIX,
    NOT_FOUND,
    TOKEN_BYTES,
    TOO_LARGE,
    UNCERTAIN_TTL,
    digest,
    job_id_of,
    payload,
)
from ._convert import snapshot_from_data
from ._errors import ConfigurationError, MalformedResponseError
from ._models import ImageToVideo
from ._stats import CallbackStatistics

if TYPE_CHECKING:
    from ._table import JobRecord

__all__ = ["DEFAULT_PATH_PREFIX", "CallbackReceiver", "CallbackTarget"]

logger = logging.getLogger("shortwan")


class _Listener:
    """What one token stands for: a create in flight, a created job, or a lost create answer."""

    __slots__ = (
        "early_id",
        "engine",
        "hinted",
        "record",
        "request",
        "since",
        "token",
        "uncertain",
    )

    def __init__(
        self, token: str, engine: CallbackTarget, request: ImageToVideo | None = None
    ) -> None:
        self.token = token
        self.engine = engine
        self.request = request
        self.record: JobRecord | None = None
        self.hinted = False
        # The job id a callback named before the create's answer came (or failed to come).
        self.early_id: str | None = None
        self.uncertain = False
        self.since = time.monotonic()

    def registration(self) -> Registration:
        """Return what this token stands for, as the shared registry records it."""
        if self.record is not None:
            return Registration("job", self.record.id)
        return Registration("uncertain" if self.uncertain else "pending")


class CallbackReceiver(ClosedOnExit):
    """Receives the service's job callbacks and turns them into resolved jobs.

    Pass it to :class:`~shortwan.AsyncShortWan` as ``callbacks=``; every create then carries
    ``{public_url}{path_prefix}/{token}`` as its callback URL.

    Args:
        public_url: the origin the service can reach this receiver at (``https://example.com``).
            ``None`` for a standalone receiver on a local address: its own address is used.
        path_prefix: the path the receiver answers under; mount it there.
        confirm: confirm every callback with one query before resolving the job (the default).
            ``False`` trusts the callback body; only do that behind a channel that authenticates
            the service.
        max_body: bodies larger than this many bytes are refused (413); the job is then
            confirmed by query as for any callback with a known token.
        host: where a standalone receiver listens.
        port: its port; 0 picks a free one.
        shared: a :class:`shortwan.redis.SharedState` the workers of one backend share: this
            receiver's tokens are then mirrored to it, and a callback for a token another
            worker holds is forwarded there (see :meth:`share`).
    """

    def __init__(
        self,
        public_url: str | None = None,
        *,
        path_prefix: str = DEFAULT_PATH_PREFIX,
        confirm: bool = True,
        max_body: int = DEFAULT_MAX_BODY,
        host: str = "127.0.0.1",
        port: int = 0,
        shared: SharedCallbacks | None = None,
    ) -> None:
        if public_url is not None:
            parts = urlsplit(public_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigurationError(f"public_url must be an http(s) URL, got {public_url!r}")
            if parts.query or parts.fragment:
                raise ConfigurationError("public_url must not carry a query or fragment")
        if not path_prefix.startswith("/") or "?" in path_prefix or "#" in path_prefix:
            raise ConfigurationError(f"path_prefix must be a path, got {path_prefix!r}")
        if max_body < 1024:
            raise ConfigurationError("max_body must be at least 1024 bytes")
        self.public_url = None if public_url is None else public_url.rstrip("/")
        self.path_prefix = "/" + path_prefix.strip("/") if path_prefix.strip("/") else ""
        self.confirm = confirm
        self.max_body = max_body
        self._host = host
        self._port = port
        self._listeners: dict[bytes, _Listener] = {}
        # The clients using this receiver, oldest first: the first one confirms the jobs of
        # workers that are gone.
        self._targets: list[CallbackTarget] = []
        self._workers: Workers | None = None
        self._runner: web.AppRunner | None = None
        self._received = 0
        self._rejected = 0
        if shared is not None:
            self.share(shared)

    def __repr__(self) -> str:
        return f"<CallbackReceiver {self.url or 'not started'} listening={len(self._listeners)}>"

    @property
    def url(self) -> str | None:
        """The base of every callback URL, ``None`` until a standalone receiver has started."""
        if self.public_url is None:
            return None
        return self.public_url + self.path_prefix

    def share(self, shared: SharedCallbacks) -> None:
        """Share this receiver's tokens with the other workers of a backend through ``shared``.

        Call it once, in the event loop of the shared state, before the first create (the
        constructor's ``shared=`` does). From then on every token is mirrored to the shared
        registry in the background (a create never waits for it, nor fails because Redis
        does); a callback whose token another worker holds is forwarded to that worker; one
        whose worker is gone is confirmed by one query of the oldest client attached to this
        receiver, and its end published for every worker.

        Raises:
            ConfigurationError: the receiver shares already, or another receiver uses
                ``shared``.
        """
        if self._workers is not None:
            raise ConfigurationError("this callback receiver shares its tokens already")
        self._workers = Workers(self, shared.callback_tokens())
        for key in self._listeners:
            self._workers.changed_key(key)

    # --- standalone ----------------------------------------------------------------------------

    async def __aenter__(self) -> CallbackReceiver:
        app = web.Application(client_max_size=self.max_body)
        self.add_routes(app.router, self.path_prefix)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        if self.public_url is None:
            host, port = self._runner.addresses[0][:2]
            self.public_url = f"http://{host}:{port}"
        return self

    async def aclose(self) -> None:
        """Stop a standalone receiver's server. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # --- aiohttp and ASGI ----------------------------------------------------------------------

    def aiohttp_app(self) -> web.Application:
        """Return an aiohttp application to mount: ``app.add_subapp(receiver.path_prefix, ...)``."""
        app = web.Application(client_max_size=self.max_body)
        self.add_routes(app.router, "")
        return app

    def add_routes(self, router: web.UrlDispatcher, prefix: str | None = None) -> None:
        """Add the callback route to an aiohttp router, under ``prefix`` (default path_prefix)."""
        base = self.path_prefix if prefix is None else prefix.rstrip("/")
        router.add_post(base + "/{token}", aiohttp_handler(self))

    @property
    def asgi(self) -> ASGIApp:
        """This receiver as an ASGI app: ``app.mount(receiver.path_prefix, receiver.asgi)``."""
        return ASGIApp(self)

    # --- the handlers --------------------------------------------------------------------------

    async def dispatch(self, token: str, body: bytes | None) -> tuple[int, bytes]:
        """Take one callback, whichever worker holds its token; return the HTTP answer.

        A token this worker holds is handled here (:meth:`handle`). With a shared registry,
        any other token is looked up there in one round trip: unknown is 404; known, it is
        answered 200 at once and forwarded to its worker (or taken over, if that worker is
        gone); a registry that cannot be reached is 503, so a service that retries asks again.
        """
        if self._workers is None or self._listeners.get(digest(token)) is not None:
            return self.handle(token, body)
        return await self._workers.dispatch(token, body)

    def handle(self, token: str, body: bytes | None) -> tuple[int, bytes]:
        """Take one callback for a token of this worker; return the HTTP status and body.

        ``body`` is ``None`` when it was larger than ``max_body``. Answers at once; any query
        runs in the background. A token of another worker is 404 here: :meth:`dispatch` is the
        handler that asks the shared registry.
        """
        listener = self._listeners.get(digest(token))
        if listener is None or not hmac.compare_digest(listener.token, token):
            self._rejected += 1
            return 404, NOT_FOUND
        self._received += 1
        self.accept(listener, body)
        return (413, TOO_LARGE) if body is None else (200, ACCEPTED)

    def accept(self, listener: _Listener, body: bytes | None) -> None:
        """Act on a callback for ``listener``'s token, received here or by another worker."""
        data = None if body is None else payload(body)
        record = listener.record
        if record is None:
            if listener.uncertain:
                self._adopt(listener, data)
            else:
                # The create's answer is still on its way. Keep the id the body names: if that
                # answer is lost, this is how the paid job is found.
                listener.hinted = True
                listener.early_id = listener.early_id or job_id_of(data)
        elif not record.is_terminal:
            self._resolve(listener.engine, record, data)

    def _resolve(
        self, engine: CallbackTarget, record: JobRecord, data: dict[str, Any] | None
    ) -> None:
        if not self.confirm and data is not None:
            try:
                snapshot = snapshot_from_data(data, job_id=record.id)
            except MalformedResponseError:
                snapshot = None
            # A success without a readable URL is not trusted to end the job: a query is.
            if (
                snapshot is not None
                and snapshot.id == record.id
                and (snapshot.urls or not snapshot.succeeded)
            ):
                engine.apply(record, snapshot)
                return
        engine.confirm(record)

    def _adopt(self, listener: _Listener, data: dict[str, Any] | None) -> None:
        job_id = job_id_of(data)
        if job_id is None or listener.request is None:
            logger.warning("a callback for a lost create named no job id; still waiting")
            return
        listener.uncertain = False  # one adoption per token
        listener.engine.adopt(job_id, listener.request, listener.token)

    # --- what the shared side asks -------------------------------------------------------------

    def accept_forwarded(self, key: bytes, body: bytes | None) -> bool:
        """Act on a callback another worker forwarded here; False if no token here has ``key``.

        The digest is compared in constant time, as a token is; the body is a hint, as ever.
        """
        listener = self._listeners.get(key)
        if listener is None or not hmac.compare_digest(digest(listener.token), key):
            return False
        self.accept(listener, body)
        return True

    def registration(self, key: bytes) -> Registration | None:
        """Return what the token of digest ``key`` stands for, ``None`` if it is not live."""
        listener = self._listeners.get(key)
        return None if listener is None else listener.registration()

    def registrations(self) -> Iterator[bytes]:
        """Return the digests of every live token."""
        return iter(list(self._listeners))

    def fallback_target(self) -> CallbackTarget | None:
        """Return the client that confirms jobs whose worker is gone: the oldest one attached."""
        return self._targets[0] if self._targets else None

    def listen_for(self, token: str, engine: CallbackTarget, record: JobRecord) -> None:
        """Listen on ``token`` for ``record``, a job taken over from a worker that is gone."""
        key = digest(token)
        if key not in self._listeners:
            self._listeners[key] = _Listener(token, engine)
            self.bind(token, record)

    def count_received(self) -> None:
        """Count a callback that named a live token of any worker."""
        self._received += 1

    def count_rejected(self) -> None:
        """Count a callback whose token no worker holds."""
        self._rejected += 1

    # --- the engine's side ---------------------------------------------------------------------

    def add_target(self, engine: CallbackTarget) -> None:
        """Attach a client: it may confirm the jobs of workers that are gone."""
        if not any(target is engine for target in self._targets):
            self._targets.append(engine)

    def register(self, engine: CallbackTarget, request: ImageToVideo) -> tuple[str, str]:
        """Make a token for a create about to be sent; return it and its callback URL."""
        base = self.url
        if base is None:
            raise ConfigurationError(
                "the callback receiver has no public URL yet: start it (async with) or pass "
                "public_url"
            )
        self._expire()
        self.add_target(engine)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        key = digest(token)
        self._listeners[key] = _Listener(token, engine, request)
        self._mirror(key)
        return token, f"{base}/{token}"

    def bind(self, token: str, record: JobRecord) -> None:
        """Tie ``token`` to the job its create made; a callback that came early is acted on."""
        key = digest(token)
        listener = self._listeners.get(key)
        if listener is None:
            return
        listener.record = record
        self._mirror(key)
        record.add_done_callback(lambda done: self._release(key, done))
        if listener.hinted and not record.is_terminal:
            self._resolve(listener.engine, record, None)

    def _release(self, key: bytes, record: JobRecord) -> None:
        listener = self._listeners.get(key)
        if listener is None or listener.record is not record:
            return
        del self._listeners[key]
        # A job detached by a closing client keeps its shared registration: once this worker is
        # gone, another one takes its callback over.
        if record.is_terminal:
            self._mirror(key)

    def keep_uncertain(self, token: str) -> None:
        """Keep listening on a create whose answer was lost, to adopt its job if it calls back."""
        key = digest(token)
        listener = self._listeners.get(key)
        if listener is None:
            return
        listener.uncertain = True
        listener.since = time.monotonic()
        if listener.early_id is not None and listener.request is not None:
            # The service called back before the create's answer was given up on: adopt now,
            # once (if the id cannot be confirmed, the next callback is waited for).
            early_id, listener.early_id = listener.early_id, None
            listener.uncertain = False
            listener.engine.adopt(early_id, listener.request, listener.token)
        elif listener.hinted:
            logger.warning(
                "a lost create was called back before its answer failed, naming no job id; "
                "waiting for another callback"
            )
        self._mirror(key)

    def forget(self, token: str) -> None:
        """Stop listening on ``token``."""
        key = digest(token)
        if self._listeners.pop(key, None) is not None:
            self._mirror(key)

    def forget_engine(self, engine: CallbackTarget) -> None:
        """Drop every token of a client that is closing.

        With a shared registry, the tokens of its unfinished jobs and lost creates stay there:
        once this worker is gone, a callback for one of them is taken over by another worker.
        """
        self._targets = [target for target in self._targets if target is not engine]
        lost = 0
        for key, listener in list(self._listeners.items()):
            if listener.engine is engine:
                lost += listener.uncertain
                del self._listeners[key]
        if lost:
            logger.warning(
                "closing with %d creates whose answers were lost and whose jobs were never found; "
                "a callback for them can no longer be adopted here: check your job list",
                lost,
            )

    def _mirror(self, key: bytes) -> None:
        if self._workers is not None:
            self._workers.changed_key(key)

    def _expire(self) -> None:
        if len(self._listeners) < 1024 or secrets.randbelow(256):
            return  # cheap: only now and then, and only when there is something to sweep
        limit = time.monotonic() - UNCERTAIN_TTL
        for key, listener in list(self._listeners.items()):
            if listener.uncertain and listener.since < limit:
                del self._listeners[key]  # its shared registration expires on its own

    @property
    def listening(self) -> int:
        """How many tokens are live: creates in flight, jobs not finished, lost creates."""
        return len(self._listeners)

    @property
    def received(self) -> int:
        """Callbacks that named a live token (of this worker, or of another one)."""
        return self._received

    @property
    def rejected(self) -> int:
        """Callbacks with an unknown token (they got 404 and changed nothing)."""
        return self._rejected

    def statistics(self) -> CallbackStatistics:
        """Return a snapshot of the receiver's figures; later callbacks do not touch it."""
        workers = self._workers
        return CallbackStatistics(
            received=self._received,
            rejected=self._rejected,
            listening=len(self._listeners),
            forwarded=0 if workers is None else workers.forwarded,
            from_other_workers=0 if workers is None else workers.from_others,
            taken_over=0 if workers is None else workers.taken_over,
            unavailable=0 if workers is None else workers.unavailable,
        )
