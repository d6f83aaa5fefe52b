"""What every shared piece stands on: the key layout, the schema check, and :class:`Link`.

Every call to Redis goes through :meth:`Link.call`, which turns a lost connection into a
:class:`~shortwan.SharedStateError` and notices when the server is back: then the schema marker is
written again (a restarted server without persistence has forgotten it), the scripts are loaded
again, and the pieces that kept work for later (a settle that could not be written) apply it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final, TypeVar

import anyio
from anyio.abc import TaskGroup
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from .._aio import wait_through_cancellation
from .._errors import ConfigurationError, SharedStateError
from ._grouped import Grouped
from ._lua import Call, Script, run_bundled

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "UNREACHABLE",
    "Keys",
    "Link",
    "check_schema",
    "describe",
    "text",
]

logger = logging.getLogger("shortwan")

SCHEMA: Final = "shortwan.redis"
SCHEMA_VERSION: Final = 1
"""Bumped whenever the key layout or a value's shape changes; other versions are refused."""

# While the server is unreachable, it is asked again this often.
_RETRY_EVERY: Final = 0.25
# The longest the closing steps (room given back to a shared cap) may take.
_CLOSING: Final = 1.0
UNREACHABLE: Final = (RedisConnectionError, RedisTimeoutError, OSError)

T = TypeVar("T")


def text(value: object) -> str:
    """Return a reply element (bytes from the server) as text."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def describe(exc: BaseException) -> str:
    """Return an error's message, or its class name when it has none."""
    return str(exc) or type(exc).__name__


class Keys:
    """The key layout of one namespace; every key shortwan writes starts with ``{namespace}:``."""

    __slots__ = ("prefix",)

    def __init__(self, namespace: str) -> None:
        self.prefix = namespace + ":"

    @property
    def schema(self) -> str:
        """The schema marker: which program and which version wrote this namespace."""
        return self.prefix + "schema"

    def worker(self, worker_id: str) -> str:
        """A worker's heartbeat: present while the process is alive."""
        return f"{self.prefix}worker:{worker_id}"

    def spend(self, name: str) -> str:
        """The prefix of one spend counter's keys (its settings, books, leases, done marks)."""
        return f"{self.prefix}spend:{name}"

    def job(self, job_id: str) -> str:
        """One job's end, as a process saw it."""
        return f"{self.prefix}job:{job_id}"

    def polling(self, job_id: str) -> str:
        """Which worker polls a job: only that one queries it, the others wait on its end."""
        return f"{self.prefix}polling:{job_id}"

    @property
    def ends(self) -> str:
        """The stream announcing every job end published in the namespace."""
        return self.prefix + "ends"

    def token(self, digest: bytes) -> str:
        """What a callback token (known by its SHA-256 digest only) stands for."""
        return f"{self.prefix}token:{digest.hex()}"

    def inbox(self, worker_id: str) -> str:
        """The stream of callbacks forwarded to one worker."""
        return f"{self.prefix}inbox:{worker_id}"

    def bucket(self, name: str) -> str:
        """A shared token bucket: its rate, next free slot and pause."""
        return f"{self.prefix}bucket:{name}"

    def counts(self, name: str) -> str:
        """The prefix of one set of per-second counters."""
        return f"{self.prefix}counts:{name}"

    def budget(self, name: str) -> str:
        """A shared query budget: its rate curve, pause and next free slot."""
        return f"{self.prefix}budget:{name}"


def _marker() -> str:
    return json.dumps({"schema": SCHEMA, "version": SCHEMA_VERSION}, separators=(",", ":"))


