"""connect(): reachability, the schema of a namespace, closing, and no secret in Redis."""

from __future__ import annotations

import json
import logging

import pytest
from redis.asyncio import Redis
from redis_harness import RedisServer, free_port

import shortwan
from shortwan import AsyncShortWan, ConfigurationError, ImageToVideo, SharedStateError
from shortwan.callbacks import CallbackReceiver
from shortwan.redis import SCHEMA, SCHEMA_VERSION, JobEnd, SharedState, connect
from shortwan.testing import FakeShortAPI, fast_poll

pytestmark = pytest.mark.anyio


async def raw_client(server: RedisServer) -> Redis:
    """Return a plain redis-py client, to look at what shortwan wrote."""
    return Redis.from_url(server.url)


class TestConnect:
    async def test_unreachable_server_is_a_configuration_error(self) -> None:
        """A server nobody listens for fails at connect, with a ConfigurationError naming it."""
        port = free_port()
        with pytest.raises(ConfigurationError, match=f"127.0.0.1:{port}") as caught:
            await connect(f"redis://127.0.0.1:{port}/0", namespace="app", connect_timeout=0.5)
        assert caught.value.__cause__ is not None

    async def test_bad_arguments_are_refused_before_connecting(self) -> None:
        """A bad namespace, worker id, timeout or URL is refused without a connection."""
        with pytest.raises(ConfigurationError, match="namespace"):
            await connect("redis://127.0.0.1:1/0", namespace="a b")
        with pytest.raises(ConfigurationError, match="namespace"):
            await connect("redis://127.0.0.1:1/0", namespace="")
        with pytest.raises(ConfigurationError, match="worker_id"):
            await connect("redis://127.0.0.1:1/0", namespace="a", worker_id="x:y")
        with pytest.raises(ConfigurationError, match="heartbeat"):
            await connect("redis://127.0.0.1:1/0", namespace="a", heartbeat=0)
        with pytest.raises(ConfigurationError, match="Redis URL"):
            await connect("http://127.0.0.1:1/0", namespace="a")

    async def test_password_stays_out_of_messages(self) -> None:
        """The password of a URL appears in no error and no repr."""
        port = free_port()
        with pytest.raises(ConfigurationError) as caught:
            await connect(
                f"redis://user:s3cr3t-pw@127.0.0.1:{port}/0",
                namespace="app",
                connect_timeout=0.5,
            )
        assert "s3cr3t-pw" not in str(caught.value)

    async def test_marker_written_and_worker_announced(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """A new namespace gets the schema marker; the worker's heartbeat is there until close."""
        raw = await raw_client(redis_server)
        try:
            async with await connect(redis_server.url, namespace=namespace) as shared:
                marker = json.loads(await raw.get(f"{namespace}:schema"))
                assert marker == {"schema": SCHEMA, "version": SCHEMA_VERSION}
                assert await raw.exists(f"{namespace}:worker:{shared.worker_id}")
                assert shared.online
                assert namespace in repr(shared)
            assert not await raw.exists(f"{namespace}:worker:{shared.worker_id}")
            with pytest.raises(RuntimeError, match="closed"):
                await shared.jobs.get("abc")
            await shared.aclose()  # idempotent
        finally:
            await raw.aclose()

    async def test_two_processes_agree_on_one_namespace(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """A second connect to a namespace shortwan wrote is accepted."""
        async with (
            await connect(redis_server.url, namespace=namespace) as first,
            await connect(redis_server.url, namespace=namespace) as second,
        ):
            assert first.worker_id != second.worker_id


class TestSchema:
    async def test_other_version_is_refused(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """A namespace written by another schema version of shortwan is refused, naming both."""
        raw = await raw_client(redis_server)
        try:
            await raw.set(f"{namespace}:schema", json.dumps({"schema": SCHEMA, "version": 99}))
            with pytest.raises(ConfigurationError, match="version 99") as caught:
                await connect(redis_server.url, namespace=namespace)
            assert f"version {SCHEMA_VERSION}" in str(caught.value)
        finally:
            await raw.aclose()

    async def test_other_marker_is_refused(self, redis_server: RedisServer, namespace: str) -> None:
        """A namespace whose marker is another program's is refused."""
        raw = await raw_client(redis_server)
        try:
            await raw.set(f"{namespace}:schema", "celery-v3")
            with pytest.raises(ConfigurationError, match="another shape"):
                await connect(redis_server.url, namespace=namespace)
        finally:
            await raw.aclose()

    async def test_foreign_keys_without_marker_are_refused(
        self, redis_server: RedisServer, namespace: str
    ) -> None:
        """A namespace holding keys but no marker is refused, and no marker is written into it."""
        raw = await raw_client(redis_server)
        try:
            await raw.hset(f"{namespace}:sessions:42", "user", "ada")
            with pytest.raises(ConfigurationError, match="did not write"):
                await connect(redis_server.url, namespace=namespace)
            assert not await raw.exists(f"{namespace}:schema")
        finally:
            await raw.aclose()


async def test_api_key_is_written_nowhere(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After a real run through every piece, no key, field or value in Redis holds the API key."""
    caplog.set_level(logging.DEBUG)
    async with (
        await connect(redis_server.url, namespace=namespace) as shared,
        FakeShortAPI(run_time=0.05, callback_delay=0.0) as fake,
        CallbackReceiver() as receiver,
        AsyncShortWan(
            fake.api_key, base_url=fake.url, poll=fast_poll(), callbacks=receiver
        ) as client,
    ):
        cap = await shared.spend_counter("5", window="day")
        request = ImageToVideo(prompt="a fox", first_frame_image="https://example.com/a.png")
        assert await cap.reserve(request.estimated_cost)
        job = await client.submit(request)
        await cap.settle(request.estimated_cost, job.amount)
        await job.result(timeout=10)
        record = client.jobs.get(job.id)
        assert record is not None
        await shared.jobs.publish(JobEnd.from_record(record, seen_by=shared.worker_id))
        token = "tok-" + fake.api_key[::-1]
        await shared.tokens.hold(token)
        await shared.tokens.bind(token, job.id)
        assert await shared.tokens.forward(shared.worker_id, token, b'{"code":0,"data":{}}')
        bucket = shared.rate_bucket(rate=5.0)
        await bucket.take()
        await bucket.pause(1.0)
        await shared.window_counters().add(sent=3, refused=1)

        raw = await raw_client(redis_server)
        try:
            needles = [fake.api_key.encode(), fake.api_key.removeprefix("ak-").encode()]
            looked = 0
            async for key in raw.scan_iter(count=1000):
                kind = (await raw.type(key)).decode()
                if kind == "string":
                    values = [await raw.get(key)]
                elif kind == "hash":
                    values = [b"%s=%s" % kv for kv in (await raw.hgetall(key)).items()]
                elif kind == "zset":
                    values = [m for m, _ in await raw.zrange(key, 0, -1, withscores=True)]
                elif kind == "stream":
                    values = [
                        b"%s=%s" % kv
                        for _, fields in await raw.xrange(key)
                        for kv in fields.items()
                    ]
                else:
                    raise AssertionError(f"unexpected {kind} at {key!r}")
                looked += 1
                for blob in [key, *values]:
                    assert all(needle not in blob for needle in needles), key
            assert looked >= 8  # marker, worker, spend books and leases, job, ends, token, bucket
            # Nor the token itself: only its digest is stored.
            async for key in raw.scan_iter(count=1000):
                assert token.encode() not in key
        finally:
            await raw.aclose()
    assert all(fake.api_key not in r.getMessage() for r in caplog.records)


def test_shared_state_error_is_exported() -> None:
    """SharedStateError is a public ShortWanError."""
    assert issubclass(shortwan.SharedStateError, shortwan.ShortWanError)
    assert "SharedStateError" in shortwan.__all__
    assert SharedStateError is shortwan.SharedStateError


def test_public_door_is_sorted() -> None:
    """shortwan.redis keeps one sorted __all__ of names that exist."""
    import shortwan.redis as door

    assert door.__all__ == sorted(door.__all__)
    assert all(hasattr(door, name) for name in door.__all__)
    assert door.SharedState is SharedState
