"""A throwaway redis-server on a free loopback port, for tests and benchmarks of shared state.

Nothing is persisted, so a stop and a start give an empty server on the same port, as after a
crash. Needs the ``redis-server`` binary (``apt-get install redis-server``); no Python package.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["INSTALL_HINT", "RedisServer", "free_port", "redis_server_binary"]

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
        if self.process is not None:
            raise RuntimeError("this redis-server is running already")
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
