"""The one entry point, :func:`connect`, and the :class:`SharedState` it returns."""

from __future__ import annotations

import os
import re
import secrets
import socket
from decimal import Decimal
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from .._aio import ClosedOnExit
from .._errors import ConfigurationError
from .._shared import SharedStore
from ._bucket import RateBucket, WindowCounters
from ._budget import SharedQueryBudget
from ._core import UNREACHABLE, Keys, Link, check_schema, describe
from ._jobs import JobView
from ._lua import Script
from ._reader import StreamReader
from ._receiving import CallbackTokens
from ._spend import SharedSpendCounter, Window
from ._tokens import TokenRegistry

__all__ = ["SharedState", "connect"]

_NAMESPACE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_WORKER: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MIN_SERVER: Final = (6, 2)


class SharedState(Link, ClosedOnExit):
    """State shared by every process that connects with the same namespace.

    Made by :func:`connect`; close it with :meth:`aclose` or ``async with``. It owns one connection
    pool and a few background tasks (the heartbeat, the watch for a lost server, lease renewals,
    the one stream reader of the process), and must be used in the event loop it was made in.

    Attributes:
        namespace: the prefix of every key.
        worker_id: this process's name among the workers of the namespace.
        address: where the server is (without any password).
        jobs: job ends seen by any process: publish, get, wait.
        tokens: callback tokens of every worker, forwarding to their owners.
    """

    def __init__(self, redis: Redis, **link: Any) -> None:
        super().__init__(redis, **link)  # the link's settings, as :class:`Link` takes them
        reader = StreamReader(self)
        self.jobs = JobView(self, reader)
        self.tokens = TokenRegistry(self, reader)
        self._callback_tokens: CallbackTokens | None = None

    def callback_tokens(self) -> CallbackTokens:
        """Return what a :class:`~shortwan.callbacks.CallbackReceiver` shares through.

        Pass the state itself to the receiver (``CallbackReceiver(shared=state)``); this is the
        part of it the receiver uses: its tokens mirrored to :attr:`tokens`, callbacks routed
        to their workers, and the ends of jobs taken over published to :attr:`jobs`.
        """
        if self._callback_tokens is None:
            self._callback_tokens = CallbackTokens(self, self.tokens, self.jobs)
        return self._callback_tokens

    async def spend_counter(
        self,
        limit: Decimal | str | int | None,
        *,
        name: str = "default",
        window: Window | None = None,
        lease: float = 60.0,
    ) -> SharedSpendCounter:
        """Open the spend counter ``name``, shared by every process of the namespace.

        Args:
            limit: the cap in USD (rounded down to a micro-dollar). The first process to open
                the counter sets it; a later one asking for another is refused
                (:meth:`SharedSpendCounter.set_limit` changes it for all). ``None`` follows the
                limit already set.
            name: several counters may live in one namespace.
            window: ``"day"`` or ``"month"`` caps what is spent in each UTC day or month, by the
                server's clock; ``None`` caps the total.
            lease: seconds a reservation lives on the server unless its process settles it or
                renews it (every third of it, while the create is under way).

        Raises:
            ConfigurationError: the counter exists with another limit or window, or has no limit
                and none was given.
            SharedStateError: Redis could not be reached.
        """
        _check_name(name)
        return await SharedSpendCounter.open(self, limit, name=name, window=window, lease=lease)

    def rate_bucket(
        self, name: str = "queries", *, rate: float, burst: int = 1, max_pause: float = 60.0
    ) -> RateBucket:
        """Return the token bucket ``name``; ``rate`` applies until a process sets another."""
        return RateBucket(self, _check_name(name), rate=rate, burst=burst, max_pause=max_pause)

    def query_budget(
        self, ceiling: float, *, name: str = "queries", floor: float | None = None
    ) -> SharedQueryBudget:
        """Return the query budget ``name``: one rate and one pause for every process.

        Give it to ``AsyncShortWan(query_budget=...)`` (``AsyncShortWan(shared=...)`` does so by
        itself). ``ceiling`` is the combined rate of every process, in queries per second; the
        rate controller's cuts and the service's pauses apply to all of them.
        """
        return SharedQueryBudget(self, name=_check_name(name), ceiling=ceiling, floor=floor)

    def window_counters(self, name: str = "queries", *, horizon: int = 120) -> WindowCounters:
        """Return the per-second counters ``name``, readable over the last ``horizon`` seconds."""
        return WindowCounters(self, _check_name(name), horizon=horizon)

    async def __aenter__(self) -> SharedState:
        return self


def _check_name(name: str) -> str:
    value: object = name
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigurationError(f"a name is 1-64 letters, digits, - or _, got {name!r}")
    return name


