"""The multi-worker example served for real: gunicorn with aiohttp's worker, N processes, one port.

Used by the tests and by ``benchmarks/workers.py``. :func:`serve` starts gunicorn on a free port
and returns once every worker has answered; :func:`app` is the application gunicorn builds in
each worker: ``examples/multiworker_backend.py`` at the fake's time scale, configured from the
environment (``FAKE_URL``, ``FAKE_KEY``, ``REDIS_URL``, ``NAMESPACE``, ``PUBLIC_URL``,
``CALLBACK_INTERVAL``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from aiohttp import web

from benchmarks._harness import redis_process
from shortwan import PollPolicy
from shortwan.testing._redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "examples") not in sys.path:
    sys.path.insert(0, str(ROOT / "examples"))

import multiworker_backend  # type: ignore[import-not-found]  # noqa: E402 - on the path set above


async def app() -> web.Application:
    """Build one worker's application from the environment."""
    poll = PollPolicy(
        min_interval=0.05,
        max_interval=0.5,
        prior_seconds_per_video_second=0.05,
        max_queries_per_second=500,
        callback_interval=float(os.environ.get("CALLBACK_INTERVAL", "30")),
    )
    built: web.Application = await multiworker_backend.make_app(
        public_url=os.environ["PUBLIC_URL"],
        redis_url=os.environ["REDIS_URL"],
        namespace=os.environ["NAMESPACE"],
        api_key=os.environ["FAKE_KEY"],
        base_url=os.environ["FAKE_URL"],
        poll=poll,
    )
    return built


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Run a redis-server on a free loopback port, persistence off; yield its URL."""
    with redis_process() as server:
        yield server.url


def fresh_session() -> aiohttp.ClientSession:
    """Return a session whose every request opens a new connection (the kernel picks a worker)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def get_json(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    """Send one request and return its status and JSON body."""
    async with session.request(method, url, json=body) as response:
        return response.status, await response.json()


@contextlib.asynccontextmanager
async def serve(
    *, workers: int, env: dict[str, str], log: Path, timeout: float = 60
) -> AsyncIterator[str]:
    """Run gunicorn with ``workers`` processes; yield its base URL once each one has answered.

    ``env`` is added to the workers' environment; ``PUBLIC_URL`` is set to the base URL.
    gunicorn's own log goes to ``log``.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "benchmarks._web_workers:app",
        "--chdir",
        str(ROOT),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "aiohttp.GunicornWebWorker",
        "--graceful-timeout",
        "10",
        # Longer than a client keeps an idle connection (aiohttp: 15 s), as behind a proxy: a
        # server that closes first races the client's next request on that connection.
        "--keep-alive",
        "75",
        "--log-level",
        "warning",
    ]
    environment = {**os.environ, **env, "PUBLIC_URL": base}
    with log.open("wb") as sink:
        process = await anyio.open_process(
            command, env=environment, stdin=None, stdout=sink, stderr=sink
        )
        try:
            await _wait_for_workers(base, workers, process, timeout)
            yield base
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)  # graceful: each worker closes
                    with anyio.move_on_after(15):
                        await process.wait()
                if process.returncode is None:
                    process.kill()
                await process.wait()
                await process.aclose()


async def worker_stats(base: str, workers: int, *, timeout: float = 30) -> dict[int, Any]:
    """Return the callback figures of every worker, by pid (asked until each has answered)."""
    seen: dict[int, Any] = {}
    with anyio.fail_after(timeout):
        async with fresh_session() as session:
            while len(seen) < workers:
                _status, body = await get_json(session, "GET", f"{base}/stats")
                seen[int(body["worker"])] = body["callbacks"]
    return seen


async def _wait_for_workers(base: str, workers: int, process: Any, timeout: float) -> None:
    seen: set[int] = set()
    with anyio.fail_after(timeout):
        async with fresh_session() as session:
            while len(seen) < workers:
                if process.returncode is not None:
                    raise RuntimeError(f"gunicorn exited with {process.returncode}")
                try:
                    _status, body = await get_json(session, "GET", f"{base}/stats")
                    seen.add(int(body["worker"]))
                except (aiohttp.ClientError, ValueError):
                    await anyio.sleep(0.1)
