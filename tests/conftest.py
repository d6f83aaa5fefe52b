"""Shared fixtures: async tests run on asyncio through anyio's plugin, retries never wait."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shortwan.testing import set_testing


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio, the loop shortwan is built for."""
    return "asyncio"


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    """Make retries skip their waits (the library's own test switch), and switch it back."""
    set_testing(True)
    yield
    set_testing(False)