class Link:
    """One connection pool to one namespace, its health, and the background work of its pieces.

    Attributes:
        redis: the client (it owns the pool).
        namespace: the prefix of every key.
        keys: the key layout of the namespace.
        worker_id: this process's name among the workers of the namespace.
        address: where the server is (without any password).
        heartbeat: seconds this worker counts as alive after its last heartbeat.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str,
        worker_id: str,
        address: str,
        heartbeat: float,
        longest_call: float = math.inf,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.worker_id = worker_id
        self.address = address
        self.keys = Keys(namespace)
        self.heartbeat = heartbeat
        # The longest a call can take before redis-py's own timeouts end it (inf: unknown).
        self.longest_call = longest_call
        self._online = True
        self._back = anyio.Event()
        self._refused: ConfigurationError | None = None
        self._closed = False
        self._closing = False
        self._on_recovery: list[Callable[[], Awaitable[None]]] = []
        self._on_close: list[Callable[[], Awaitable[None]]] = []
        # The connection rounds of script calls go on (see _bundled), while none is under way.
        self._own: AbstractConnection | None = None
        self._task_group: TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._started = anyio.Event()
        self.grouped = Grouped(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "online" if self._online else "offline"
        return (
            f"<{type(self).__name__} {self.address} namespace={self.namespace!r} "
            f"worker={self.worker_id!r} {state}>"
        )

    @property
    def online(self) -> bool:
        """Whether the server answered the last call (or heartbeat) made to it."""
        return self._online

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called (every call is then refused)."""
        return self._closed

    # --- calls ---------------------------------------------------------------------------------

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        """Run a registered script, along with the other script calls made at the same moment.

        Every piece sharing this link calls through one :class:`Grouped`, so what they ask at
        once costs one round trip. Errors are those of :meth:`call`.
        """
        if self._closed:
            raise RuntimeError("the shared state is closed")
        if self._task_group is None:  # not started yet: on its own
            return await self.call(lambda: script(self.redis, keys, args))
        return await self.grouped.call(script, args, keys=keys)

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Await ``operation()`` (a call to Redis), translating its failures.

        Raises:
            SharedStateError: the server could not be reached or refused the call.
            RuntimeError: the state was closed.
        """
        if self._closed:
            raise RuntimeError("the shared state is closed")
        if self._refused is not None:
            raise SharedStateError(str(self._refused)) from self._refused
        try:
            result = await operation()
        except UNREACHABLE as exc:
            self._lost(exc)
            raise SharedStateError(
                f"Redis at {self.address} is unreachable: {describe(exc)}"
            ) from exc
        except RedisError as exc:
            raise SharedStateError(f"Redis at {self.address} refused a call: {exc}") from exc
        return result

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Run several script calls, in order, in one round trip (see :func:`run_bundled`).

        A call the server refused is answered by a :class:`~shortwan.SharedStateError` in its
        place; the others stand.

        Raises:
            SharedStateError: the server could not be reached (some calls may have run).
        """
        replies = await self.call(lambda: self._bundled(calls))
        return [
            SharedStateError(f"Redis at {self.address} refused a call: {reply}")
            if isinstance(reply, RedisError)
            else reply
            for reply in replies
        ]

    async def _bundled(self, calls: Sequence[Call]) -> list[Any]:
        # On a connection of its own while none is in use (one round at a time goes through
        # here), kept from one round to the next: taking one from the pool for each round costs
        # the client about as much as the round trip itself.
        conn = await self._connection()  # a server that refuses it is not asked twice
        try:
            return await self._bundled_on(conn, calls)
        except RedisConnectionError:
            # Closed under it (a server restarted since the connection was last used): once
            # more on a new connection, as redis-py's own retry would.
            return await self._bundled_on(await self._connection(), calls)

    async def _bundled_on(self, conn: AbstractConnection, calls: Sequence[Call]) -> list[Any]:
        try:
            replies = await run_bundled(conn, calls)
        except BaseException:
            # Lost, timed out or cancelled half way: what is left on it cannot be trusted.
            with anyio.CancelScope(shield=True):
                await conn.disconnect()
                await self.redis.connection_pool.release(conn)
            raise
        await self._keep(conn)
        return replies

    async def _connection(self) -> AbstractConnection:
        conn, self._own = self._own, None
        if conn is not None and not await _still_open(conn):
            await self.redis.connection_pool.release(conn)
            conn = None
        if conn is None:
            conn = await self.redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        return conn

    async def _keep(self, conn: AbstractConnection) -> None:
        if self._own is None and not self._closed:
            self._own = conn
        else:
            await self.redis.connection_pool.release(conn)

    def on_recovery(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook()`` every time the server is reachable again after a failure."""
        self._on_recovery.append(hook)

    def on_close(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook()`` when the state closes, while calls can still be made (for a moment)."""
        self._on_close.append(hook)

    async def wait_online(self) -> None:
        """Return once the server is reachable (at once if it is)."""
        while not self._online:
            await self._back.wait()

    def spawn(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``func()`` in the state's task group; it is cancelled by :meth:`aclose`."""
        if self._task_group is None or self._closed:
            raise RuntimeError("the shared state is not running")
        self._task_group.start_soon(func)

    def _lost(self, exc: BaseException) -> None:
        if self._online:
            self._online = False
            self._back = anyio.Event()
            logger.warning(
                "Redis at %s is unreachable (%s); shared state waits for it to come back",
                self.address,
                describe(exc),
            )

    # --- lifetime ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background work: the heartbeat and the watch for a lost server."""
        self._runner = asyncio.get_running_loop().create_task(
            self._run(), name="shortwan-redis-state"
        )
        await self._started.wait()

    async def _run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            tg.start_soon(self._beat)
            self._started.set()
            await anyio.sleep_forever()

    async def _beat(self) -> None:
        # One loop keeps the heartbeat fresh and, while the server is unreachable, asks for it
        # often: when it answers again, what was kept for it is applied.
        key = self.keys.worker(self.worker_id)
        ttl = int(self.heartbeat * 1000)
        while True:
            try:
                previous = await self.redis.set(key, "1", px=ttl, get=True)
            except UNREACHABLE as exc:
                self._lost(exc)
            except RedisError as exc:
                logger.warning("the heartbeat of worker %s failed: %s", self.worker_id, exc)
            else:
                # A heartbeat that was not there any more means the server lost its data (a
                # restart without persistence, too quick for any call to fail): recover as
                # after an outage, so what lived there is written again.
                if not self._online or previous is None:
                    await self._recover()
            await anyio.sleep(self.heartbeat / 3 if self._online else _RETRY_EVERY)

    async def _recover(self) -> None:
        try:
            await check_schema(self.redis, self.keys, self.namespace, recovering=True)
            await Script.load_all(self.redis)
        except ConfigurationError as exc:
            self._refused = exc
            logger.error("%s; shared state stops", exc)  # noqa: TRY400 - no traceback to show
            return
        except (*UNREACHABLE, RedisError) as exc:
            self._lost(exc)
            return
        self._online = True
        self._back.set()
        logger.info("Redis at %s is reachable again; shared state resumes", self.address)
        for hook in self._on_recovery:
            try:
                await hook()
            except SharedStateError as exc:
                logger.warning("recovery step failed, retried on the next recovery: %s", exc)

    async def aclose(self) -> None:
        """Stop the background work, say this worker is gone, and close the pool. Idempotent."""
        if self._closed or self._closing:
            return
        self._closing = True
        if self._online and self._task_group is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSING):
                for hook in self._on_close:
                    try:
                        await hook()
                    except SharedStateError as exc:
                        logger.info("a closing step could not reach Redis: %s", exc)
        self._closed = True
        runner, self._runner = self._runner, None
        cancelled = None
        if runner is not None:
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
            else:
                runner.cancel()
            cancelled = await wait_through_cancellation({runner})
            if not runner.cancelled() and runner.exception() is not None:
                logger.error("shared state stopped with an error", exc_info=runner.exception())
        self._task_group = None
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(1.0):
                    # Others then see at once that this worker's callbacks must go elsewhere.
                    await self.redis.delete(self.keys.worker(self.worker_id))
            except (*UNREACHABLE, RedisError, TimeoutError):
                pass  # the heartbeat expires on its own
            own, self._own = self._own, None
            if own is not None:
                await self.redis.connection_pool.release(own)
            await self.redis.aclose()
        if cancelled is not None:
            raise cancelled


async def _still_open(conn: AbstractConnection) -> bool:
    """Whether ``conn`` is connected with nothing unread on it (cheap: no system call)."""
    if not conn.is_connected:
        return False
    try:
        dirty = await conn.can_read()
    except RedisConnectionError:
        return False
    if dirty:
        await conn.disconnect()
    return not dirty


async def check_schema(
    redis: Redis, keys: Keys, namespace: str, *, recovering: bool = False
) -> None:
    """Write the schema marker of an empty namespace, or check the one there.

    A namespace without a marker but with keys is refused at connect. ``recovering`` says the
    namespace was checked before and the server lost the marker since (a restart without
    persistence, where the workers' own keys may already be back): it is written again.

    Raises:
        ConfigurationError: the namespace holds another program's data, or shortwan's of another
            version.
    """
    found = await redis.get(keys.schema)
    if found is None and not recovering:
        async for key in redis.scan_iter(match=keys.prefix + "*", count=1000):
            found = await redis.get(keys.schema)
            if found is not None:
                break  # another process connecting at the same moment wrote it meanwhile
            raise ConfigurationError(
                f"the Redis namespace {namespace!r} holds keys that shortwan did not write "
                f"(such as {text(key)!r}) and no schema marker; give "
                "shortwan a namespace of its own"
            )
    if found is None:
        if await redis.set(keys.schema, _marker(), nx=True):
            return
        found = await redis.get(keys.schema)
    try:
        marker = json.loads(found) if found is not None else None
    except ValueError:
        marker = None
    if marker == json.loads(_marker()):
        return
    if isinstance(marker, dict) and marker.get("schema") == SCHEMA:
        raise ConfigurationError(
            f"the Redis namespace {namespace!r} holds shortwan data of schema version "
            f"{marker.get('version')!r}, and this shortwan speaks version {SCHEMA_VERSION}; "
            "use another namespace or the matching shortwan version"
        )
    raise ConfigurationError(
        f"the Redis namespace {namespace!r} holds data of another shape (its schema marker is "
        f"{text(found or b'')[:80]!r}); give shortwan a namespace of its own"
    )
