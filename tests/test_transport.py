"""The client against FakeShortAPI: submits, queries, retries, and the create-safety rules."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import math
import socket
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import ClassVar, Literal

import aiohttp
import anyio
import pytest
from aiohttp import web
from PIL import Image

from shortwan import (
    APIError,
    AsyncShortWan,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ImageToVideo,
    InsufficientBalanceError,
    InvalidRequestError,
    JobStatus,
    MalformedResponseError,
    RateLimitError,
    RetryPolicy,
    ServiceUnavailableError,
    ShortWanError,
    SubmissionUncertainError,
    Timeouts,
    TransportError,
)
from shortwan._aio import DeadlineWatch
from shortwan._convert import request_args
from shortwan._http import AttemptLimits
from shortwan.testing import FakeShortAPI, Fault, set_testing

URL = "https://example.com/frame.png"
FAST = Timeouts(connect=2.0, pool=2.0, read=0.5, request=2.0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeShortAPI]:
    async with FakeShortAPI(run_time=0, slow_delay=3.0) as server:
        yield server


def client_for(fake: FakeShortAPI, **kwargs: object) -> AsyncShortWan:
    kwargs.setdefault("timeouts", FAST)
    return AsyncShortWan(fake.api_key, base_url=fake.url, **kwargs)  # type: ignore[arg-type]


def req(prompt: str = "a fox", **kwargs: object) -> ImageToVideo:
    return ImageToVideo(prompt=prompt, first_frame_image=URL, **kwargs)  # type: ignore[arg-type]


class TestConfiguration:
    def test_key_from_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without api_key the SHORTAPI_KEY variable is used."""
        monkeypatch.setenv("SHORTAPI_KEY", "ak-from-env")
        assert AsyncShortWan()._transport._auth["Authorization"] == "Bearer ak-from-env"

    def test_no_key_is_a_clear_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No key anywhere raises ConfigurationError naming the variable."""
        monkeypatch.delenv("SHORTAPI_KEY", raising=False)
        with pytest.raises(ConfigurationError, match="SHORTAPI_KEY"):
            AsyncShortWan()

    @pytest.mark.parametrize("key", ["ak-1\r\nX-Evil: 1", "ak 1", "ak-\x00"])
    def test_key_with_control_characters_refused_without_echo(self, key: str) -> None:
        """A key that would split a header is refused, and the error does not repeat it."""
        with pytest.raises(ConfigurationError) as info:
            AsyncShortWan(key)
        assert key not in str(info.value)

    @pytest.mark.parametrize(
        "url",
        ["ftp://x", "api.shortapi.ai", "https://", "http://h/?q=1", "http://[::1", "http://h:port"],
    )
    def test_bad_base_url_refused(self, url: str) -> None:
        """A base URL that is not http(s) with a host is refused at construction."""
        with pytest.raises(ConfigurationError):
            AsyncShortWan("ak-x", base_url=url)

    def test_key_never_in_repr(self) -> None:
        """The client's repr shows the host, never the key."""
        client = AsyncShortWan("ak-0123456789abcdef0123456789abcdef")
        assert "0123456789abcdef" not in repr(client)
        assert "0123456789abcdef" not in repr(client._transport)


class TestLifecycle:
    @pytest.mark.anyio
    async def test_use_after_close_raises(self, fake: FakeShortAPI) -> None:
        """A closed client refuses every call with RuntimeError."""
        client = client_for(fake)
        await client.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await client.submit(req())
        with pytest.raises(RuntimeError, match="closed"):
            await client.get_job("abc")
        with pytest.raises(RuntimeError, match="reopened"):
            async with client:
                pass

    @pytest.mark.anyio
    async def test_aclose_is_idempotent(self, fake: FakeShortAPI) -> None:
        """Closing twice is harmless."""
        client = client_for(fake)
        await client.submit(req())
        await client.aclose()
        await client.aclose()
        assert client.is_closed

    @pytest.mark.anyio
    async def test_borrowed_session_is_not_closed(self, fake: FakeShortAPI) -> None:
        """A session passed in stays open after the client closes."""
        async with aiohttp.ClientSession() as session:
            async with client_for(fake, session=session) as client:
                job = await client.submit(req())
                assert job.id
            assert not session.closed


