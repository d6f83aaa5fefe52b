"""The only module that sends API requests: sessions, envelopes, error mapping and retries.

It knows nothing of jobs beyond the two calls of the protocol. Every aiohttp and json exception
is translated here into the tree of ``_errors`` (kept as ``__cause__``), and every failure is
classed by what it proves about the service's side effects (``_retry.Safety``), which decides
whether a create may be sent again. The retries themselves are ``_retry.Retrying``'s; this module
hooks into them: every query attempt waits for the query budget's leave and tells it how it went
(``_rate`` decides the rate and the pause from that), and a 429 on a create pauses the creates.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import math
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Final, Literal

import aiohttp
import anyio

from . import _json
from ._aio import DeadlineWatch
from ._config import Limits, RetryPolicy, Timeouts, is_testing
from ._convert import CreateData, create_from_data
from ._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    InsufficientBalanceError,
    MalformedResponseError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    SubmissionUncertainError,
    TransportError,
    snippet,
)
from ._rate import QueryBudget, RateLimiter
from ._retry import AttemptFailed, RetryHook, Retrying, Safety, parse_retry_after

__all__ = ["CREATE_PATH", "QUERY_PATH", "Transport"]

logger = logging.getLogger("shortwan")

CREATE_PATH: Final = "/api/v1/job/create"
QUERY_PATH: Final = "/api/v1/job/query"
# How the retry log names each call, made once rather than on every call.
_CALL_NAMES: Final = {
    ("POST", CREATE_PATH): f"POST {CREATE_PATH}",
    ("GET", QUERY_PATH): f"GET {QUERY_PATH}",
}
CODE_UPSTREAM_UNAVAILABLE: Final = 3000


def _message(body: Mapping[str, Any]) -> str | None:
    for key in ("message", "info", "msg"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _api_error(
    status: int,
    code: int | None,
    text: str | None,
    body: str | None,
    retry_after: float | None,
) -> AttemptFailed:
    """Map a rejection (an envelope with code != 0, or an HTTP error status) to a failure."""
    detail = text or (f"code {code}" if code is not None else f"HTTP {status}")
    where = f"HTTP {status}" + (f", code {code}" if code is not None else "")
    message = f"{detail} ({where})"
    kwargs: dict[str, Any] = {"status": status, "code": code, "body": body}
    error: APIError
    explicit = code is not None and code != 0
    if status in (401, 403):
        return AttemptFailed(AuthenticationError(message, **kwargs), Safety.FINAL)
    if status == 402:
        return AttemptFailed(InsufficientBalanceError(message, **kwargs), Safety.FINAL)
    if status == 429:
        error = RateLimitError(message, retry_after=retry_after, **kwargs)
        return AttemptFailed(error, Safety.NOT_SENT, retry_after=retry_after)
    if status == 503 or code == CODE_UPSTREAM_UNAVAILABLE:
        error = ServiceUnavailableError(message, **kwargs)
        return AttemptFailed(error, Safety.NOT_SENT, retry_after=retry_after)
    if status in (400, 404, 405, 409, 413, 422):
        return AttemptFailed(BadRequestError(message, **kwargs), Safety.FINAL)
    if status == 408 or status >= 500:
        # A 5xx carrying the envelope with code != 0 is the service's own refusal: nothing was made.
        safety = Safety.NOT_SENT if explicit else Safety.UNCERTAIN
        return AttemptFailed(ServerError(message, **kwargs), safety, retry_after=retry_after)
    return AttemptFailed(APIError(message, **kwargs), Safety.FINAL)


def decode_envelope(status: int, raw: bytes, retry_after: float | None) -> dict[str, Any]:
    """Return the ``data`` object of a successful answer, or raise :class:`AttemptFailed`."""
    try:
        parsed = _json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        parsed = None
        cause: Exception | None = exc
    else:
        cause = None
    code = parsed.get("code") if isinstance(parsed, dict) else None
    if isinstance(parsed, dict) and isinstance(code, int) and not isinstance(code, bool):
        if code != 0:
            raise _api_error(status, code, _message(parsed), snippet(raw), retry_after)
        if 200 <= status < 300:
            data = parsed.get("data")
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise AttemptFailed(
                    MalformedResponseError(
                        f"'data' is {type(data).__name__}, not an object",
                        status=status,
                        body=snippet(raw),
                        paths=["data"],
                    ),
                    Safety.UNCERTAIN,
                )
            return data
    if status >= 400:
        raise _api_error(status, None, None, snippet(raw), retry_after)
    error = MalformedResponseError(
        f"HTTP {status} answer is not the service's JSON envelope",
        status=status,
        body=snippet(raw),
    )
    if cause is not None:
        error.__cause__ = cause
    raise AttemptFailed(error, Safety.UNCERTAIN)


# aiohttp sends a body held in memory in one write, and warns (a ResourceWarning) above 1 MiB,
# which a create with a large data-URI image reaches: such bodies go as a stream instead.
_STREAMED_BODY: Final = 1 << 20


def _encoded(body: Mapping[str, Any]) -> bytes | io.BytesIO:
    """Return ``body`` as compact JSON, as a stream when it is large."""
    raw = _json.dumps(body)
    return io.BytesIO(raw) if len(raw) > _STREAMED_BODY else raw


def _client_error(exc: BaseException, timeouts: Timeouts) -> AttemptFailed:
    """Class an aiohttp or timeout exception by what it proves."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientConnectorSSLError):
        return AttemptFailed(TransportError(f"TLS failed: {exc}"), Safety.FINAL)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return AttemptFailed(TransportError(f"cannot connect: {exc}"), Safety.NOT_SENT)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        text = f"no connection within {timeouts.connect + timeouts.pool:g} s"
        return AttemptFailed(TransportError(text), Safety.NOT_SENT)
    if isinstance(exc, aiohttp.SocketTimeoutError):
        text = f"no data from the service for {timeouts.read:g} s"
        return AttemptFailed(TransportError(text), Safety.UNCERTAIN)
    if isinstance(exc, asyncio.TimeoutError):
        return AttemptFailed(TransportError("the request timed out"), Safety.UNCERTAIN)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return AttemptFailed(TransportError("the service closed the connection"), Safety.UNCERTAIN)
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return AttemptFailed(TransportError(text), Safety.UNCERTAIN)


