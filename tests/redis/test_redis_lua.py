"""Script calls run as bundles: one command for many calls, each answered as if it ran alone."""

from __future__ import annotations

import itertools
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import DataError, ResponseError
from redis_harness import RedisServer, count_round_trips

from shortwan import SharedStateError
from shortwan.redis import SharedState, connect
from shortwan.redis._grouped import _LAZY
from shortwan.redis._lua import _BUNDLE, Call, Script, _decode, run_bundled

pytestmark = pytest.mark.anyio

# ARGV: a key, an amount. Adds it and returns the new total.
ADD = Script("return redis.call('INCRBY', ARGV[1], ARGV[2])")
# KEYS: a key. Returns its value, or nothing (nil) when it is missing.
GET = Script("return redis.call('GET', KEYS[1])")
# ARGV: a key. Pushes onto it, then fails: the write before the error stands, as in a run alone.
FAIL = Script("redis.call('RPUSH', ARGV[1], 'before')\nreturn redis.error_reply('refused here')")
# A Lua error of the script's own (not a reply): reported as the call's error.
BROKEN = Script("local t = nil\nreturn t.field")
# Several values of several kinds, and one that uses the shared helpers.
MIXED = Script("return {1, 'two', {3}, int(4.0)}")
DAY = Script("return window_at('day', 0)", calendar=True)
# Its keys and arguments as they arrived.
ECHO = Script("return {KEYS, ARGV}")


class Adding:
    """A merged ADD of 1 for each caller; notes each call's number of callers in ``made``."""

    def __init__(self, key: str, made: list[int]) -> None:
        self.key, self.made = key, made

    def args(self, items: list[Any]) -> tuple[str, int]:
        self.made.append(len(items))
        return (self.key, len(items))


class Counting:
    """A merged ADD of 1 for each caller to ``key``."""

    def __init__(self, key: str) -> None:
        self.key = key

    def args(self, items: list[Any]) -> tuple[str, int]:
        return (self.key, len(items))


class Fixed:
    """A merged call with the same arguments however many join it."""

    def __init__(self, args: tuple[str, ...]) -> None:
        self.fixed = args

    def args(self, items: list[Any]) -> tuple[str, ...]:
        return self.fixed


async def evalsha_calls(state: SharedState) -> int:
    stats = await state.redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def run_in_bundles(state: SharedState, calls: list[Call]) -> list[Any]:
    """Run ``calls`` as bundles on a connection of the pool, as the shared state does."""
    pool = state.redis.connection_pool
    conn = await pool.get_connection()
    try:
        return await run_bundled(conn, calls)
    finally:
        await pool.release(conn)


async def alone(state: SharedState, call: Call) -> Any:
    script, keys, args = call
    try:
        return await script(state.redis, keys, args)
    except ResponseError as exc:
        return exc


async def test_each_call_answered_as_if_run_alone(shared: SharedState, namespace: str) -> None:
    key, missing, listed = f"{namespace}:n", f"{namespace}:none", f"{namespace}:list"
    calls: list[Call] = [
        (ADD, (), (key, 5)),
        (GET, (key,), ()),
        (GET, (missing,), ()),
        (FAIL, (), (listed,)),
        (ADD, (), (key, 2)),
        (BROKEN, (), ()),
        (MIXED, (), ()),
        (DAY, (), ()),
    ]
    await run_in_bundles(shared, calls)  # the server learns the bundle
    await shared.redis.delete(key, listed)
    runs = await evalsha_calls(shared)
    bundled = await run_in_bundles(shared, calls)
    assert await evalsha_calls(shared) - runs == 1  # one command for all eight calls
    assert bundled[:3] == [5, b"5", None]
    assert isinstance(bundled[3], ResponseError)
    assert "refused here" in str(bundled[3])
    assert bundled[4] == 7  # the calls after an error still ran, in order
    assert isinstance(bundled[5], ResponseError)
    assert bundled[6:] == [[1, b"two", [3], b"4"], b"d1970-01-01"]
    assert await shared.redis.lrange(listed, 0, -1) == [b"before"]  # its write stands

    await shared.redis.delete(key, listed)
    one_by_one = [await alone(shared, call) for call in calls]
    assert [r for r in one_by_one if not isinstance(r, ResponseError)] == [
        r for r in bundled if not isinstance(r, ResponseError)
    ]
    assert [isinstance(r, ResponseError) for r in one_by_one] == [
        isinstance(r, ResponseError) for r in bundled
    ]
    assert str(one_by_one[3]) == str(bundled[3])