class TestSubmitAndQuery:
    @pytest.mark.anyio
    async def test_a_create_over_a_mebibyte_is_sent(self, fake: FakeShortAPI) -> None:
        """A create carrying a large image (1.4 MB as a BMP data URI) goes out whole, streamed,
        without the warning aiohttp gives for large bodies held in memory (an error here)."""
        image = io.BytesIO()
        Image.new("RGB", (800, 600), (10, 120, 200)).save(image, "BMP")
        uri = "data:image/bmp;base64," + base64.b64encode(image.getvalue()).decode()
        assert len(uri) > 1 << 20
        async with client_for(fake) as client:
            job = await client.submit(ImageToVideo(first_frame_image=uri))
        assert fake.jobs[job.id].args["first_frame_image"] == uri

    @pytest.mark.anyio
    async def test_submit_returns_job_with_decimal_amount(self, fake: FakeShortAPI) -> None:
        """A create returns the job id and its charge as a Decimal."""
        async with client_for(fake) as client:
            job = await client.submit(req(duration=7))
        assert job.amount == Decimal("0.595")
        assert fake.stats.jobs_created == 1
        assert job.id in fake.jobs

    @pytest.mark.anyio
    async def test_unset_args_are_not_sent(self, fake: FakeShortAPI) -> None:
        """The fake, which forbids unknown and null fields, accepts every valid combination."""
        combos = [
            {"first_frame_image": URL},
            {"first_frame_image": URL, "driving_audio_url": "https://e.com/a.mp3"},
            {"first_frame_image": URL, "last_frame_image": URL},
            {
                "first_frame_image": URL,
                "last_frame_image": URL,
                "driving_audio_url": "https://e.com/a.wav",
            },
            {"first_clip_video_url": "https://e.com/c.mp4"},
            {"first_clip_video_url": "https://e.com/c.mp4", "last_frame_image": URL},
        ]
        async with client_for(fake) as client:
            for args in combos:
                await client.submit(ImageToVideo(**args))  # type: ignore[arg-type]
        assert fake.stats.jobs_created == len(combos)
        assert fake.stats.creates_rejected == 0

    @pytest.mark.anyio
    async def test_get_job_reads_a_finished_job(self, fake: FakeShortAPI) -> None:
        """A query of a finished job gives its status, video URL and credit."""
        async with client_for(fake) as client:
            job = await client.submit(req())
            snap = await client.get_job(job.id)
        assert snap.status is JobStatus.SUCCEEDED
        assert snap.video is not None
        assert snap.video.url.startswith(fake.url)
        assert snap.credit == Decimal("0.425")

    @pytest.mark.anyio
    async def test_invalid_request_never_reaches_server(self, fake: FakeShortAPI) -> None:
        """A request breaking a rule fails locally; the fake sees nothing."""
        async with client_for(fake) as client:
            with pytest.raises(InvalidRequestError):
                await client.submit(ImageToVideo(duration=99))  # type: ignore[call-arg]
            with pytest.raises(InvalidRequestError):
                await client.submit({"prompt": "x"})  # type: ignore[arg-type]
            with pytest.raises(InvalidRequestError):
                await client.get_job("")
        assert fake.stats.creates_received == 0
        assert fake.stats.queries == 0

    @pytest.mark.anyio
    async def test_wrong_key_is_authentication_error(self) -> None:
        """A key refused with HTTP 401 raises AuthenticationError and is not retried."""
        async with (
            FakeShortAPI(run_time=0, error_transport="http") as fake,
            AsyncShortWan("ak-wrong", base_url=fake.url) as client,
        ):
            with pytest.raises(AuthenticationError) as info:
                await client.submit(req())
        assert info.value.status == 401
        assert fake.stats.creates_received == 1

    @pytest.mark.anyio
    async def test_wrong_key_in_the_envelope_is_a_final_api_error(self, fake: FakeShortAPI) -> None:
        """A key refused as HTTP 200 with a code raises APIError with that code, not retried."""
        async with AsyncShortWan("ak-wrong", base_url=fake.url) as client:
            with pytest.raises(APIError) as info:
                await client.submit(req())
        assert type(info.value) is APIError
        assert (info.value.status, info.value.code) == (200, 401)
        assert fake.stats.creates_received == 1
        assert fake.stats.jobs_created == 0

    @pytest.mark.parametrize(
        ("transport", "error"),
        [("http", InsufficientBalanceError), ("envelope", APIError)],
    )
    @pytest.mark.anyio
    async def test_low_balance_is_insufficient_balance(
        self, transport: Literal["envelope", "http"], error: type[APIError]
    ) -> None:
        """A create the balance cannot pay raises InsufficientBalanceError (HTTP 402) or, in the
        envelope, an APIError with the code; no job exists either way."""
        async with (
            FakeShortAPI(run_time=0, balance=Decimal("0.5"), error_transport=transport) as fake,
            client_for(fake) as client,
        ):
            await client.submit(req())
            with pytest.raises(error) as info:
                await client.submit(req("second"))
        assert type(info.value) is error
        assert info.value.code == 402
        assert fake.stats.jobs_created == 1

    @pytest.mark.anyio
    async def test_unknown_job_is_bad_request_or_api_error(self, fake: FakeShortAPI) -> None:
        """Querying an unknown id raises an APIError naming the job."""
        async with client_for(fake) as client:
            with pytest.raises(ShortWanError) as info:
                await client.get_job("ffffffffffffffffffffffff")
        assert info.value.job_id == "ffffffffffffffffffffffff"
        assert not isinstance(info.value, BadRequestError | TransportError)