class AttemptLimits:
    """How long one API attempt may take: its aiohttp limits, and the watch that ends it.

    An attempt allowed its full ``Timeouts.request`` (the common case) is ended by :attr:`watch`,
    one timer for every such attempt, instead of a timer of aiohttp's own per request. A shorter
    attempt, near its call's deadline, keeps aiohttp's total limit.
    """

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts: Final = timeouts
        self.watch: Final = DeadlineWatch()
        self._full: aiohttp.ClientTimeout | None = None

    def for_attempt(self, remaining: float) -> tuple[aiohttp.ClientTimeout, int | None]:
        """Return an attempt's aiohttp limits and its watch's token (``None``: not watched)."""
        cap = self.timeouts.request
        if cap is not None and remaining >= cap:
            token = self.watch.watch(asyncio.get_running_loop().time() + cap)
            if token is not None:
                if self._full is None:  # the same object every time, not a new one per request
                    self._full = self.client_timeout(cap, watched=True)
                return self._full, token
            remaining = cap
        return self.client_timeout(max(remaining, 0.001), watched=False), None

    def client_timeout(self, total: float, *, watched: bool) -> aiohttp.ClientTimeout:
        """Return aiohttp's limits for an attempt of ``total`` seconds at most."""
        t = self.timeouts
        # The wait for a pooled connection must end before the whole attempt's limit: a request
        # that never got a connection was never sent, and aiohttp only says so (a connection
        # timeout) when that limit is the first to pass; otherwise a create that never left
        # would be reported "maybe charged".
        connect = t.pool + t.connect
        if not math.isinf(total):
            connect = min(connect, total * 0.9)
        # An idle gap of ``read`` can only end an attempt that lasts longer than ``read``: when
        # the whole attempt's limit is no longer, that limit always passes first, and aiohttp's
        # read timer (re-armed on every chunk received) is left out as the pure cost it is.
        sock_read = t.read if t.read < total else None
        return aiohttp.ClientTimeout(
            total=None if watched or math.isinf(total) else total,
            connect=connect,
            sock_connect=t.connect,
            sock_read=sock_read,
        )