async def test_many_calls_in_order_over_several_runs(shared: SharedState, namespace: str) -> None:
    key = f"{namespace}:n"
    n = 2 * _BUNDLE + 7
    calls: list[Call] = [(ADD, (), (key, 1)) for _ in range(n)]
    calls[_BUNDLE + 1] = (FAIL, (), (f"{namespace}:list",))
    replies = await run_in_bundles(shared, calls)
    assert len(replies) == n
    assert isinstance(replies[_BUNDLE + 1], ResponseError)
    counts = [r for r in replies if not isinstance(r, ResponseError)]
    assert counts == list(range(1, n))  # each ran once, in the order given
    assert await run_in_bundles(shared, []) == []


async def test_lost_scripts_loaded_and_each_call_run_once(
    shared: SharedState, namespace: str
) -> None:
    """A server that forgot its scripts (a restart) refuses the runs before they run: they are
    sent again once loaded, and no call runs twice."""
    key = f"{namespace}:n"
    calls: list[Call] = [(ADD, (), (key, 1)) for _ in range(_BUNDLE + 3)]
    await run_in_bundles(shared, calls)  # both bundles known to the server
    await shared.redis.script_flush()
    replies = await run_in_bundles(shared, calls)
    assert replies == list(range(len(calls) + 1, 2 * len(calls) + 1))
    await shared.redis.script_flush()
    assert await run_in_bundles(shared, calls[:1]) == [2 * len(calls) + 1]


async def test_any_bytes_arrive_as_sent(shared: SharedState) -> None:
    """Keys and arguments travel inside one packed argument each: colons, digits, empty values,
    bytes that are not UTF-8 and numbers arrive exactly as redis-py would have sent them."""
    values = ["", "1:2:3", "12:", b"\xff\x00:\n", "é", 7, -3, 2**70, 0.25, 1e-7, "9" * 300]
    calls: list[Call] = [
        (ECHO, (), values),
        (ECHO, ("k:1", ""), ()),
        (ECHO, (), ()),
        (ECHO, ("x",), ("y",)),
    ]
    bundled = await run_in_bundles(shared, calls)
    direct = [await alone(shared, call) for call in calls]
    assert bundled == direct
    assert bundled[0][1][3] == b"\xff\x00:\n"
    assert bundled[1] == [[b"k:1", b""], []]
    # A call whose arguments cannot be sent is answered by its own error; the others run.
    bad: list[Call] = [(ECHO, (), ("a",)), (ECHO, (), (None,)), (ECHO, (), ("b",))]  # type: ignore[list-item]
    first, refused, last = await run_in_bundles(shared, bad)
    assert (first, last) == ([[], [b"a"]], [[], [b"b"]])
    assert isinstance(refused, DataError)


async def test_merged_callers_share_one_call_and_learn_their_places(
    shared: SharedState, namespace: str
) -> None:
    """Callers that join one merged call send it once, with their number, and each hears the
    reply and its own place; a caller that comes after it left starts a call of its own."""
    grouped = shared.grouped
    key = f"{namespace}:merged"
    made: list[int] = []
    states: list[Adding] = []

    def start() -> Adding:
        states.append(Adding(key, made))
        return states[-1]

    before = await evalsha_calls(shared)
    results: list[tuple[Any, int]] = []

    async def one(tag: object) -> None:
        reply, place, state = await grouped.call_merged(tag, ADD, (), start)
        assert state in states
        results.append((reply, place))

    async with anyio.create_task_group() as tg:
        for _ in range(25):
            tg.start_soon(one, "tag")
    # The first caller's call may leave alone; the rest share the next one.
    assert sum(made) == 25, made
    assert len(made) <= 2, made
    # Each call's callers hear its reply (the total after it) and places 0, 1, 2, ...
    totals = itertools.accumulate(made)
    for n, total in zip(made, totals, strict=True):
        assert sorted(place for reply, place in results if reply == total) == list(range(n))
    assert int(await shared.redis.get(key)) == 25
    assert await evalsha_calls(shared) - before <= 2
    assert len(states) == len(made)  # one state per call, shared by its callers
    # Another key is another call, even at the same moment.
    made.clear()
    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "a")
        tg.start_soon(one, "b")
    assert sorted(made) == [1, 1]