def _address(url: str) -> str:
    # For messages and reprs: where the server is, never the password the URL may carry.
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 0
    return f"{parts.scheme}://{parts.hostname or 'localhost'}:{port}/{parts.path.strip('/') or 0}"


def _default_worker_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


async def connect(
    url: str,
    *,
    namespace: str,
    worker_id: str | None = None,
    connect_timeout: float = 2.0,
    command_timeout: float = 5.0,
    heartbeat: float = 15.0,
    max_connections: int = 64,
) -> SharedState:
    """Connect to Redis and return the shared state of ``namespace``.

    Nothing of the API key is ever written to Redis: only spend figures, job ends, digests of
    callback tokens, callback bodies on their way to a worker, and worker names.

    Args:
        url: ``redis://[[user]:[password]@]host[:port][/db]``, ``rediss://`` for TLS, or
            ``unix:///path/to.sock``.
        namespace: the prefix of every key (letters, digits, ``_.-``); every process that shares
            a cap, a rate or job ends uses the same one. Give shortwan a namespace of its own.
        worker_id: this process's name among the workers; by default host, pid and a random part.
        connect_timeout: seconds to wait for a connection.
        command_timeout: seconds to wait for an answer.
        heartbeat: seconds a worker counts as alive after its last heartbeat (sent every third of
            it); a worker that dies is seen gone after at most this long.
        max_connections: the pool's size.

    Raises:
        ConfigurationError: a bad URL, namespace or setting; a server that cannot be reached or
            is older than Redis 6.2; a namespace that holds other data or another version's.
    """
    given: object = namespace
    if not isinstance(given, str) or not _NAMESPACE.fullmatch(given):
        raise ConfigurationError(
            "namespace must be 1-64 letters, digits or _.-, starting with a letter or digit; "
            f"got {namespace!r}"
        )
    worker_id = _default_worker_id() if worker_id is None else worker_id
    worker: object = worker_id
    if not isinstance(worker, str) or not _WORKER.fullmatch(worker):
        raise ConfigurationError(f"worker_id must be 1-128 letters, digits or _.-: {worker_id!r}")
    for label, value in (
        ("connect_timeout", connect_timeout),
        ("command_timeout", command_timeout),
        ("heartbeat", heartbeat),
    ):
        if not 0 < value < float("inf"):
            raise ConfigurationError(f"{label} must be a positive number of seconds: {value!r}")
    where: object = url
    if not isinstance(where, str):
        raise ConfigurationError(f"the Redis URL must be a string, got {type(url).__name__}")
    address = _address(url)
    try:
        # A caller waits for a free connection (up to the command timeout) rather than failing
        # when many tasks call at once: a full pool is not an outage.
        pool = BlockingConnectionPool.from_url(
            url,
            timeout=command_timeout,
            socket_connect_timeout=connect_timeout,
            socket_timeout=command_timeout,
            # One quick retry covers a pooled connection the server closed; anything longer is an
            # outage, and callers must hear of it at once (a reservation fails closed).
            retry=Retry(NoBackoff(), 1),
            max_connections=max_connections,
            client_name=f"shortwan-{worker_id}"[:100],
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"not a Redis URL ({address}): {exc}") from exc
    redis = Redis.from_pool(pool)
    state: SharedState | None = None
    try:
        keys = Keys(namespace)
        try:
            info = await redis.info("server")
            version = str(info.get("redis_version", "0"))
            if tuple(int(part) for part in version.split(".")[:2]) < _MIN_SERVER:
                raise ConfigurationError(
                    f"Redis at {address} is version {version}; shortwan needs 6.2 or newer"
                )
            await check_schema(redis, keys, namespace)
            await Script.load_all(redis)
            await redis.set(keys.worker(worker_id), "1", px=int(heartbeat * 1000))
        except (*UNREACHABLE, ResponseError) as exc:
            raise ConfigurationError(f"cannot use Redis at {address}: {describe(exc)}") from exc
        # A call waits for a pooled connection, then makes at most two tries (the retry above),
        # each a connection and an answer; what a process asks at once may wait for the round
        # before it and go with a write: three calls, the longest any wait on Redis can be.
        longest_call = 3 * (command_timeout + 2 * (connect_timeout + command_timeout))
        state = SharedState(
            redis,
            namespace=namespace,
            worker_id=worker_id,
            address=address,
            heartbeat=heartbeat,
            longest_call=longest_call,
        )
        await state.start()
    except BaseException:
        with anyio.CancelScope(shield=True):
            if state is not None:
                await state.aclose()
            else:
                await redis.aclose()
        raise
    return state


def _as_store(state: SharedState) -> SharedStore:
    """Return ``state`` as what ``AsyncShortWan(shared=...)`` takes: the type checker proves it."""
    return state
