"""FakeShortAPI itself, spoken to with plain aiohttp: it must follow the protocol page."""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, Literal

import aiohttp
import anyio
import pytest
from helpers import callback_sink

from shortwan.testing import ErrorCodes, FakeShortAPI, Fault, JobPlan, Timing

ARGS = {"prompt": "a fox", "first_frame_image": "https://example.com/a.png", "duration": 4}
MODEL = "alibaba/wan-2.7/image-to-video"
TRANSPORTS = ["envelope", "http"]
Transport = Literal["envelope", "http"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def create(
    http: aiohttp.ClientSession, fake: FakeShortAPI, body: Any = None, key: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key or fake.api_key}"}
    payload = {"model": MODEL, "args": ARGS} if body is None else body
    async with http.post(f"{fake.url}/api/v1/job/create", json=payload, headers=headers) as r:
        return r.status, await r.json()


async def query(http: aiohttp.ClientSession, fake: FakeShortAPI, job_id: str) -> dict[str, Any]:
    return (await query_answer(http, fake, job_id))[2]


async def query_answer(
    http: aiohttp.ClientSession, fake: FakeShortAPI, job_id: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with http.get(
        f"{fake.url}/api/v1/job/query", params={"id": job_id}, headers=headers
    ) as r:
        return r.status, dict(r.headers), await r.json()


def refused_status(transport: Transport, status: int) -> int:
    """Return the HTTP status a refusal has in ``transport``."""
    return status if transport == "http" else 200


class TestProtocol:
    @pytest.mark.anyio
    async def test_create_then_query_progresses(self, http: aiohttp.ClientSession) -> None:
        """A job is queued, then running, then succeeded with a video URL, on the clock."""
        async with FakeShortAPI(queue_time=0.1, run_time=0.1) as fake:
            status, body = await create(http, fake)
            assert status == 200
            assert body["code"] == 0
            assert body["data"]["amount"] == "0.340"
            job_id = body["data"]["job_id"]
            assert len(job_id) == 24
            seen = [(await query(http, fake, job_id))["data"]["status"]]
            await anyio.sleep(0.12)
            seen.append((await query(http, fake, job_id))["data"]["status"])
            await anyio.sleep(0.12)
            done = (await query(http, fake, job_id))["data"]
        assert seen == [0, 1]
        assert done["status"] == 2
        assert done["result"]["videos"][0]["url"].startswith(fake.url)
        assert done["finished_at"].endswith("Z")

    @pytest.mark.parametrize("transport", TRANSPORTS)
    @pytest.mark.anyio
    async def test_wrong_key_is_refused(
        self, http: aiohttp.ClientSession, transport: Transport
    ) -> None:
        """A wrong key is refused with code 401 (HTTP 401, or 200 in the envelope); no job."""
        async with FakeShortAPI(error_transport=transport) as fake:
            status, body = await create(http, fake, key="ak-wrong")
        assert (status, body["code"]) == (refused_status(transport, 401), 401)
        assert body["message"] == "invalid api key"
        assert "data" not in body
        assert fake.stats.jobs_created == 0
        assert fake.stats.refusals["unauthorized"] == 1

    @pytest.mark.parametrize("transport", TRANSPORTS)
    @pytest.mark.parametrize(
        "body",
        [
            {"model": "other/model", "args": ARGS},
            {"model": MODEL, "args": {**ARGS, "duration": True}},
            {"model": MODEL, "args": {**ARGS, "duration": 16}},
            {"model": MODEL, "args": {**ARGS, "resolution": "4k"}},
            {"model": MODEL, "args": {**ARGS, "negative_prompt": None}},
            {"model": MODEL, "args": {**ARGS, "colour": "red"}},
            {"model": MODEL, "args": {"prompt": "only text"}},
            {"model": MODEL, "args": {**ARGS, "first_clip_video_url": "https://e.com/c.mp4"}},
            {"model": MODEL, "args": ARGS, "priority": 1},
            {"model": MODEL, "args": {**ARGS, "first_frame_image": "ftp://e.com/a.png"}},
        ],
    )
    @pytest.mark.anyio
    async def test_invalid_bodies_refused(
        self, http: aiohttp.ClientSession, body: dict[str, Any], transport: Transport
    ) -> None:
        """Every broken rule is refused with code 400 and a message (HTTP 400 or 200); no job."""
        async with FakeShortAPI(error_transport=transport) as fake:
            status, answer = await create(http, fake, body)
        assert (status, answer["code"]) == (refused_status(transport, 400), 400)
        assert answer["message"]
        assert fake.stats.creates_rejected == 1
        assert fake.stats.jobs_created == 0

    @pytest.mark.parametrize("transport", TRANSPORTS)
    @pytest.mark.anyio
    async def test_balance_and_refund(
        self, http: aiohttp.ClientSession, transport: Transport
    ) -> None:
        """A create beyond the balance is refused with code 402; a failed job gives its charge
        back when it ends (protocol, section 7)."""
        async with FakeShortAPI(
            balance=Decimal("0.5"),
            failure_rate=1.0,
            queue_time=0,
            run_time=0.3,
            error_transport=transport,
        ) as fake:
            assert (await create(http, fake))[0] == 200
            # The first job still holds the money.
            status, body = await create(http, fake)
            assert (status, body["code"]) == (refused_status(transport, 402), 402)
            await anyio.sleep(0.35)
            job_id = next(iter(fake.jobs))
            data = (await query(http, fake, job_id))["data"]
            assert (data["status"], data["refunded"]) == (3, True)
            assert fake.balance == Decimal("0.5")
            assert (await create(http, fake))[1]["code"] == 0

    @pytest.mark.parametrize("transport", TRANSPORTS)
    @pytest.mark.anyio
    async def test_unknown_job_is_code_1(
        self, http: aiohttp.ClientSession, transport: Transport
    ) -> None:
        """Querying an unknown id answers HTTP 200 with code 1 in both transports (as seen)."""
        async with FakeShortAPI(error_transport=transport) as fake:
            status, _headers, body = await query_answer(http, fake, "nope")
        assert (status, body["code"]) == (200, 1)
        assert "nope" in body["message"]

    @pytest.mark.anyio
    async def test_plan_overrides_one_job(self, http: aiohttp.ClientSession) -> None:
        """A plan can end a job with an unknown status number and its own shape."""

        def plan(args: Any) -> JobPlan | None:
            return JobPlan(outcome=7) if args.get("prompt") == "odd" else None

        async with FakeShortAPI(run_time=0, plan=plan, extra_fields=True) as fake:
            _, a = await create(http, fake, {"model": MODEL, "args": {**ARGS, "prompt": "odd"}})
            _, b = await create(http, fake)
            odd = await query(http, fake, a["data"]["job_id"])
            ok = await query(http, fake, b["data"]["job_id"])
        assert odd["data"]["status"] == 7
        assert ok["data"]["status"] == 2
        assert "trace_id" in ok

    @pytest.mark.anyio
    async def test_stats_count_queries_after_the_end(self, http: aiohttp.ClientSession) -> None:
        """Queries answered after a job's terminal answer are counted per job."""
        async with FakeShortAPI(run_time=0) as fake:
            _, body = await create(http, fake)
            job_id = body["data"]["job_id"]
            for _ in range(3):
                await query(http, fake, job_id)
        assert fake.stats.queries_by_job[job_id] == 3
        assert fake.stats.queries_after_terminal[job_id] == 2
        assert fake.stats.jobs_by_prompt["a fox"] == 1


class TestErrorTransport:
    @pytest.mark.parametrize("transport", TRANSPORTS)
    @pytest.mark.parametrize(
        "route",
        [
            ("GET", "/api/v1/job/cancel", 404),
            ("GET", "/", 404),
            ("GET", "/api/v1/job/create", 405),
            ("DELETE", "/api/v1/job/query", 405),
        ],
    )
    @pytest.mark.anyio
    async def test_routing_errors_are_the_envelope(
        self, http: aiohttp.ClientSession, transport: Transport, route: tuple[str, str, int]
    ) -> None:
        """Unknown paths and wrong methods answer the JSON envelope, not a plain-text page."""
        method, path, status = route
        async with (
            FakeShortAPI(error_transport=transport) as fake,
            http.request(method, fake.url + path) as r,
        ):
            assert r.content_type == "application/json"
            body = await r.json()
        assert (r.status, body["code"]) == (refused_status(transport, status), status)
        assert path in body["message"]

    @pytest.mark.parametrize("transport", TRANSPORTS)
    @pytest.mark.anyio
    async def test_too_large_a_body_is_the_envelope(
        self, http: aiohttp.ClientSession, transport: Transport
    ) -> None:
        """A body past the size limit (HTTP 413 from aiohttp) also comes back as the envelope."""
        async with FakeShortAPI(error_transport=transport) as fake:
            headers = {
                "Authorization": f"Bearer {fake.api_key}",
                "Content-Type": "application/json",
            }
            body = io.BytesIO(b'{"x": "' + b"a" * (65 * 1024 * 1024) + b'"}')
            url = f"{fake.url}/api/v1/job/create"
            async with http.post(url, data=body, headers=headers) as r:
                answer = (r.status, (await r.json())["code"])
        assert answer == (refused_status(transport, 413), 413)
        assert fake.stats.refusals["http_413"] == 1

    @pytest.mark.parametrize("transport", TRANSPORTS)
    @pytest.mark.parametrize(
        ("content_type", "data"),
        [
            ("text/plain", json.dumps({"model": MODEL, "args": ARGS})),
            ("application/x-www-form-urlencoded", "model=alibaba&prompt=a+fox"),
            (None, json.dumps({"model": MODEL, "args": ARGS}).encode()),
        ],
        ids=["text", "form", "none"],
    )
    @pytest.mark.anyio
    async def test_content_type_must_be_json(
        self,
        http: aiohttp.ClientSession,
        transport: Transport,
        content_type: str | None,
        data: str | bytes,
    ) -> None:
        """A create body that is not sent as application/json is refused, even valid JSON."""
        async with FakeShortAPI(error_transport=transport) as fake:
            headers = {"Authorization": f"Bearer {fake.api_key}"}
            if content_type is not None:
                headers["Content-Type"] = content_type
            url = f"{fake.url}/api/v1/job/create"
            async with http.post(url, data=data, headers=headers) as r:
                status, body = r.status, await r.json()
        assert (status, body["code"]) == (refused_status(transport, 415), 415)
        assert "application/json" in body["message"]
        assert fake.stats.jobs_created == 0
        assert fake.stats.creates_rejected == 1

    @pytest.mark.anyio
    async def test_json_with_a_charset_is_accepted(self, http: aiohttp.ClientSession) -> None:
        """``application/json; charset=utf-8`` is JSON: the job is made."""
        async with FakeShortAPI() as fake:
            headers = {
                "Authorization": f"Bearer {fake.api_key}",
                "Content-Type": "application/json; charset=utf-8",
            }
            data = json.dumps({"model": MODEL, "args": ARGS})
            async with http.post(f"{fake.url}/api/v1/job/create", data=data, headers=headers) as r:
                body = await r.json()
        assert body["code"] == 0
        assert fake.stats.jobs_created == 1

    @pytest.mark.anyio
    async def test_codes_and_text_fields_are_configurable(
        self, http: aiohttp.ClientSession
    ) -> None:
        """error_codes sets each refusal's code; error_text='both' sends message and info."""
        codes = ErrorCodes(unauthorized=10001, invalid_request=10002, job_not_found=10003)
        async with FakeShortAPI(error_codes=codes, error_text="both") as fake:
            _, bad_key = await create(http, fake, key="ak-wrong")
            _, invalid = await create(http, fake, {"model": "other", "args": ARGS})
            _, _, unknown = await query_answer(http, fake, "nope")
        assert [bad_key["code"], invalid["code"], unknown["code"]] == [10001, 10002, 10003]
        assert bad_key["message"] == bad_key["info"] == "invalid api key"

    @pytest.mark.anyio
    async def test_info_alone(self, http: aiohttp.ClientSession) -> None:
        """error_text='info' puts the text in ``info`` and leaves ``message`` out."""
        async with FakeShortAPI(error_text="info") as fake:
            _, body = await create(http, fake, key="ak-wrong")
        assert "message" not in body
        assert body["info"] == "invalid api key"

    def test_zero_or_odd_codes_are_refused(self) -> None:
        """A code of 0 would read as success, so it is refused at construction."""
        with pytest.raises(ValueError, match="non-zero"):
            ErrorCodes(unauthorized=0)
        with pytest.raises(ValueError, match="non-zero"):
            ErrorCodes(job_not_found=True)

    @pytest.mark.parametrize(
        "options",
        [
            {"error_transport": "status"},
            {"error_text": "text"},
            {"rate_limit_retry_after": "ms"},
            {"callback_shape": "raw"},
            {"failure_rate": 1.5},
            {"jitter": -0.1},
            {"run_time": -1},
            {"speed": 0},
            {"query_rate_limit": 0},
            {"query_rate_limit": 5, "query_burst": 0.5},
            {"result_shape": "clips"},
        ],
    )
    def test_bad_knobs_are_refused(self, options: dict[str, Any]) -> None:
        """A knob out of range is a ValueError when the fake is made, not a surprise later."""
        with pytest.raises(ValueError):  # noqa: PT011 - each knob has its own message
            FakeShortAPI(**options)


class TestTiming:
    def test_time_follows_duration_and_resolution(self) -> None:
        """Without times given, a job runs longer for a longer video and longer at 1080p."""
        timing = Timing(jitter=0)
        plan = JobPlan()
        rng = random.Random(1)
        short = timing.times({"duration": 2, "resolution": "720p"}, plan, rng)
        long = timing.times({"duration": 15, "resolution": "720p"}, plan, rng)
        hd = timing.times({"duration": 15, "resolution": "1080p"}, plan, rng)
        default = timing.times({}, plan, rng)
        assert short == pytest.approx((0.1, 0.1))
        assert long == pytest.approx((0.1, 0.75))
        assert hd == pytest.approx((0.1, 1.2))
        assert default == pytest.approx((0.1, 0.4))  # 5 s at 1080p, the service's defaults

    def test_given_times_fix_both_and_speed_divides(self) -> None:
        """A given run_time fixes the timing (queue 0, no jitter); speed divides it."""
        rng = random.Random(1)
        args = {"duration": 15, "resolution": "1080p"}
        assert Timing(run_time=0.6).times(args, JobPlan(), rng) == (0.0, 0.6)
        assert Timing(queue_time=0.2, speed=4).times(args, JobPlan(), rng) == (0.05, 0.0)
        assert Timing(jitter=0, speed=2).times(args, JobPlan(), rng) == pytest.approx((0.05, 0.6))

    def test_a_plan_with_a_time_fixes_that_job(self) -> None:
        """A plan naming a time overrides the model; the time it leaves out is 0."""
        rng = random.Random(1)
        plan = JobPlan(run_time=0.3)
        assert Timing().times({"duration": 15}, plan, rng) == (0.0, 0.3)
        assert Timing(queue_time=0.2).times({"duration": 15}, plan, rng) == (0.2, 0.3)

    def test_jitter_spreads_seeded_times(self) -> None:
        """The default jitter spreads model times within ±25 %, the same for the same seed."""
        args = {"duration": 10, "resolution": "1080p"}
        draws = [
            [Timing().times(args, JobPlan(), rng)[1] for _ in range(200)]
            for rng in (random.Random(5), random.Random(5))
        ]
        assert draws[0] == draws[1]
        assert min(draws[0]) >= 0.8 * 0.75
        assert max(draws[0]) <= 0.8 * 1.25
        assert max(draws[0]) - min(draws[0]) > 0.2

    @pytest.mark.anyio
    async def test_served_jobs_end_on_the_model_clock(self, http: aiohttp.ClientSession) -> None:
        """Through HTTP, a 2 s 720p job ends well before a 15 s 1080p one, as the model says."""
        async with FakeShortAPI(jitter=0) as fake:
            _, short = await create(
                http, fake, {"model": MODEL, "args": {**ARGS, "duration": 2, "resolution": "720p"}}
            )
            _, long = await create(http, fake, {"model": MODEL, "args": {**ARGS, "duration": 15}})
        jobs = fake.jobs
        quick = jobs[short["data"]["job_id"]]
        slow = jobs[long["data"]["job_id"]]
        assert quick.run_end - quick.created_at == pytest.approx(0.2, abs=0.01)
        assert slow.run_end - slow.created_at == pytest.approx(1.3, abs=0.01)

    @pytest.mark.anyio
    async def test_timing_knobs_leave_outcomes_alone(self, http: aiohttp.ClientSession) -> None:
        """The same seed fails the same jobs whatever the jitter: timing draws apart."""
        outcomes = []
        for jitter in (0.0, 0.9):
            async with FakeShortAPI(seed=9, failure_rate=0.5, jitter=jitter) as fake:
                for _ in range(16):
                    await create(http, fake)
                outcomes.append([job.final_status for job in fake.jobs.values()])
        assert outcomes[0] == outcomes[1]
        assert 0 < outcomes[0].count(3) < 16


class TestFaults:
    @pytest.mark.anyio
    async def test_script_order_and_effects(self, http: aiohttp.ClientSession) -> None:
        """Scripted faults apply in order; 'after' faults create the job, 'before' ones do not."""
        async with FakeShortAPI() as fake:
            fake.script("create", [Fault.RATE_LIMIT, None, Fault.HTML_502, Fault.TRUNCATED_JSON])
            status, body = await create(http, fake)
            assert (status, body["code"]) == (429, 429)
            assert (await create(http, fake))[0] == 200
            headers = {"Authorization": f"Bearer {fake.api_key}"}
            url = f"{fake.url}/api/v1/job/create"
            async with http.post(url, json={"model": MODEL, "args": ARGS}, headers=headers) as r:
                assert r.status == 502
                assert "html" in r.content_type
            async with http.post(url, json={"model": MODEL, "args": ARGS}, headers=headers) as r:
                with pytest.raises(json.JSONDecodeError):
                    json.loads(await r.read())
        assert fake.stats.jobs_created == 3
        assert fake.stats.faults["create:RATE_LIMIT"] == 1

    @pytest.mark.parametrize(
        ("fault", "created"), [(Fault.RESET_BEFORE, 0), (Fault.RESET_AFTER, 1)]
    )
    @pytest.mark.anyio
    async def test_resets_drop_the_connection(
        self, http: aiohttp.ClientSession, fault: Fault, created: int
    ) -> None:
        """A reset is a connection error to the client; only RESET_AFTER made a job."""
        async with FakeShortAPI() as fake:
            fake.script("create", [fault])
            with pytest.raises(aiohttp.ClientError):
                await create(http, fake)
        assert fake.stats.jobs_created == created

    @pytest.mark.parametrize("transport", TRANSPORTS)
    @pytest.mark.anyio
    async def test_throttling_and_overload_are_real_statuses(
        self, http: aiohttp.ClientSession, transport: Transport
    ) -> None:
        """429 and 503 keep their HTTP status in both transports; code 3000 stays HTTP 200."""
        async with FakeShortAPI(error_transport=transport, retry_after="7") as fake:
            fake.script("create", [Fault.RATE_LIMIT, Fault.UNAVAILABLE, Fault.CODE_3000])
            headers = {"Authorization": f"Bearer {fake.api_key}"}
            url = f"{fake.url}/api/v1/job/create"
            answers = []
            for _ in range(3):
                async with http.post(
                    url, json={"model": MODEL, "args": ARGS}, headers=headers
                ) as r:
                    answers.append(
                        (r.status, (await r.json())["code"], r.headers.get("Retry-After"))
                    )
        assert answers == [(429, 429, "7"), (503, 503, None), (200, 3000, None)]
        assert fake.stats.jobs_created == 0

    @pytest.mark.anyio
    async def test_seeded_rates_repeat(self, http: aiohttp.ClientSession) -> None:
        """The same seed gives the same random faults."""
        runs = []
        for _ in range(2):
            async with FakeShortAPI(seed=4, fault_rates={"create": {Fault.CODE_3000: 0.5}}) as f:
                runs.append([(await create(http, f))[1]["code"] for _ in range(12)])
        assert runs[0] == runs[1]
        assert 0 < runs[0].count(3000) < 12

    @pytest.mark.anyio
    async def test_random_rate_limits_carry_retry_after_and_are_counted_per_endpoint(
        self, http: aiohttp.ClientSession
    ) -> None:
        """RATE_LIMIT faults send the retry_after value; stats count 429s per endpoint."""
        rates = {"create": {Fault.RATE_LIMIT: 1.0}, "query": {Fault.RATE_LIMIT: 1.0}}
        async with FakeShortAPI(fault_rates=rates, retry_after="2.5") as fake:
            creates = [await create(http, fake) for _ in range(3)]
            queries = [await query_answer(http, fake, "any") for _ in range(2)]
        assert [status for status, _ in creates] == [429] * 3
        assert [(status, headers["Retry-After"]) for status, headers, _ in queries] == [
            (429, "2.5")
        ] * 2
        assert fake.stats.rate_limited == 5
        assert fake.stats.rate_limited_by_endpoint == {"create": 3, "query": 2}


class TestQueryRateLimit:
    @pytest.mark.anyio
    async def test_query_rate_limit(self, http: aiohttp.ClientSession) -> None:
        """Past the query rate the fake answers 429 with a Retry-After."""
        async with FakeShortAPI(query_rate_limit=5) as fake:
            _, body = await create(http, fake)
            codes = [(await query(http, fake, body["data"]["job_id"]))["code"] for _ in range(8)]
        assert 429 in codes
        assert fake.stats.rate_limited == codes.count(429)
        assert fake.stats.rate_limited_by_endpoint["query"] == codes.count(429)
        assert fake.stats.rate_limited_by_endpoint["create"] == 0

    @pytest.mark.anyio
    async def test_retry_after_is_the_exact_wait_for_the_next_token(
        self, http: aiohttp.ClientSession
    ) -> None:
        """A refused query's Retry-After is the fractional time to the next token, and a query
        sent after that long is answered."""
        async with FakeShortAPI(query_rate_limit=4, query_burst=1) as fake:
            sent = time.monotonic()
            first, _, _ = await query_answer(http, fake, "a")  # takes the only token
            status, headers, _ = await query_answer(http, fake, "a")
            wait = float(headers["Retry-After"])
            assert status == 429
            # The next token comes 0.25 s after the first query was answered, less the time since.
            assert 0.25 - (time.monotonic() - sent) <= wait <= 0.250001
            assert "." in headers["Retry-After"]  # fractional, not whole seconds
            await anyio.sleep(wait)
            after, _, _ = await query_answer(http, fake, "a")
        assert (first, after) == (200, 200)

    @pytest.mark.anyio
    async def test_retry_after_in_whole_seconds(self, http: aiohttp.ClientSession) -> None:
        """With rate_limit_retry_after='seconds' the wait is rounded up to whole seconds."""
        async with FakeShortAPI(
            query_rate_limit=4, query_burst=1, rate_limit_retry_after="seconds"
        ) as fake:
            await query_answer(http, fake, "a")
            status, headers, _ = await query_answer(http, fake, "a")
        assert (status, headers["Retry-After"]) == (429, "1")

    @pytest.mark.anyio
    async def test_burst_sets_the_bucket_size(self, http: aiohttp.ClientSession) -> None:
        """A bucket of 6 answers 6 queries at once, then refuses."""
        async with FakeShortAPI(query_rate_limit=1, query_burst=6) as fake:
            statuses = [(await query_answer(http, fake, "a"))[0] for _ in range(8)]
        assert statuses == [200] * 6 + [429] * 2


class TestFiles:
    @pytest.mark.anyio
    async def test_file_is_mp4_with_ranges(self, http: aiohttp.ClientSession) -> None:
        """The result file is an MP4; ranges give 206 with Content-Range, past the end 416."""
        async with FakeShortAPI(run_time=0) as fake:
            _, body = await create(http, fake)
            data = (await query(http, fake, body["data"]["job_id"]))["data"]
            url = data["result"]["videos"][0]["url"]
            async with http.get(url) as r:
                whole = await r.read()
                assert r.content_type == "video/mp4"
            async with http.get(url, headers={"Range": "bytes=10-19"}) as r:
                assert r.status == 206
                assert r.headers["Content-Range"] == f"bytes 10-19/{len(whole)}"
                assert await r.read() == whole[10:20]
            async with http.get(url, headers={"Range": f"bytes={len(whole)}-"}) as r:
                assert r.status == 416
        assert whole[4:8] == b"ftyp"

    @pytest.mark.anyio
    async def test_url_expires(self, http: aiohttp.ClientSession) -> None:
        """With url_ttl the file answers 410 once the link is older than that."""
        async with FakeShortAPI(run_time=0, url_ttl=0.05) as fake:
            _, body = await create(http, fake)
            data = (await query(http, fake, body["data"]["job_id"]))["data"]
            await anyio.sleep(0.1)
            async with http.get(data["result"]["videos"][0]["url"]) as r:
                assert r.status == 410

    @pytest.mark.parametrize("transport", TRANSPORTS)
    @pytest.mark.anyio
    async def test_a_missing_file_stays_a_plain_404(
        self, http: aiohttp.ClientSession, transport: Transport
    ) -> None:
        """Result files are a storage host's: a missing one is HTTP 404 in either transport."""
        async with (
            FakeShortAPI(error_transport=transport) as fake,
            http.get(f"{fake.url}/files/nothing.mp4") as r,
        ):
            assert (r.status, r.content_type) == (404, "text/plain")


class TestCallbacks:
    @pytest.mark.parametrize(
        ("knobs", "expected"),
        [({}, 1), ({"callback_duplicate": 1.0}, 2), ({"callback_drop": 1.0}, 0)],
    )
    @pytest.mark.anyio
    async def test_delivery_knobs(
        self, http: aiohttp.ClientSession, knobs: dict[str, float], expected: int
    ) -> None:
        """Callbacks arrive once, twice (duplicated) or never (dropped), shaped like a query."""
        async with (
            callback_sink() as (hook_url, received),
            FakeShortAPI(run_time=0, callback_delay=0.05, **knobs) as fake,  # type: ignore[arg-type]
        ):
            await create(http, fake, {"model": MODEL, "args": ARGS, "callback_url": hook_url})
            await anyio.sleep(0.3)
        assert len(received) == expected
        for payload in received:
            assert payload["code"] == 0
            assert payload["data"]["status"] == 2


class TestSeededJobs:
    @pytest.mark.anyio
    async def test_added_jobs_are_collected_by_attach(self) -> None:
        """Jobs added without HTTP are served like any other and can be attached by id."""
        from shortwan import AsyncShortWan
        from shortwan.testing import fast_poll

        async with FakeShortAPI(run_time=0.1) as fake:
            ids = fake.add_jobs(30, prefix="elsewhere")
            assert fake.stats.creates_received == 0
            assert fake.stats.jobs_by_prompt["elsewhere 29"] == 1
            async with AsyncShortWan(fake.api_key, base_url=fake.url, poll=fast_poll()) as client:
                videos = [await client.attach(job_id).result(timeout=10) for job_id in ids]
        assert [v.job_id for v in videos] == ids


class TestPublicSurface:
    def test_public_names_stay_and_all_is_sorted(self) -> None:
        """shortwan.testing keeps every name it exported, in one sorted, complete __all__."""
        from shortwan import testing

        before = {
            "DEFAULT_API_KEY",
            "FakeJob",
            "FakeProcess",
            "FakeShortAPI",
            "FakeStats",
            "Fault",
            "JobPlan",
            "fake_process",
            "fast_poll",
            "set_testing",
        }
        assert before <= set(testing.__all__)
        assert testing.__all__ == sorted(testing.__all__)
        assert all(hasattr(testing, name) for name in testing.__all__)

    def test_constructor_keeps_its_arguments(self) -> None:
        """Every argument FakeShortAPI took before the split is still taken, keyword-only."""
        import inspect

        before = [
            "api_key",
            "queue_time",
            "run_time",
            "jitter",
            "speed",
            "seed",
            "failure_rate",
            "failure_reason",
            "unknown_status",
            "result_shape",
            "extra_fields",
            "balance",
            "plan",
            "fault_rates",
            "retry_after",
            "slow_delay",
            "query_rate_limit",
            "url_ttl",
            "callback_drop",
            "callback_duplicate",
            "callback_delay",
            "callback_shape",
            "render",
            "host",
            "port",
        ]
        parameters = inspect.signature(FakeShortAPI).parameters
        assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in before)