class Transport:
    """Owns the HTTP session and sends the protocol's two calls with the retry policy.

    Args:
        api_key: the Bearer key; it is sent only to ``base_url``.
        base_url: the API's origin, such as ``https://api.shortapi.ai``.
        timeouts: per-attempt time limits.
        retry: the retry policy.
        limits: connection pool sizes.
        session: a session to borrow instead of creating one; it is never closed here.
        ssl_context: TLS settings for connections this transport creates.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeouts: Timeouts,
        retry: RetryPolicy,
        limits: Limits,
        session: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._auth: Final = {"Authorization": f"Bearer {api_key}"}
        self._auth_json: Final = {**self._auth, "Content-Type": "application/json"}
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.limits = limits
        self._session = session
        self._owns_session = session is None
        self._ssl_context = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets
        # One 429 pauses every request of this client: no storm of refused requests.
        self._paused_until = 0.0
        self._limits = AttemptLimits(timeouts)
        # Paces every query attempt and hears every answer to one (see _rate): the rate in force
        # and the queries' pause live there.
        self.query_budget: QueryBudget | None = None
        self.on_retry: RetryHook | None = None

    def __repr__(self) -> str:
        return f"<Transport {self.base_url}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    @property
    def connection_limit(self) -> int | None:
        """How many requests can be on the wire to the API at once (``None``: no limit).

        The smaller of the pool's per-host and total limits: the borrowed session's own pool,
        else :class:`~shortwan.Limits`. A request past it waits for a pooled connection (never
        counted as sent: see :meth:`_client_timeout`).
        """
        limits = (self.limits.max_connections, self.limits.max_connections_per_host)
        if not self._owns_session and self._session is not None:
            connector = self._session.connector
            limits = (0, 0) if connector is None else (connector.limit, connector.limit_per_host)
        bounded = [n for n in limits if n > 0]
        return min(bounded) if bounded else None

    def session(self) -> aiohttp.ClientSession:
        """Return the session, creating it inside the running loop on first use."""
        if self._closed:
            raise RuntimeError("this shortwan client is closed; create a new one")
        loop = asyncio.get_running_loop()
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.limits.max_connections,
                limit_per_host=self.limits.max_connections_per_host,
                keepalive_timeout=self.limits.keepalive,
                ssl=self._ssl_context if self._ssl_context is not None else True,
            )
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
            self._loop = loop
        elif self._loop is not None and self._loop is not loop:
            raise RuntimeError(
                "this shortwan client was first used in another event loop; "
                "create one client per loop"
            )
        return self._session

    async def aclose(self) -> None:
        """Close the session if this transport created it. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        self._limits.watch.close()  # attempts still under way keep their limit
        if session is not None and self._owns_session:
            await session.close()

    async def _attempt(
        self,
        method: Literal["GET", "POST"],
        path: str,
        *,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
        retrying: Retrying,
    ) -> dict[str, Any]:
        session = self.session()
        timeout, token = self._limits.for_attempt(retrying.remaining())
        watch = self._limits.watch
        try:
            async with session.request(
                method,
                self.base_url + path,
                params=params,
                data=None if body is None else _encoded(body),
                headers=self._auth if body is None else self._auth_json,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                status = response.status
                # Read on every answer: code 3000 (model unavailable) comes with HTTP 200.
                header = response.headers.get("Retry-After")
                retry_after = None if header is None else parse_retry_after(header)
        except BaseException as exc:
            if token is not None and watch.leave(token, exc):
                exc = asyncio.TimeoutError()  # the watch ended it, as aiohttp's timer would
            if isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError):
                raise _client_error(exc, self._limits.timeouts) from exc
            raise
        if token is not None:
            watch.leave(token)
        return decode_envelope(status, raw, retry_after)

    def _call(
        self,
        method: Literal["GET", "POST"],
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        create: bool,
        job_id: str | None = None,
    ) -> Coroutine[Any, Any, dict[str, Any]]:
        """Send one call with retries and return its ``data``; raise the SDK error on failure.

        Returns the retries' coroutine, to await: no coroutine of its own per call.
        """
        retrying = Retrying(
            self.retry,
            operation="create" if create else "query",
            name=_CALL_NAMES.get((method, path)) or f"{method} {path}",
            idempotent=not create,
            job_id=job_id,
            on_retry=self.on_retry,
            rng=self._rng,
        )
        budget = None if create else self.query_budget
        if budget is None:
            send = functools.partial(
                self._attempt, method, path, params=params, body=body, retrying=retrying
            )
            return retrying.call(
                send, before_attempt=self._before_attempt, after_failure=self._after_failure
            )
        paced = functools.partial(self._paced, budget, method, path, params, retrying)
        return retrying.call(paced, after_failure=self._after_failure)

    async def _before_attempt(self, retrying: Retrying) -> None:
        if self._paused_until > 0:
            await self._wait_for_pause(retrying.deadline)

    async def _acquire(self, budget: QueryBudget, retrying: Retrying) -> None:
        """Wait for the budget's leave to send a query, but never past the call's deadline."""
        if isinstance(budget, RateLimiter) and budget.try_acquire():
            return  # granted at once: no deadline to arm
        # A budget that can keep to a deadline itself (the shared one) spares a cancel scope.
        # Looked up on its class: an attribute a mock makes up on the fly is not such a method.
        within: Callable[[Any, float], Awaitable[bool]] | None = getattr(
            type(budget), "acquire_within", None
        )
        if within is not None:
            granted = await within(budget, retrying.remaining())
        else:
            with anyio.move_on_after(retrying.remaining()) as scope:
                await budget.acquire()
            granted = not scope.cancelled_caught
        if not granted:
            raise RateLimitError(
                "the query rate (or a pause the service asked for) leaves no time to send this "
                "query before its deadline"
            )

    async def _paced(
        self,
        budget: QueryBudget,
        method: Literal["GET", "POST"],
        path: str,
        params: Mapping[str, str] | None,
        retrying: Retrying,
    ) -> dict[str, Any]:
        """Send one query attempt once the budget allows it, and tell the budget how it went.

        The wait for the budget is part of the attempt (a refusal to wait past the deadline is
        raised as it is, never retried), so one coroutine serves each attempt.
        """
        await self._acquire(budget, retrying)
        sent_at = time.monotonic()
        try:
            data = await self._attempt(method, path, params=params, body=None, retrying=retrying)
        except AttemptFailed as failure:
            if isinstance(failure.error, RateLimitError):
                retry_after = failure.retry_after
                if retry_after is not None:
                    retry_after = min(retry_after, self.retry.max_retry_after)
                hold = budget.observe(sent_at=sent_at, refused=True, retry_after=retry_after)
                self._hold_creates(hold)
            raise
        budget.observe(sent_at=sent_at, refused=False)
        return data

    async def _after_failure(self, retrying: Retrying, failure: AttemptFailed) -> bool:
        """Turn a 429's Retry-After into a pause.

        A refused create pauses every create for it (capped). A refused query waits its own
        Retry-After; whether the other queries pause is the query budget's call, except after a
        Retry-After past the cap, which holds everything off for the cap: a wait longer than the
        cap is not a reason to keep asking at full speed.
        """
        server_wait = failure.retry_after
        if (
            not isinstance(failure.error, RateLimitError)
            or server_wait is None
            or failure.safety is not Safety.NOT_SENT
            or retrying.last_attempt
        ):
            return False
        pause = min(server_wait, self.retry.max_retry_after)
        budget = self.query_budget
        if retrying.idempotent and budget is not None:
            if server_wait > self.retry.max_retry_after:
                budget.pause(pause)
                self._hold_creates(pause)
        else:
            self._hold_creates(pause)
        return False

    def _hold_creates(self, seconds: float) -> None:
        if seconds > 0:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def _wait_for_pause(self, deadline: float) -> None:
        if is_testing():
            return
        wait = self._paused_until - time.monotonic()
        if wait > 0:
            if time.monotonic() + wait >= deadline:
                raise RateLimitError(
                    f"the service asked this client to pause {wait:.1f} s, past the deadline",
                    retry_after=wait,
                )
            await anyio.sleep(wait)

    async def create(
        self,
        model: str,
        args: Mapping[str, Any],
        *,
        callback_url: str | None = None,
    ) -> CreateData:
        """Create a job; retry only when the service provably did not create it."""
        body: dict[str, Any] = {"model": model, "args": args}
        if callback_url is not None:
            body["callback_url"] = callback_url
        data = await self._call("POST", CREATE_PATH, body=body, create=True)
        try:
            result, note = create_from_data(data)
        except MalformedResponseError as exc:
            # code 0 says the job exists, but we cannot tell which: the money rule says uncertain.
            raise SubmissionUncertainError(
                f"the service accepted the create but its answer cannot be read ({exc})",
            ) from exc
        if note is not None:
            # The job is known by its id: keep it, and let spend fall back to the estimate.
            logger.warning(
                "job %s created, but its charge is unknown (%s)",
                result.job_id,
                note,
                extra={"job_id": result.job_id},
            )
        return result

    def query(self, job_id: str) -> Coroutine[Any, Any, dict[str, Any]]:
        """Query a job and return the answer's ``data``; retried freely, it changes nothing.

        A plain function returning the call's coroutine (await it): one layer fewer on the
        poller's path.
        """
        return self._call("GET", QUERY_PATH, params={"id": job_id}, create=False, job_id=job_id)
