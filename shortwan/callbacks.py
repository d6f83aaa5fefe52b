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
It must run in the event loop of the clients that use it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

from aiohttp import web

from . import _json
from ._aio import ClosedOnExit
from ._convert import snapshot_from_data
from ._errors import ConfigurationError, MalformedResponseError
from ._models import ImageToVideo
from ._stats import CallbackStatistics

if TYPE_CHECKING:
    from ._models import JobSnapshot
    from ._table import JobRecord

__all__ = ["DEFAULT_PATH_PREFIX", "CallbackReceiver"]

logger = logging.getLogger("shortwan")

DEFAULT_PATH_PREFIX: Final = "/shortwan/callbacks"
DEFAULT_MAX_BODY: Final = 1024 * 1024
TOKEN_BYTES: Final = 32  # 256 bits
UNCERTAIN_TTL: Final = 48 * 3600.0
"""How long a create whose answer was lost keeps listening for its callback."""

_NOT_FOUND: Final = b'{"error":"unknown callback"}'
_ACCEPTED: Final = b'{"ok":true}'
_TOO_LARGE: Final = b'{"error":"body too large"}'

ASGIScope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class CallbackTarget(Protocol):
    """What the receiver asks of the client whose create carried a token (its engine).

    This is the whole boundary between the two: the receiver keeps one target per token, calls
    these three methods and nothing else, and compares targets only by identity (to drop a closing
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


def _digest(token: str) -> bytes:
    # Tokens are looked up by their hash, then compared in constant time: neither the dict
    # lookup nor the comparison leaks how much of a guessed token was right.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


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

    def __init__(self, token: str, engine: CallbackTarget, request: ImageToVideo) -> None:
        self.token = token
        self.engine = engine
        self.request = request
        self.record: JobRecord | None = None
        self.hinted = False
        # The job id a callback named before the create's answer came (or failed to come).
        self.early_id: str | None = None
        self.uncertain = False
        self.since = time.monotonic()


def _payload(body: bytes) -> dict[str, Any] | None:
    """Return the job data of a callback body: an envelope's ``data``, or a bare object."""
    try:
        parsed = _json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    data = parsed.get("data")
    if isinstance(data, dict) and ("code" in parsed or "status" not in parsed):
        return data
    return parsed


def _job_id_of(data: dict[str, Any] | None) -> str | None:
    if data is None:
        return None
    for name in ("id", "job_id"):
        value = data.get(name)
        if isinstance(value, str) and 0 < len(value) <= 256 and value.isprintable():
            return value
    return None