class TestCreateSafety:
    """For each fault a create can meet: no prompt gets two jobs, and no created job goes unseen."""

    RETRIED: ClassVar = [Fault.RATE_LIMIT, Fault.UNAVAILABLE, Fault.CODE_3000]
    AMBIGUOUS: ClassVar = [
        Fault.RESET_BEFORE,
        Fault.RESET_AFTER,
        Fault.SLOW_AFTER,
        Fault.HTML_502,
        Fault.TRUNCATED_JSON,
    ]

    @pytest.mark.parametrize("fault", RETRIED)
    @pytest.mark.anyio
    async def test_provably_uncreated_is_retried(self, fake: FakeShortAPI, fault: Fault) -> None:
        """429, 503 and code 3000 prove no job was made: the create is sent again, once more."""
        fake.script("create", [fault])
        async with client_for(fake) as client:
            job = await client.submit(req())
        assert fake.stats.creates_received == 2
        assert fake.stats.jobs_created == 1
        assert list(fake.jobs) == [job.id]

    @pytest.mark.parametrize("fault", AMBIGUOUS)
    @pytest.mark.anyio
    async def test_ambiguous_create_is_not_resubmitted(
        self, fake: FakeShortAPI, fault: Fault
    ) -> None:
        """After an answer that may hide a created job, nothing is resent and the caller is told."""
        fake.script("create", [fault])
        async with client_for(fake) as client:
            with pytest.raises(SubmissionUncertainError) as info:
                await client.submit(req())
            known = len(client.jobs)
            uncertain = client.jobs.uncertain
        assert info.value.request == req()
        assert fake.stats.creates_received == 1
        assert known == 0
        assert uncertain == 1
        assert fake.stats.jobs_created <= known + uncertain
        assert max(fake.stats.jobs_by_prompt.values(), default=0) <= 1

    @pytest.mark.anyio
    async def test_a_stalled_create_ends_at_the_attempt_limit_without_a_read_timer(
        self, fake: FakeShortAPI
    ) -> None:
        """With ``read`` no shorter than ``request`` the idle timer is left out, and the whole
        attempt's limit still ends a create whose answer stalls: maybe charged, not resent."""
        timeouts = Timeouts(connect=2.0, pool=2.0, read=10.0, request=0.5)
        fake.script("create", [Fault.SLOW_AFTER])
        async with client_for(fake, timeouts=timeouts) as client:
            assert client._transport._limits.client_timeout(0.5, watched=False).sock_read is None
            assert client._transport._limits.client_timeout(20.0, watched=False).sock_read == 10.0
            with anyio.fail_after(2.5):  # the answer comes after 3 s: only the limit ends it
                with pytest.raises(SubmissionUncertainError):
                    await client.submit(req())
            # The attempt had its full limit: the shared deadline watch ended it, not aiohttp.
            used = client._transport._limits._full
            assert used is not None
            assert used.total is None
        assert fake.stats.creates_received == 1

    @pytest.mark.anyio
    async def test_a_caller_cancelling_a_watched_attempt_is_cancelled_not_timed_out(
        self, fake: FakeShortAPI
    ) -> None:
        """A cancellation from outside an attempt the deadline watch holds propagates as a
        cancellation, not as a timeout, and leaves no watch behind."""
        timeouts = Timeouts(connect=2.0, pool=2.0, read=10.0, request=0.6)
        fake.script("create", [Fault.SLOW_AFTER])
        async with client_for(fake, timeouts=timeouts) as client:
            with anyio.move_on_after(0.2) as scope:
                await client._transport.create(req().model, request_args(req()))
            assert scope.cancelled_caught
            assert client._transport._limits.watch._live == {}
            assert client._transport._limits.watch._passed == {}

    @pytest.mark.parametrize("fault", AMBIGUOUS)
    @pytest.mark.anyio
    async def test_opt_in_retries_ambiguous_creates(self, fake: FakeShortAPI, fault: Fault) -> None:
        """With retry_uncertain_creates the create is sent again and succeeds."""
        fake.script("create", [fault])
        policy = RetryPolicy(retry_uncertain_creates=True)
        async with client_for(fake, retry=policy) as client:
            job = await client.submit(req())
            assert job.id in client.jobs
        assert fake.stats.creates_received == 2
        assert job.id in fake.jobs

    @pytest.mark.anyio
    async def test_matrix_counts_balance(self, fake: FakeShortAPI) -> None:
        """Over every fault kind in a row, jobs created equal jobs known plus those flagged."""
        kinds = self.RETRIED + self.AMBIGUOUS
        fake.script("create", kinds)
        uncertain = 0
        async with client_for(fake) as client:
            for i in range(len(kinds)):
                try:
                    await client.submit(req(f"prompt {i}"))
                except SubmissionUncertainError:
                    uncertain += 1
            known = len(client.jobs)
        created = fake.stats.jobs_created
        assert known <= created <= known + uncertain
        assert max(fake.stats.jobs_by_prompt.values()) == 1

    @pytest.mark.anyio
    async def test_refused_connection_is_retried_then_transport_error(self) -> None:
        """No connection proves no job: it is retried and ends as TransportError, not uncertain."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        policy = RetryPolicy(attempts=3)
        async with AsyncShortWan("ak-x", base_url=f"http://127.0.0.1:{port}", retry=policy) as c:
            with pytest.raises(TransportError) as info:
                await c.submit(req())
        assert not isinstance(info.value, SubmissionUncertainError)
        assert isinstance(info.value.__cause__, aiohttp.ClientConnectorError)

    @pytest.mark.anyio
    async def test_long_retry_after_raises_rate_limit_at_once(self) -> None:
        """A Retry-After beyond max_retry_after is not slept through: RateLimitError carries it."""
        async with FakeShortAPI(run_time=0, retry_after="120") as fake, client_for(fake) as client:
            fake.script("create", [Fault.RATE_LIMIT])
            with pytest.raises(RateLimitError) as info:
                await client.submit(req())
        assert info.value.retry_after == 120
        assert fake.stats.creates_received == 1

    @pytest.mark.anyio
    async def test_retry_after_on_a_code_3000_answer_is_honoured(self) -> None:
        """Code 3000 comes with HTTP 200: a Retry-After it carries sets the wait before the
        create is sent again, as a 429's does."""
        set_testing(False)  # the wait is real time here
        creates: list[float] = []

        async def create(_request: web.Request) -> web.Response:
            creates.append(time.monotonic())
            if len(creates) == 1:
                body = {"code": 3000, "message": "model busy", "data": None}
                return web.json_response(body, headers={"Retry-After": "0.4"})
            data = {"job_id": "5f10653d8787ac2a1710cfbd", "amount": "0.425"}
            return web.json_response({"code": 0, "message": "ok", "data": data})

        app = web.Application()
        app.router.add_post("/api/v1/job/create", create)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        retry = RetryPolicy(initial_delay=0.0, max_delay=0.0)  # only the header can wait
        try:
            async with AsyncShortWan(
                "ak-test", base_url=f"http://127.0.0.1:{port}", retry=retry
            ) as client:
                job = await client.submit(req())
        finally:
            await runner.cleanup()
        assert job.id == "5f10653d8787ac2a1710cfbd"
        assert len(creates) == 2
        assert creates[1] - creates[0] >= 0.35

    @pytest.mark.anyio
    async def test_long_retry_after_still_pauses_the_client_up_to_the_cap(self) -> None:
        """Asked to wait longer than max_retry_after, the client raises at once but still holds
        every call off for max_retry_after, instead of asking again at full speed."""
        set_testing(False)  # the pause is real time here
        retry = RetryPolicy(max_retry_after=0.5)
        async with (
            FakeShortAPI(run_time=0, retry_after="120") as fake,
            client_for(fake, retry=retry) as client,
        ):
            fake.script("query", [Fault.RATE_LIMIT])
            job_id = fake.add_jobs(1)[0]
            with pytest.raises(RateLimitError):
                await client.get_job(job_id)
            started = time.monotonic()
            await client.get_job(job_id)
            waited = time.monotonic() - started
        assert waited >= 0.4, waited
        assert fake.stats.queries == 2

    @pytest.mark.anyio
    async def test_persistent_3000_ends_as_service_unavailable(self, fake: FakeShortAPI) -> None:
        """A model that stays unavailable raises ServiceUnavailableError after the attempts."""
        fake.script("create", [Fault.CODE_3000] * 3)
        async with client_for(fake, retry=RetryPolicy(attempts=3)) as client:
            with pytest.raises(ServiceUnavailableError) as info:
                await client.submit(req())
        assert info.value.code == 3000
        assert fake.stats.jobs_created == 0


