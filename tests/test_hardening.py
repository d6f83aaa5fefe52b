"""Fuzzing the wire, keeping the key secret, TLS, and the client's lifecycle under cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shortwan import (
    AsyncShortWan,
    ImageToVideo,
    PollPolicy,
    RateLimitError,
    RetryPolicy,
    ShortWanError,
    SubmissionUncertainError,
    TransportError,
)
from shortwan._models import job_id_problem
from shortwan.callbacks import CallbackReceiver
from shortwan.testing import FakeShortAPI, Fault, set_testing

REQ = ImageToVideo(prompt="a fox", first_frame_image="https://example.com/a.png", duration=2)
POLL = PollPolicy(
    min_interval=0.02,
    max_interval=0.1,
    prior_seconds_per_video_second=0.01,
    max_queries_per_second=5000,
    callback_interval=5,
)
STATUSES = [200, 201, 204, 400, 401, 402, 403, 404, 408, 409, 410, 422, 429, 500, 502, 503, 504]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
# Bodies that look like answers often enough to reach the deep paths.
envelopes = st.fixed_dictionaries(
    {"code": st.integers(-2, 4000) | st.text(max_size=3)},
    optional={
        "data": st.fixed_dictionaries(
            {},
            optional={
                "job_id": st.text(max_size=30) | st.integers(),
                "amount": st.text(max_size=8) | st.floats() | st.integers(),
                "id": st.text(max_size=30) | st.none(),
                "status": st.integers(-3, 9) | st.text(max_size=2) | st.none(),
                "result": json_values,
                "error": json_values,
                "refunded": json_values,
                "credit": json_values,
            },
        )
        | json_values,
        "message": json_values,
    },
)
bodies = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | envelopes.map(lambda v: json.dumps(v).encode())
)
retry_afters = st.none() | st.text(max_size=30) | st.integers(-5, 10**9).map(str)


async def answering(
    status: int, body: bytes, retry_after: str | None, call: Callable[[str], Awaitable[Any]]
) -> None:
    """Serve one scripted answer to every request while ``call(base_url)`` runs."""

    async def handler(_: web.Request) -> web.Response:
        headers = {"Content-Type": "application/json"}
        if retry_after is not None and retry_after.isprintable() and "\n" not in retry_after:
            headers["Retry-After"] = retry_after
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        await call(f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()


class TestFuzzedAnswers:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(STATUSES), bodies, retry_afters)
    def test_create_answers_only_raise_shortwan_errors(
        self, status: int, body: bytes, retry_after: str | None
    ) -> None:
        """Any status, body and Retry-After on a create: a job or a ShortWanError, nothing else."""

        async def call(base: str) -> None:
            retry = RetryPolicy(attempts=2, timeout=2, max_retry_after=0.01)
            async with AsyncShortWan("ak-x", base_url=base, retry=retry) as client:
                try:
                    job = await client.submit(REQ)
                except ShortWanError:
                    return
                assert job_id_problem(job.id) is None
                assert job.amount is None or (job.amount.is_finite() and job.amount >= 0)

        anyio.run(answering, status, body, retry_after, call)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(STATUSES), bodies, retry_afters)
    def test_query_answers_only_raise_shortwan_errors(
        self, status: int, body: bytes, retry_after: str | None
    ) -> None:
        """Any status, body and Retry-After on a query: a snapshot or a ShortWanError."""

        async def call(base: str) -> None:
            retry = RetryPolicy(attempts=2, timeout=2, max_retry_after=0.01)
            async with AsyncShortWan("ak-x", base_url=base, retry=retry) as client:
                try:
                    snapshot = await client.get_job("abc123")
                except ShortWanError:
                    return
                assert snapshot.id == "abc123"

        anyio.run(answering, status, body, retry_after, call)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(retry_afters)
    def test_retry_after_waits_are_bounded(self, retry_after: str | None) -> None:
        """Whatever a 429's Retry-After says, waits stay under max_retry_after and the deadline."""
        set_testing(False)

        async def call(base: str) -> None:
            retry = RetryPolicy(
                attempts=3, timeout=1.0, initial_delay=0.01, max_delay=0.02, max_retry_after=0.05
            )
            async with AsyncShortWan("ak-x", base_url=base, retry=retry) as client:
                started = time.monotonic()
                with pytest.raises(RateLimitError):
                    await client.get_job("abc123")
                assert time.monotonic() - started < 1.5

        try:
            anyio.run(answering, 429, b'{"code": 429}', retry_after, call)
        finally:
            set_testing(True)