class _ASGIApp:
    """An ASGI 3 application object (servers tell ASGI 3 from 2 by an async ``__call__``)."""

    __slots__ = ("_receiver",)

    def __init__(self, receiver: CallbackReceiver) -> None:
        self._receiver = receiver

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        await self._receiver._serve_asgi(scope, receive, send)


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
        self._runner: web.AppRunner | None = None
        self._received = 0
        self._rejected = 0

    def __repr__(self) -> str:
        return f"<CallbackReceiver {self.url or 'not started'} listening={len(self._listeners)}>"

    @property
    def url(self) -> str | None:
        """The base of every callback URL, ``None`` until a standalone receiver has started."""
        if self.public_url is None:
            return None
        return self.public_url + self.path_prefix

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

    # --- aiohttp -------------------------------------------------------------------------------

    def aiohttp_app(self) -> web.Application:
        """Return an aiohttp application to mount: ``app.add_subapp(receiver.path_prefix, ...)``."""
        app = web.Application(client_max_size=self.max_body)
        self.add_routes(app.router, "")
        return app

    def add_routes(self, router: web.UrlDispatcher, prefix: str | None = None) -> None:
        """Add the callback route to an aiohttp router, under ``prefix`` (default path_prefix)."""
        base = self.path_prefix if prefix is None else prefix.rstrip("/")
        router.add_post(base + "/{token}", self._aiohttp_handler)

    async def _aiohttp_handler(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if request.content_length is not None and request.content_length > self.max_body:
            status, body = self.handle(token, None)
            return web.Response(status=status, body=body, content_type="application/json")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > self.max_body:
                status, body = self.handle(token, None)
                return web.Response(status=status, body=body, content_type="application/json")
            chunks.append(chunk)
        status, body = self.handle(token, b"".join(chunks))
        return web.Response(status=status, body=body, content_type="application/json")

    # --- ASGI ----------------------------------------------------------------------------------

    @property
    def asgi(self) -> _ASGIApp:
        """This receiver as an ASGI app: ``app.mount(receiver.path_prefix, receiver.asgi)``."""
        return _ASGIApp(self)

    async def _serve_asgi(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("method") != "POST":
            await self._asgi_answer(send, 405, b'{"error":"POST only"}')
            return
        token = str(scope.get("path", "")).rstrip("/").rsplit("/", 1)[-1]
        chunks: list[bytes] = []
        size = 0
        too_large = False
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            size += len(chunk)
            if size > self.max_body:
                too_large = True
                break  # stop reading: the rest is never buffered
            chunks.append(chunk)
        status, body = self.handle(token, None if too_large else b"".join(chunks))
        await self._asgi_answer(send, status, body)

    @staticmethod
    async def _asgi_answer(send: ASGISend, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    # --- the one handler -----------------------------------------------------------------------

    def handle(self, token: str, body: bytes | None) -> tuple[int, bytes]:
        """Take one callback; return the HTTP status and body to answer with.

        ``body`` is ``None`` when it was larger than ``max_body``. Answers at once; any query
        runs in the background.
        """
        listener = self._listeners.get(_digest(token))
        if listener is None or not hmac.compare_digest(listener.token, token):
            self._rejected += 1
            return 404, _NOT_FOUND
        self._received += 1
        data = None if body is None else _payload(body)
        record = listener.record
        if record is None:
            if listener.uncertain:
                self._adopt(listener, data)
            else:
                # The create's answer is still on its way. Keep the id the body names: if that
                # answer is lost, this is how the paid job is found.
                listener.hinted = True
                listener.early_id = listener.early_id or _job_id_of(data)
        elif not record.is_terminal:
            self._resolve(listener.engine, record, data)
        if body is None:
            return 413, _TOO_LARGE
        return 200, _ACCEPTED

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
        job_id = _job_id_of(data)
        if job_id is None:
            logger.warning("a callback for a lost create named no job id; still waiting")
            return
        listener.uncertain = False  # one adoption per token
        listener.engine.adopt(job_id, listener.request, listener.token)

    # --- the engine's side ---------------------------------------------------------------------

    def register(self, engine: CallbackTarget, request: ImageToVideo) -> tuple[str, str]:
        """Make a token for a create about to be sent; return it and its callback URL."""
        base = self.url
        if base is None:
            raise ConfigurationError(
                "the callback receiver has no public URL yet: start it (async with) or pass "
                "public_url"
            )
        self._expire()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._listeners[_digest(token)] = _Listener(token, engine, request)
        return token, f"{base}/{token}"

    def bind(self, token: str, record: JobRecord) -> None:
        """Tie ``token`` to the job its create made; a callback that came early is acted on."""
        listener = self._listeners.get(_digest(token))
        if listener is None:
            return
        listener.record = record
        record.add_done_callback(lambda _record: self.forget(token))
        if listener.hinted and not record.is_terminal:
            self._resolve(listener.engine, record, None)

    def keep_uncertain(self, token: str) -> None:
        """Keep listening on a create whose answer was lost, to adopt its job if it calls back."""
        listener = self._listeners.get(_digest(token))
        if listener is None:
            return
        listener.uncertain = True
        listener.since = time.monotonic()
        if listener.early_id is not None:
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

    def forget(self, token: str) -> None:
        """Stop listening on ``token``."""
        self._listeners.pop(_digest(token), None)

    def forget_engine(self, engine: CallbackTarget) -> None:
        """Drop every token of a client that is closing."""
        lost = 0
        for key, listener in list(self._listeners.items()):
            if listener.engine is engine:
                lost += listener.uncertain
                del self._listeners[key]
        if lost:
            logger.warning(
                "closing with %d creates whose answers were lost and whose jobs were never found; "
                "a callback for them can no longer be adopted: check your job list",
                lost,
            )

    def _expire(self) -> None:
        if len(self._listeners) < 1024 or secrets.randbelow(256):
            return  # cheap: only now and then, and only when there is something to sweep
        limit = time.monotonic() - UNCERTAIN_TTL
        for key, listener in list(self._listeners.items()):
            if listener.uncertain and listener.since < limit:
                del self._listeners[key]

    @property
    def listening(self) -> int:
        """How many tokens are live: creates in flight, jobs not finished, lost creates."""
        return len(self._listeners)

    @property
    def received(self) -> int:
        """Callbacks that named a live token."""
        return self._received

    @property
    def rejected(self) -> int:
        """Callbacks with an unknown token (they got 404 and changed nothing)."""
        return self._rejected

    def statistics(self) -> CallbackStatistics:
        """Return a snapshot of the receiver's figures; later callbacks do not touch it."""
        return CallbackStatistics(
            received=self._received, rejected=self._rejected, listening=len(self._listeners)
        )