async def test_merged_callers_each_get_the_error_and_a_cancelled_one_harms_none(
    shared: SharedState,
) -> None:
    """A refused merged call raises SharedStateError in every caller; one caller cancelled
    while waiting leaves the others their answers."""
    grouped = shared.grouped
    errors: list[BaseException] = []

    async def failing() -> None:
        try:
            await grouped.call_merged("fail", FAIL, (), lambda: Fixed(("failed-list",)))
        except SharedStateError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(failing)
    assert len(errors) == 5
    assert all("refused here" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 5  # one error object each

    got: list[tuple[Any, int]] = []

    async def waiting() -> None:
        reply, place, _ = await grouped.call_merged("get", ADD, (), lambda: Counting("merged-n"))
        got.append((reply, place))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(waiting)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await grouped.call_merged("get", ADD, (), lambda: Counting("merged-n"))
    assert len(got) == 4
    assert {reply for reply, _ in got} == {5}  # the cancelled caller's share was still sent


async def test_a_lazy_call_rides_with_the_next_round_or_goes_alone_after_a_moment(
    shared: SharedState, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lazy call starts no round trip of its own while another call comes soon; alone, it
    still goes, after _LAZY."""
    grouped = shared.grouped
    key = f"{namespace}:lazy"
    await grouped.call(ADD, (key, 0))  # the sending task is started
    rounds = count_round_trips(shared, monkeypatch)
    replies: list[Any] = []

    async def lazy() -> None:
        replies.append(await grouped.call(ADD, (key, 1), lazy=True))

    async with anyio.create_task_group() as tg:
        tg.start_soon(lazy)
        await anyio.sleep(_LAZY / 4)
        assert rounds == []  # waiting for company
        replies.append(await grouped.call(ADD, (key, 10)))
    assert rounds == [2]  # one round for both
    assert sorted(replies) == [1, 11]

    started = time.monotonic()
    assert await grouped.call(ADD, (key, 100), lazy=True) == 111
    assert time.monotonic() - started >= _LAZY * 0.9  # alone, after the moment
    assert rounds == [2, 1]


async def test_rounds_keep_one_connection_and_survive_its_loss(
    shared: SharedState, namespace: str
) -> None:
    """Rounds reuse one connection of their own; when the server closes it between rounds, the
    next round goes on a new one, and every call runs once."""
    grouped = shared.grouped
    key = f"{namespace}:conn"
    await grouped.call(ADD, (key, 1))
    own = shared._own
    assert own is not None
    for _ in range(5):
        await grouped.call(ADD, (key, 1))
        assert shared._own is own  # the same one throughout
    host, port = own._writer.get_extra_info("sockname")[:2]  # type: ignore[union-attr]
    await shared.redis.client_kill_filter(addr=f"{host}:{port}")
    assert await grouped.call(ADD, (key, 1)) == 7  # on a new connection, run once
    assert int(await shared.redis.get(key)) == 7


async def test_calls_queued_as_the_state_closes_fail_rather_than_hang(
    redis_server: RedisServer, namespace: str
) -> None:
    """Calls queued before the sending task ever ran still get an answer when the state closes
    at that moment: SharedStateError, not a wait for ever."""
    state = await connect(redis_server.url, namespace=namespace, heartbeat=2.0)
    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            await state.grouped.call(ADD, (f"{namespace}:late", 1))
        except SharedStateError as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(caller)
            # The callers run first and queue their calls; the task that would send them is
            # only scheduled, and the close comes before its first step. (Once it runs, it takes
            # every queued call before it waits for anything: calls still queued here mean it
            # has not run.)
            await anyio.lowlevel.checkpoint()
            assert state.grouped._waiting
            await state.aclose()
    assert len(errors) == 3
    assert all("clos" in str(e) for e in errors)


SHAPES = Script(
    "return {ARGV[1], tonumber(ARGV[2]), {ARGV[3], {}, false}, ARGV[1] == ARGV[3], "
    "redis.status_reply(ARGV[4])}"
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.binary(max_size=64),
    number=st.integers(-(2**52), 2**52),
    third=st.binary(max_size=16),
    status=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=12),
)
async def test_a_bundles_answers_read_as_redis_py_reads_them(
    shared: SharedState, first: bytes, number: int, third: bytes, status: str
) -> None:
    """Whatever bytes, numbers and nesting a script answers, the bundle's one-string answer is
    read as the same values redis-py reads from the script run on its own."""
    call: Call = (SHAPES, (), (first, number, third, status))
    [bundled] = await run_in_bundles(shared, [call])
    assert bundled == await alone(shared, call)


@pytest.mark.parametrize("broken", [b"", b"a2:s1:x", b"s5:abc", b"q1:", b"i12", b"a1:n-", b"s1:xy"])
def test_an_answer_in_a_form_not_understood_is_an_error_not_a_crash(broken: bytes) -> None:
    """A bundle's answer cut short or of an unknown form raises ValueError (or IndexError),
    which run_bundled turns into an error for each call of the run."""
    with pytest.raises((ValueError, IndexError)):
        _decode(broken)
