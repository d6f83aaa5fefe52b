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
from ._lua import Call, Script, run_bundled

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "UNREACHABLE",
    "Grouped",
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

# How long a round waits after its first call for others to join it, while calls come in bursts.
_GATHER: Final = 0.001
# The longest a lazy call (work nobody waits on, such as a settle) waits for a round trip that
# another call starts before it starts one of its own.
_LAZY: Final = 0.02
# While the server is unreachable, it is asked again this often.
_RETRY_EVERY: Final = 0.25
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
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.worker_id = worker_id
        self.address = address
        self.keys = Keys(namespace)
        self.heartbeat = heartbeat
        self._online = True
        self._back = anyio.Event()
        self._refused: ConfigurationError | None = None
        self._closed = False
        self._on_recovery: list[Callable[[], Awaitable[None]]] = []
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
        for attempt in (1, 2):
            conn = await self._connection()
            try:
                replies = await run_bundled(conn, calls)
            except BaseException as exc:
                # Lost, timed out or cancelled half way: what is left on it cannot be trusted.
                with anyio.CancelScope(shield=True):
                    await conn.disconnect()
                    await self.redis.connection_pool.release(conn)
                if attempt == 1 and isinstance(exc, RedisConnectionError):
                    # Closed under it (a server restarted since the connection was last used):
                    # once more on a new connection, as redis-py's own retry would.
                    continue
                raise
            await self._keep(conn)
            return replies
        raise AssertionError("unreachable")  # pragma: no cover

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
        if self._closed:
            return
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