class TestAttemptLimits:
    """The shared deadline watch that ends an attempt at ``Timeouts.request``."""

    LONG: ClassVar = Timeouts(connect=2.0, pool=2.0, read=30.0, request=20.0)

    @staticmethod
    async def _watched(watch: DeadlineWatch) -> None:
        """Wait until an attempt is under the watch."""
        with anyio.fail_after(5):
            while not watch._live:
                await anyio.sleep(0.005)

    def test_only_an_attempt_with_its_whole_limit_left_is_watched(self) -> None:
        """With less time left than ``request`` (or no ``request`` at all), aiohttp's own total
        limit ends the attempt at the call's deadline."""
        limits = AttemptLimits(Timeouts(connect=1.0, pool=1.0, read=5.0, request=5.0))

        async def check() -> None:
            short, token = limits.for_attempt(2.0)
            assert token is None
            assert short.total == 2.0
            full, token = limits.for_attempt(60.0)
            assert token is not None
            assert full.total is None
            assert limits.watch.leave(token) is False
            limits.watch.close()
            # With no limit per attempt, only the call's deadline bounds it.
            unlimited = AttemptLimits(Timeouts(connect=1.0, pool=1.0, read=5.0, request=None))
            bounded, token = unlimited.for_attempt(2.0)
            assert token is None
            assert bounded.total == 2.0
            assert unlimited.for_attempt(math.inf)[0].total is None

        anyio.run(check)

    @pytest.mark.anyio
    async def test_a_query_ended_by_the_watch_is_asked_again(self, fake: FakeShortAPI) -> None:
        """The watch's cancellation of a stalled query becomes a timeout, which is retried; the
        task's count of cancellations is back at zero."""
        async with client_for(fake, timeouts=self.LONG) as client:
            job = await client.submit(req())
            fake.script("query", [Fault.SLOW_AFTER])
            transport = client._transport
            watch = transport._limits.watch

            async def query() -> tuple[JobStatus, int]:
                snap = await client.get_job(job.id)
                task = asyncio.current_task()
                assert task is not None
                return snap.status, task.cancelling() if sys.version_info >= (3, 11) else 0

            task = asyncio.get_running_loop().create_task(query())
            await self._watched(watch)
            watch._passing(math.inf)  # as the timer would, at the deadline
            with anyio.fail_after(5):
                assert await task == (JobStatus.SUCCEEDED, 0)
            assert watch._live == {}
            assert watch._passed == {}

    @pytest.mark.skipif(sys.version_info < (3, 11), reason="Python 3.10 counts no cancellations")
    @pytest.mark.parametrize("outside_first", [True, False])
    @pytest.mark.anyio
    async def test_an_outside_cancellation_at_the_deadline_wins(
        self, fake: FakeShortAPI, outside_first: bool
    ) -> None:
        """A cancellation from outside that lands in the same step as the deadline propagates
        as a cancellation, whichever came first: it is never taken for a timeout."""
        async with client_for(fake, timeouts=self.LONG) as client:
            job = await client.submit(req())
            fake.script("query", [Fault.SLOW_AFTER])
            transport = client._transport
            watch = transport._limits.watch
            task = asyncio.get_running_loop().create_task(transport.query(job.id))
            await self._watched(watch)
            if outside_first:
                task.cancel()
            watch._passing(math.inf)
            if not outside_first:
                task.cancel()
            with anyio.fail_after(5):
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert task.cancelled()
            assert watch._live == {}
            assert watch._passed == {}

    @pytest.mark.anyio
    async def test_closing_keeps_the_limit_of_an_attempt_under_way(
        self, fake: FakeShortAPI
    ) -> None:
        """Closing the client while a query on a borrowed session is under way leaves it its
        limit: it ends at ``request``, not when the stalled answer comes."""
        timeouts = Timeouts(connect=2.0, pool=2.0, read=30.0, request=0.5)
        async with aiohttp.ClientSession() as session:
            client = client_for(
                fake, timeouts=timeouts, session=session, retry=RetryPolicy(attempts=1)
            )
            async with client:
                job = await client.submit(req())
                fake.script("query", [Fault.SLOW_AFTER])  # held 3 s
                task = asyncio.get_running_loop().create_task(client._transport.query(job.id))
                await self._watched(client._transport._limits.watch)
            with anyio.fail_after(2):
                with pytest.raises(TransportError, match="timed out"):
                    await task


