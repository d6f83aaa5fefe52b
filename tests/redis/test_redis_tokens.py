"""The callback token registry: owners, forwarding across processes, and a dead owner seen gone."""

from __future__ import annotations

import hashlib
import secrets

import anyio
import pytest
from redis_harness import RedisServer, child

from shortwan.redis import Forwarded, SharedState, connect

pytestmark = pytest.mark.anyio


def token() -> str:
    """Return a token as the callback receiver makes them."""
    return secrets.token_urlsafe(32)


class TestRegistry:
    async def test_hold_bind_uncertain_forget(self, shared: SharedState) -> None:
        """Each registration says who owns the token and what it stands for, with its TTL."""
        tok = token()
        assert await shared.tokens.lookup(tok) is None
        await shared.tokens.hold(tok)
        entry = await shared.tokens.lookup(tok)
        assert entry is not None
        assert (entry.owner, entry.kind, entry.job_id, entry.owner_alive) == (
            shared.worker_id,
            "pending",
            None,
            True,
        )
        key = f"{shared.namespace}:token:{hashlib.sha256(tok.encode()).hexdigest()}"
        assert 14 * 60 < await shared.redis.ttl(key) <= 15 * 60
        await shared.tokens.bind(tok, "job42")
        entry = await shared.tokens.lookup(tok)
        assert entry is not None
        assert (entry.kind, entry.job_id) == ("job", "job42")
        await shared.tokens.uncertain(tok)
        entry = await shared.tokens.lookup(tok)
        assert entry is not None
        assert entry.kind == "uncertain"
        assert 47 * 3600 < await shared.redis.ttl(key) <= 48 * 3600
        await shared.tokens.forget(tok)
        assert await shared.tokens.lookup(tok) is None

    async def test_only_the_digest_is_stored(self, shared: SharedState) -> None:
        """The token itself is in no key and no value; a near-miss token finds nothing."""
        tok = token()
        await shared.tokens.hold(tok, kind="job", job_id="j1")
        async for key in shared.redis.scan_iter(match=f"{shared.namespace}:*"):
            assert tok.encode() not in key
            if (await shared.redis.type(key)) == b"hash":
                assert all(
                    tok.encode() not in v for v in (await shared.redis.hgetall(key)).values()
                )
        assert await shared.tokens.lookup(tok[:-1] + ("A" if tok[-1] != "A" else "B")) is None

    async def test_bad_registrations_are_refused(self, shared: SharedState) -> None:
        """A job registration without its id, an unknown kind or a bad TTL raise ValueError."""
        with pytest.raises(ValueError, match="job_id"):
            await shared.tokens.hold(token(), kind="job")
        with pytest.raises(ValueError, match="kind"):
            await shared.tokens.hold(token(), kind="done")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="ttl"):
            await shared.tokens.hold(token(), ttl=-1)

    async def test_forward_within_one_process(self, shared: SharedState) -> None:
        """A callback forwarded to this worker reaches its handler, body and sender intact."""
        got: list[Forwarded] = []
        tok = token()
        assert await shared.tokens.forward(shared.worker_id, tok, b'{"code":0}')
        shared.tokens.on_forwarded(got.append)  # set after: what waited comes first
        assert await shared.tokens.forward(shared.worker_id, tok, None)
        with anyio.fail_after(5):
            while len(got) < 2:
                await anyio.sleep(0.01)
        digest = hashlib.sha256(tok.encode()).digest()
        assert [(m.digest, m.body, m.sender) for m in got] == [
            (digest, b'{"code":0}', shared.worker_id),
            (digest, None, shared.worker_id),
        ]

    async def test_closed_owner_is_gone_at_once(
        self, redis_server: RedisServer, shared: SharedState
    ) -> None:
        """An owner that closed is seen gone at once, and nothing is forwarded to it."""
        owner = await connect(redis_server.url, namespace=shared.namespace)
        tok = token()
        await owner.tokens.hold(tok)
        entry = await shared.tokens.lookup(tok)
        assert entry is not None
        assert entry.owner_alive
        await owner.aclose()
        entry = await shared.tokens.lookup(tok)
        assert entry is not None
        assert not entry.owner_alive
        assert not await shared.tokens.alive(owner.worker_id)
        assert not await shared.tokens.forward(owner.worker_id, tok, b"{}")
        assert not await shared.redis.exists(f"{shared.namespace}:inbox:{owner.worker_id}")


async def test_forwarding_across_processes_and_dead_owner(
    redis_server: RedisServer, shared: SharedState
) -> None:
    """Two owner processes get the callbacks of their own tokens; one killed -9 is seen gone
    once its heartbeat lapses, and forwarding to it then fails."""
    url, ns = redis_server.url, shared.namespace
    tokens_a, tokens_b = [token() for _ in range(3)], [token() for _ in range(2)]
    a_options = {"tokens": tokens_a, "expect": 3, "heartbeat": 1.0}
    b_options = {"tokens": tokens_b, "expect": 2, "heartbeat": 1.0, "linger": True}
    async with child("owner", url, ns, a_options) as a, child("owner", url, ns, b_options) as b:
        a_id, b_id = (await a.line())["ready"], (await b.line())["ready"]
        # This process is the worker the load balancer picked: it looks up and forwards.
        for tok in tokens_a + tokens_b:
            entry = await shared.tokens.lookup(tok)
            assert entry is not None
            assert entry.owner_alive
            assert entry.owner == (a_id if tok in tokens_a else b_id)
            assert entry.job_id == f"job-{tok[:6]}"
            body = f'{{"data":{{"id":"{entry.job_id}"}}}}'.encode()
            assert await shared.tokens.forward(entry.owner, tok, body)
        got_a, got_b = (await a.line())["forwarded"], (await b.line())["forwarded"]
        for got, tokens in ((got_a, tokens_a), (got_b, tokens_b)):
            assert sorted(m["digest"] for m in got) == sorted(
                hashlib.sha256(t.encode()).hexdigest() for t in tokens
            )
            assert all(m["from"] == shared.worker_id for m in got)
            assert all(m["body"].startswith('{"data":{"id":"job-') for m in got)
        b.kill()
        with anyio.fail_after(5):
            while await shared.tokens.alive(b_id):
                await anyio.sleep(0.1)
        entry = await shared.tokens.lookup(tokens_b[0])
        assert entry is not None
        assert (entry.owner, entry.owner_alive) == (b_id, False)
        assert not await shared.tokens.forward(b_id, tokens_b[0], b"{}")