class TestOddCreateAnswers:
    @pytest.mark.parametrize(
        ("data", "outcome"),
        [
            ({"job_id": "", "amount": "1"}, "uncertain"),
            ({"job_id": "a b", "amount": "1"}, "uncertain"),
            ({"job_id": "x" * 10_000, "amount": "1"}, "uncertain"),
            ({"job_id": ["abc"], "amount": "1"}, "uncertain"),
            ({"job_id": "abc", "amount": "NaN"}, "kept"),
            ({"job_id": "abc", "amount": "-5"}, "kept"),
            ({"job_id": "abc", "amount": {"usd": 1}}, "kept"),
            ({"job_id": "abc", "amount": "0.17"}, "charged"),
        ],
    )
    @pytest.mark.anyio
    async def test_job_kept_whenever_its_id_is_readable(
        self, data: dict[str, object], outcome: str
    ) -> None:
        """An implausible id makes the create uncertain; a readable id is kept, any amount."""

        async def call(base: str) -> None:
            async with AsyncShortWan("ak-x", base_url=base) as client:
                if outcome == "uncertain":
                    with pytest.raises(SubmissionUncertainError):
                        await client.submit(REQ)
                    return
                job = await client.submit(REQ)
                assert job.id == "abc"
                assert job.amount == (Decimal("0.17") if outcome == "charged" else None)
                assert "abc" in client.jobs

        await answering(200, json.dumps({"code": 0, "data": data}).encode(), None, call)


class TestFuzzedCallbacks:
    @pytest.mark.parametrize("confirm", [True, False])
    @pytest.mark.anyio
    async def test_any_callback_body_is_taken_calmly(self, confirm: bool) -> None:
        """Arbitrary bytes or JSON on a live token: a 2xx or 413 answer, never an exception."""
        receiver = CallbackReceiver(confirm=confirm, max_body=4096)
        async with (
            FakeShortAPI(run_time=0.3) as fake,
            receiver,
            AsyncShortWan(fake.api_key, base_url=fake.url, poll=POLL, callbacks=receiver) as c,
        ):
            job = await c.submit(REQ)
            url = fake.jobs[job.id].callback_url
            assert url is not None
            token = url.rsplit("/", 1)[1]

            @settings(max_examples=150, deadline=None)
            @given(bodies | st.binary(min_size=4097, max_size=5000))
            def check(body: bytes) -> None:
                status, _ = receiver.handle(token, body if len(body) <= 4096 else None)
                record = c.jobs.get(job.id)
                assert record is not None
                # Unconfirmed mode trusts a body on the job's own token: one may end the job,
                # and its token is then let go (404). Confirmed mode waits for a query.
                ended = not confirm and record.is_terminal
                assert status in (200, 413) or (ended and status == 404), status

            check()
            if confirm:
                # Whatever was said, the job still ends with the fake's own answer.
                video = await job.result(timeout=10)
                assert video.url.startswith(fake.url)
            else:
                with contextlib.suppress(ShortWanError):  # a body may have failed it
                    await job.result(timeout=10)
                record = c.jobs.get(job.id)
                assert record is not None
                assert record.is_terminal

    def test_near_miss_tokens_are_refused(self) -> None:
        """A token one character off, shorter or longer, is refused like any other."""

        async def main() -> None:
            receiver = CallbackReceiver()
            async with (
                FakeShortAPI(run_time=5) as fake,
                receiver,
                AsyncShortWan(
                    fake.api_key, base_url=fake.url, poll=POLL, callbacks=receiver
                ) as client,
            ):
                job = await client.submit(REQ)
                url = fake.jobs[job.id].callback_url
                assert url is not None
                token = url.rsplit("/", 1)[1]
                flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
                for wrong in (flipped, token[:-1], token + "A", token.upper(), ""):
                    assert receiver.handle(wrong, b"{}")[0] == 404
                assert receiver.handle(token, b"{}")[0] == 200

        anyio.run(main)


class TestSecrets:
    @pytest.mark.anyio
    async def test_key_never_logged_shown_or_raised(
        self, caplog: pytest.LogCaptureFixture, tmp_path: Path
    ) -> None:
        """A full run with faults at DEBUG: the key is in no log record, repr or error text."""
        key = "ak-" + "7" * 32
        caplog.set_level(logging.DEBUG)
        errors: list[BaseException] = []
        async with FakeShortAPI(
            api_key=key,
            run_time=0.05,
            failure_rate=0.3,
            fault_rates={
                "create": {Fault.RESET_AFTER: 0.1, Fault.HTML_502: 0.1, Fault.UNAVAILABLE: 0.1},
                "query": {Fault.TRUNCATED_JSON: 0.2, Fault.RATE_LIMIT: 0.1},
                "download": {Fault.TRUNCATED_JSON: 0.3},
            },
        ) as fake:
            async with AsyncShortWan(key, base_url=fake.url, poll=POLL) as client:
                shown = [repr(client), str(client), repr(client.jobs)]
                reqs = [
                    ImageToVideo(prompt=f"k {i}", first_frame_image="https://e.com/a.png")
                    for i in range(40)
                ]
                async for out in client.generate_many(reqs, download_to=tmp_path):
                    if out.error is not None:
                        errors.append(out.error)
                try:
                    await client.get_job("no-such-job")
                except ShortWanError as exc:
                    errors.append(exc)
            async with AsyncShortWan("ak-wrong", base_url=fake.url) as other:
                try:
                    await other.submit(REQ)
                except ShortWanError as exc:
                    errors.append(exc)
        assert errors
        for exc in errors:
            shown += [str(exc), repr(exc), repr(exc.__cause__), repr(vars(exc))]
        for record in caplog.records:
            shown += [record.getMessage(), repr(record.__dict__)]
        leaks = [text for text in shown if key in text]
        assert not leaks, leaks[:3]
        assert len(caplog.records) > 10


