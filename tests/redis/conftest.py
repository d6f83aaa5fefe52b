"""Fixtures for shortwan.redis: a real redis-server per session, a namespace per test.

Where redis-server is missing these tests skip and say how to install it; under CI (``CI=true``)
they fail instead, so a CI machine without it cannot pass by skipping.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis_harness import INSTALL_HINT, RedisServer, redis_server_binary

from shortwan.redis import SharedState, connect


def _binary() -> str:
    binary = redis_server_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(INSTALL_HINT, pytrace=False)
        pytest.skip(INSTALL_HINT)
    return binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session, on a free loopback port, persistence off."""
    server = RedisServer(_binary(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may stop and start again."""
    server = RedisServer(_binary(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own that keeps its data when it is stopped and started."""
    server = RedisServer(_binary(), tmp_path, persist=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses."""
    return "t" + secrets.token_hex(6)


@pytest.fixture
async def shared(redis_server: RedisServer, namespace: str) -> AsyncIterator[SharedState]:
    """A SharedState on the session's server, in this test's namespace."""
    state = await connect(redis_server.url, namespace=namespace, heartbeat=2.0)
    yield state
    await state.aclose()
