"""A real redis-server for the tests (free loopback port, no persistence), and worker processes."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from hypothesis import strategies as st

from shortwan.testing._redis_server import (  # noqa: F401 - the tests import them from here
    INSTALL_HINT,
    RedisServer,
    free_port,
    redis_server_binary,
)

if TYPE_CHECKING:
    from shortwan.redis import SharedSpendCounter, SharedState


async def eventually(check: Callable[[], Any], *, timeout: float = 10.0) -> None:
    """Wait until ``await check()`` (or ``check()``) is true."""
    with anyio.fail_after(timeout):
        while True:
            result = check()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return
            await anyio.sleep(0.02)


class Watch:
    """The highest committed figure of a counter, read over and over while a test runs."""

    def __init__(self, cap: SharedSpendCounter) -> None:
        self.cap = cap
        self.worst = Decimal(0)
        self.stop = anyio.Event()

    async def run(self) -> None:
        """Read the books until stopped."""
        while not self.stop.is_set():
            self.worst = max(self.worst, (await self.cap.read()).committed)
            await anyio.sleep(0.005)


CHILD = Path(__file__).with_name("redis_child.py")
CLIENT_CHILD = Path(__file__).with_name("client_child.py")


def count_round_trips(shared: SharedState, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the round trips of ``shared``, each by its number of calls (they still go out)."""
    sizes: list[int] = []
    send = shared.run_many

    async def counted(calls: Any) -> list[Any]:
        sizes.append(len(calls))
        return await send(calls)

    monkeypatch.setattr(shared, "run_many", counted)
    return sizes


def child_command(
    role: str, url: str, namespace: str, options: dict[str, Any], *, script: Path = CHILD
) -> list[str]:
    """Return the command line of one worker process of the tests (``script`` plays it)."""
    return [sys.executable, str(script), role, url, namespace, json.dumps(options)]


async def run_child(
    role: str,
    url: str,
    namespace: str,
    options: dict[str, Any],
    *,
    timeout: float = 60,
    script: Path = CHILD,
) -> list[dict[str, Any]]:
    """Run one worker process to its end; return the JSON lines it printed."""
    command = child_command(role, url, namespace, options, script=script)
    with anyio.fail_after(timeout):
        result = await anyio.run_process(command, check=False)
    if result.returncode != 0:
        raise AssertionError(
            f"{role} child exited with {result.returncode}:\n{result.stderr.decode()[-3000:]}"
        )
    return [json.loads(line) for line in result.stdout.decode().splitlines() if line.strip()]


class Child:
    """A long-lived worker process whose JSON lines are read one at a time."""

    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._lines = BufferedByteReceiveStream(process.stdout)

    async def line(self, timeout: float = 30) -> dict[str, Any]:
        """Return the next JSON line the process printed."""
        with anyio.fail_after(timeout):
            raw = await self._lines.receive_until(b"\n", 10_000_000)
        return dict(json.loads(raw))

    def kill(self) -> None:
        """Kill the process with SIGKILL: nothing of it runs any more, no cleanup."""
        self.process.send_signal(signal.SIGKILL)


@contextlib.asynccontextmanager
async def child(
    role: str, url: str, namespace: str, options: dict[str, Any], *, script: Path = CHILD
) -> AsyncIterator[Child]:
    """Start a worker process; kill it on the way out if it is still running."""
    process = await anyio.open_process(child_command(role, url, namespace, options, script=script))
    async with process:
        try:
            yield Child(process)
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()


async def run_against_cap(
    url: str, shared: SharedState, cap: SharedSpendCounter, role: str, options: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], Decimal]:
    """Run one worker process of ``role`` per options at once against ``cap``, reading its books
    over and over meanwhile; return each worker's last line and the highest committed seen."""
    watch = Watch(cap)
    results: list[dict[str, Any]] = []

    async def worker(given: dict[str, Any]) -> None:
        lines = await run_child(role, url, shared.namespace, {**given, "name": cap.name})
        results.append(lines[-1])

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        async with anyio.create_task_group() as workers:
            for given in options:
                workers.start_soon(worker, given)
        watch.stop.set()
    return results, watch.worst


def spend_step(
    outcomes: list[str], *, refund_one_in: int, pauses: list[float]
) -> st.SearchStrategy[dict[str, Any]]:
    """One create of a plan: its estimate, what it was charged (``outcomes`` draws "charged",
    "cheaper" or "released"), whether it is refunded (one in ``refund_one_in``), and a pause."""

    @st.composite
    def step(draw: st.DrawFn) -> dict[str, Any]:
        estimate = Decimal("0.085") * draw(st.integers(2, 15))
        outcome = draw(st.sampled_from(outcomes))
        charge: Decimal | None = estimate
        if outcome == "cheaper":
            charge = Decimal(draw(st.integers(0, int(estimate * 1000)))) / 1000
        elif outcome == "released":
            charge = None
        return {
            "estimate": str(estimate),
            "charge": None if charge is None else str(charge),
            "refund": charge is not None and draw(st.integers(1, refund_one_in)) == 1,
            "pause": draw(st.sampled_from(pauses)),
        }

    return step()