class TestTLS:
    @pytest.fixture
    def ca(self) -> trustme.CA:
        return trustme.CA()

    async def _https(self, ca: trustme.CA, call: Callable[[str], Awaitable[None]]) -> None:
        async def handler(_: web.Request) -> web.Response:
            data = {"id": "abc123", "status": 1}
            return web.json_response({"code": 0, "data": data})

        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        app = web.Application()
        app.router.add_get("/api/v1/job/query", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
        try:
            await call(f"https://127.0.0.1:{runner.addresses[0][1]}")
        finally:
            await runner.cleanup()

    @pytest.mark.anyio
    async def test_certificates_verified_by_default(self, ca: trustme.CA) -> None:
        """A certificate from an unknown authority is refused, as a TransportError."""

        async def call(base: str) -> None:
            async with AsyncShortWan("ak-x", base_url=base) as client:
                with pytest.raises(TransportError, match=r"(?i)certificate|ssl"):
                    await client.get_job("abc123")

        await self._https(ca, call)

    @pytest.mark.anyio
    async def test_custom_ssl_context_honoured(self, ca: trustme.CA) -> None:
        """With an SSL context that trusts the authority, the same server is accepted."""
        context = ssl.create_default_context()
        ca.configure_trust(context)

        async def call(base: str) -> None:
            async with AsyncShortWan("ak-x", base_url=base, ssl_context=context) as client:
                snapshot = await client.get_job("abc123")
                assert snapshot.id == "abc123"

        await self._https(ca, call)


class TestLifecycle:
    @pytest.mark.anyio
    async def test_every_call_after_close_is_refused(self, tmp_path: Path) -> None:
        """After aclose, each call raises RuntimeError and sends nothing."""
        async with FakeShortAPI(run_time=0) as fake:
            client = AsyncShortWan(fake.api_key, base_url=fake.url)
            await client.aclose()
            await client.aclose()
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: client.submit(REQ),
                lambda: client.get_job("abc"),
                lambda: client.generate(REQ),
                lambda: client.gather([REQ]),
                lambda: client.download("http://127.0.0.1:1/x.mp4", tmp_path / "x.mp4"),
                lambda: client.generate_many([REQ]).__anext__(),
            ]
            for call in calls:
                with pytest.raises(RuntimeError, match="closed"):
                    await call()
            with pytest.raises(RuntimeError, match="closed"):
                client.attach("abc")
            with pytest.raises(RuntimeError):
                async with client:
                    pass
            assert fake.stats.creates_received == 0
            assert fake.stats.queries == 0

    @pytest.mark.anyio
    async def test_several_clients_in_one_loop(self) -> None:
        """Three clients share a loop and a service without sharing jobs or sessions."""
        async with FakeShortAPI(run_time=0.05) as fake:
            clients = [AsyncShortWan(fake.api_key, base_url=fake.url, poll=POLL) for _ in range(3)]
            try:
                results = await asyncio.gather(
                    *(c.gather([REQ, REQ], concurrency=2) for c in clients)
                )
            finally:
                for client in clients:
                    await client.aclose()
        assert all(o.ok for outcomes in results for o in outcomes)
        ids = [{r.id for r in c.jobs} for c in clients]
        assert all(len(i) == 2 for i in ids)
        assert not ids[0] & ids[1]
        assert not ids[1] & ids[2]
        assert not ids[0] & ids[2]

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.sampled_from(["submit", "generate", "generate_many", "gather", "download"]),
        st.floats(min_value=0.0, max_value=0.25),
    )
    def test_cancelled_anywhere_leaves_nothing_behind(self, operation: str, delay: float) -> None:
        """Cancel an operation at a random moment: no task, session or socket survives aclose."""

        async def main() -> None:
            before = asyncio.all_tasks()
            async with FakeShortAPI(queue_time=0.02, run_time=0.1, jitter=0.5) as fake:
                client = AsyncShortWan(fake.api_key, base_url=fake.url, poll=POLL)
                reqs = [REQ] * 5

                async def run() -> None:
                    if operation == "submit":
                        await client.submit(REQ)
                    elif operation == "generate":
                        await client.generate(REQ)
                    elif operation == "generate_many":
                        async for _ in client.generate_many(reqs):
                            pass
                    elif operation == "gather":
                        await client.gather(reqs)
                    else:
                        video = await client.generate(REQ)
                        await client.download(video, Path(tmp) / "v.mp4")

                with tempfile.TemporaryDirectory() as tmp, anyio.move_on_after(delay):
                    await run()
                await client.aclose()
                session = client._transport._session
                assert session is None or session.closed
            await asyncio.sleep(0)
            assert asyncio.all_tasks() - before == {asyncio.current_task()} - before

        anyio.run(main)