class Grouped:
    """Script calls made by many tasks at once, sent together, in the order they were made.

    The first call starts a round trip; the calls made while it is on its way go together in the
    next one, so a burst of calls costs a few round trips, not one each. The server runs them in
    order. When the server cannot be reached, every call waiting at that moment fails too: none
    runs after one that was lost.
    """

    def __init__(self, link: Link) -> None:
        self._link = link
        self._waiting: list[tuple[Call, asyncio.Future[Any]] | Merged] = []
        # The merged calls in _waiting, by key: a caller with the same key joins one of them.
        self._merging: dict[object, Merged] = {}
        self._callers = 0  # callers of the calls in _waiting
        # One task sends every round, started by the first call and woken by the next ones: a
        # wake-up costs less than a task.
        self._wake: asyncio.Event | None = None
        self._busy = False  # the last round served more than one caller
        # Wakes the task for calls that wait for a round (see call's ``lazy``).
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._due = False  # _waiting holds a call that is not lazy, or lazy ones waited enough

    async def call(
        self,
        script: Script,
        args: Sequence[EncodableT],
        *,
        keys: Sequence[str] = (),
        lazy: bool = False,
    ) -> Any:
        """Run ``script`` with ``keys`` and ``args`` along with the others; return its reply.

        A ``lazy`` call does not start a round trip of its own: it goes with the next one that
        another call starts, or after _LAZY at the latest (for work nobody waits on).

        Raises:
            SharedStateError: the server could not be reached, or refused this call.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(((script, keys, args), future), lazy=lazy)
        try:
            reply = await future
        except BaseException:
            if not future.cancel() and not future.cancelled():
                future.exception()  # seen, so it is not reported as never retrieved
            raise
        if isinstance(reply, SharedStateError):
            raise reply
        return reply

    async def call_all(self, calls: Sequence[Call]) -> list[Any]:
        """Run ``calls`` in order, in the same round trip; return each reply.

        A call the server refused is answered by a :class:`~shortwan.SharedStateError` in its
        place (and the calls after it still run).

        Raises:
            SharedStateError: the server could not be reached (some calls may have run).
        """
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in calls]
        for call, future in zip(calls, futures, strict=True):
            self._enqueue((call, future))
        try:
            return [await future for future in futures]
        except BaseException:
            for future in futures:  # a caller that leaves takes none of its replies
                if not future.cancel() and not future.cancelled():
                    future.exception()  # seen, so it is not reported as never retrieved
            raise

    async def call_merged(
        self,
        key: object,
        script: Script,
        keys: Sequence[str],
        args: Callable[[list[Any]], Sequence[EncodableT]],
        item: Any = None,
    ) -> tuple[Any, int]:
        """Join the call of ``key`` still waiting to go, or start one; return its reply and place.

        Callers that ask for the same thing at once share one call, made when the round leaves:
        ``args(items)`` gives its arguments for the ``item`` of each caller that joined, in the
        order they joined, and its script serves them all (the first caller's place is 0). What
        they share costs one call, not one each.

        Raises:
            SharedStateError: as for :meth:`call`.
        """
        merged = self._merging.get(key)
        if merged is None:
            merged = Merged(script, keys, args)
            self._enqueue(merged)  # refused by a closed state before anything is kept
            self._merging[key] = merged
        else:
            self._callers += 1
        future: asyncio.Future[tuple[Any, int]] = asyncio.get_running_loop().create_future()
        merged.futures.append(future)
        merged.items.append(item)
        reply, place = await future
        if isinstance(reply, SharedStateError):
            # One error object each: raised in many tasks, a shared one would collect all their
            # tracebacks.
            raise type(reply)(*reply.args)
        return reply, place

    def _enqueue(
        self, entry: tuple[Call, asyncio.Future[Any]] | Merged, *, lazy: bool = False
    ) -> None:
        if self._wake is None:
            self._link.spawn(self._send)  # refused by a closed state, before anything is queued
            self._wake = asyncio.Event()
        self._waiting.append(entry)
        self._callers += 1
        if not lazy:
            self._due = True
            self._wake.set()
        elif self._lazy_timer is None:
            self._lazy_timer = asyncio.get_running_loop().call_later(_LAZY, self._lazy_due)

    def _lazy_due(self) -> None:
        self._lazy_timer = None
        self._due = True
        if self._wake is not None:
            self._wake.set()

    def _take_waiting(self) -> list[tuple[Call, asyncio.Future[Any]] | Merged]:
        batch, self._waiting = self._waiting, []
        self._merging.clear()  # those taken are on their way: nobody joins them any more
        self._busy = self._callers > 1
        self._callers = 0
        self._due = False
        if self._lazy_timer is not None:  # the lazy calls go with these
            self._lazy_timer.cancel()
            self._lazy_timer = None
        return batch

    async def _send(self) -> None:
        batch: list[tuple[Call, asyncio.Future[Any]] | Merged] = []
        try:
            while True:
                assert self._wake is not None  # noqa: S101 - set by the call that started this
                await self._wake.wait()
                if self._busy:
                    # Calls come many at a time lately: a moment for the others woken with the
                    # first one, so a burst costs one round trip, not one each. (A lone caller
                    # is not kept waiting.)
                    await asyncio.sleep(_GATHER)
                self._wake.clear()
                while self._waiting and self._due:
                    batch = self._take_waiting()
                    await self._round(batch)
                    batch = []
        finally:
            self._wake = None
            for entry in [*batch, *self._take_waiting()]:
                _fail(entry, "the shared state is closing")

    async def _round(self, batch: list[tuple[Call, asyncio.Future[Any]] | Merged]) -> None:
        calls = [entry.call() if isinstance(entry, Merged) else entry[0] for entry in batch]
        try:
            replies = await self._link.run_many(calls)
        except (SharedStateError, RuntimeError) as exc:  # unreachable, or closed
            for entry in [*batch, *self._take_waiting()]:
                _fail(entry, str(exc))
            return
        for entry, reply in zip(batch, replies, strict=True):
            if isinstance(entry, Merged):
                entry.answer(reply)
            elif not entry[1].done():  # else its caller was cancelled
                entry[1].set_result(reply)


class Merged:
    """One call that several callers share (see :meth:`Grouped.call_merged`)."""

    __slots__ = ("args", "futures", "items", "keys", "script")

    def __init__(
        self,
        script: Script,
        keys: Sequence[str],
        args: Callable[[list[Any]], Sequence[EncodableT]],
    ) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.futures: list[asyncio.Future[tuple[Any, int]]] = []
        self.items: list[Any] = []

    def call(self) -> Call:
        """Return the call for every caller that joined."""
        return (self.script, self.keys, self.args(self.items))

    def answer(self, reply: Any) -> None:
        """Give each caller the reply and its place."""
        for place, future in enumerate(self.futures):
            if not future.done():  # else its caller was cancelled
                future.set_result((reply, place))


def _fail(entry: tuple[Call, asyncio.Future[Any]] | Merged, why: str) -> None:
    futures = entry.futures if isinstance(entry, Merged) else [entry[1]]
    for future in futures:
        if not future.done():
            # One error object each: raised in many tasks, a shared one would collect all
            # their tracebacks.
            future.set_exception(SharedStateError(why))


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
