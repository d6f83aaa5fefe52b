"""FakeShortAPI itself, spoken to with plain aiohttp: it must follow the protocol page."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from shortwan.testing import FakeShortAPI, Fault, JobPlan

ARGS = {"prompt": "a fox", "first_frame_image": "https://example.com/a.png", "duration": 4}
MODEL = "alibaba/wan-2.7/image-to-video"


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
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with http.get(
        f"{fake.url}/api/v1/job/query", params={"id": job_id}, headers=headers
    ) as r:
        result: dict[str, Any] = await r.json()
        return result


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

    @pytest.mark.anyio
    async def test_wrong_key_is_401(self, http: aiohttp.ClientSession) -> None:
        """A wrong key gets HTTP 401 and creates nothing."""
        async with FakeShortAPI() as fake:
            status, body = await create(http, fake, key="ak-wrong")
        assert (status, body["code"]) == (401, 401)
        assert fake.stats.jobs_created == 0

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
        self, http: aiohttp.ClientSession, body: dict[str, Any]
    ) -> None:
        """Every broken rule gets HTTP 400 with a message, and no job."""
        async with FakeShortAPI() as fake:
            status, answer = await create(http, fake, body)
        assert (status, answer["code"]) == (400, 400)
        assert answer["message"]
        assert fake.stats.creates_rejected == 1
        assert fake.stats.jobs_created == 0

    @pytest.mark.anyio
    async def test_balance_and_refund(self, http: aiohttp.ClientSession) -> None:
        """A create beyond the balance gets 402; a failed job gives its charge back when it
        ends (protocol, section 7)."""
        async with FakeShortAPI(
            balance=Decimal("0.5"), failure_rate=1.0, queue_time=0, run_time=0.3
        ) as fake:
            assert (await create(http, fake))[0] == 200
            assert (await create(http, fake))[0] == 402  # the first job still holds the money
            await anyio.sleep(0.35)
            job_id = next(iter(fake.jobs))
            data = (await query(http, fake, job_id))["data"]
            assert (data["status"], data["refunded"]) == (3, True)
            assert fake.balance == Decimal("0.5")
            assert (await create(http, fake))[0] == 200

    @pytest.mark.anyio
    async def test_unknown_job_is_code_1(self, http: aiohttp.ClientSession) -> None:
        """Querying an unknown id answers code 1."""
        async with FakeShortAPI() as fake:
            body = await query(http, fake, "nope")
        assert body["code"] == 1

    @pytest.mark.anyio
    async def test_plan_overrides_one_job(self, http: aiohttp.ClientSession) -> None:
        """A plan can end a job with an unknown status number and its own shape."""

        def plan(args: Any) -> JobPlan | None:
            return JobPlan(outcome=7) if args.get("prompt") == "odd" else None

        async with FakeShortAPI(plan=plan, extra_fields=True) as fake:
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
        async with FakeShortAPI() as fake:
            _, body = await create(http, fake)
            job_id = body["data"]["job_id"]
            for _ in range(3):
                await query(http, fake, job_id)
        assert fake.stats.queries_by_job[job_id] == 3
        assert fake.stats.queries_after_terminal[job_id] == 2
        assert fake.stats.jobs_by_prompt["a fox"] == 1


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
    async def test_query_rate_limit(self, http: aiohttp.ClientSession) -> None:
        """Past the query rate the fake answers 429 with a Retry-After."""
        async with FakeShortAPI(query_rate_limit=5) as fake:
            _, body = await create(http, fake)
            codes = [(await query(http, fake, body["data"]["job_id"]))["code"] for _ in range(8)]
        assert 429 in codes
        assert fake.stats.rate_limited == codes.count(429)


class TestFiles:
    @pytest.mark.anyio
    async def test_file_is_mp4_with_ranges(self, http: aiohttp.ClientSession) -> None:
        """The result file is an MP4; ranges give 206 with Content-Range, past the end 416."""
        async with FakeShortAPI() as fake:
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
        async with FakeShortAPI(url_ttl=0.05) as fake:
            _, body = await create(http, fake)
            data = (await query(http, fake, body["data"]["job_id"]))["data"]
            await anyio.sleep(0.1)
            async with http.get(data["result"]["videos"][0]["url"]) as r:
                assert r.status == 410


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
        received: list[dict[str, Any]] = []

        async def hook(request: web.Request) -> web.Response:
            received.append(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with FakeShortAPI(callback_delay=0.05, **knobs) as fake:  # type: ignore[arg-type]
                body = {
                    "model": MODEL,
                    "args": ARGS,
                    "callback_url": f"http://127.0.0.1:{port}/hook",
                }
                await create(http, fake, body)
                await anyio.sleep(0.3)
        finally:
            await runner.cleanup()
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
