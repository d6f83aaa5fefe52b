"""A real redis-server for the tests (free loopback port, no persistence), and worker processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

INSTALL_HINT = "redis-server is not installed: apt-get install redis-server"


def redis_server_binary() -> str | None:
    """Return the path of redis-server, or None where it is not installed.

    ``SHORTWAN_REDIS_SERVER`` names another build; set to a path that does not exist, it shows
    what a machine without redis-server does.
    """
    chosen = os.environ.get("SHORTWAN_REDIS_SERVER")
    if chosen is not None:
        return chosen if os.access(chosen, os.X_OK) else None
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


def free_port() -> int:
    """Return a loopback port nobody listens on (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1, with persistence off unless ``persist``.

    ``stop()`` and ``start()`` keep the port, so clients connected to it see the server go away
    and come back, as after a crash: empty without persistence, as it was with it (every write
    is in its append-only file before it is answered).
    """

    def __init__(self, binary: str, workdir: Path, *, persist: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir
        self.persist = persist
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect with."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        assert self.process is None
        self.process = subprocess.Popen(  # noqa: S603 - our own server binary
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persist else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer within 10 s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGKILL: nothing is saved, connections drop at once)."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> None:
        """Stop the server and start an empty one on the same port."""
        self.stop()
        self.start()


CHILD = Path(__file__).with_name("redis_child.py")
CLIENT_CHILD = Path(__file__).with_name("client_child.py")


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