class TestQueryFaults:
    @pytest.mark.parametrize(
        "fault",
        [
            Fault.RATE_LIMIT,
            Fault.UNAVAILABLE,
            Fault.CODE_3000,
            Fault.RESET_BEFORE,
            Fault.HTML_502,
            Fault.TRUNCATED_JSON,
            Fault.SLOW_AFTER,
        ],
    )
    @pytest.mark.anyio
    async def test_queries_retry_every_transient_fault(
        self, fake: FakeShortAPI, fault: Fault
    ) -> None:
        """A query is harmless to repeat, so every transient fault is retried to success."""
        async with client_for(fake) as client:
            job = await client.submit(req())
            fake.script("query", [fault, fault])
            snap = await client.get_job(job.id)
        assert snap.status is JobStatus.SUCCEEDED

    @pytest.mark.anyio
    async def test_html_after_retries_is_malformed_response(self, fake: FakeShortAPI) -> None:
        """When every attempt gets an HTML page the error is typed and quotes the page."""
        async with client_for(fake, retry=RetryPolicy(attempts=2)) as client:
            job = await client.submit(req())
            fake.script("query", [Fault.HTML_502, Fault.HTML_502])
            with pytest.raises(ShortWanError) as info:
                await client.get_job(job.id)
        assert info.value.job_id == job.id
        assert "html" in str(getattr(info.value, "body", "")).lower()

    @pytest.mark.parametrize("shape", ["videos", "images", "url", "video_url"])
    @pytest.mark.anyio
    async def test_every_result_shape_gives_the_url(self, shape: str) -> None:
        """videos, images, url and video_url answers all yield the video URL."""
        async with FakeShortAPI(run_time=0, result_shape=shape) as fake, client_for(fake) as client:  # type: ignore[arg-type]
            job = await client.submit(req())
            snap = await client.get_job(job.id)
        assert snap.video is not None
        assert snap.video.url.startswith("http")

    @pytest.mark.anyio
    async def test_extra_fields_are_ignored(self) -> None:
        """Unknown keys in the envelope, data and result change nothing."""
        async with FakeShortAPI(run_time=0, extra_fields=True) as fake, client_for(fake) as client:
            job = await client.submit(req())
            snap = await client.get_job(job.id)
        assert snap.succeeded

    @pytest.mark.anyio
    async def test_unknown_status_is_kept_raw_and_terminal(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A status number the SDK does not know is UNKNOWN, kept raw, logged, and terminal."""
        async with FakeShortAPI(run_time=0, unknown_status=7) as fake, client_for(fake) as client:
            job = await client.submit(req())
            with caplog.at_level(logging.WARNING, logger="shortwan"):
                snap = await client.get_job(job.id)
        assert snap.status is JobStatus.UNKNOWN
        assert snap.raw_status == 7
        assert snap.failed
        assert any(job.id in r.getMessage() for r in caplog.records)

    @pytest.mark.anyio
    async def test_malformed_query_data_names_the_path(self) -> None:
        """An answer whose status is not a number is a MalformedResponseError naming data.status."""
        from shortwan._convert import snapshot_from_data

        with pytest.raises(MalformedResponseError) as info:
            snapshot_from_data({"id": "x", "status": "soon"})
        assert any("data.status" in p for p in info.value.paths)
