"""Raw clients shaped like the model page's examples, pointed at the fake: cURL and urllib.

They show what code written without shortwan sees: the documented envelope, the job id in
``data.job_id``, and refusals that only the ``code`` reveals when errors come as the service
sends them (HTTP 200), so code that only checks the HTTP status reads no job id.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from typing import Any, Literal

import anyio
import pytest

from shortwan.testing import FakeShortAPI

CURL = shutil.which("curl")
MODEL = "alibaba/wan-2.7/image-to-video"
# A valid combination (first frame + driving audio) with the page's other arguments.
BODY = {
    "model": MODEL,
    "args": {
        "prompt": "An action shot of a black lab swimming in a pool",
        "first_frame_image": "https://example.com/lab.jpg",
        "driving_audio_url": "https://example.com/splash.mp3",
        "resolution": "720p",
        "duration": 5,
        "prompt_extend": False,
    },
}
Transport = Literal["envelope", "http"]

needs_curl = pytest.mark.skipif(CURL is None, reason="needs the curl program")


async def curl(*args: str) -> tuple[int, str]:
    """Run curl with ``args``; return its exit status and standard output."""
    assert CURL is not None
    done = await anyio.run_process([CURL, "--silent", "--show-error", *args], check=False)
    return done.returncode, done.stdout.decode()


def urllib_call(
    url: str, key: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` (or GET without one) the way the page's Python example does."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        answer: dict[str, Any] = json.loads(response.read())
        return response.status, answer


@needs_curl
class TestCurl:
    @pytest.mark.anyio
    async def test_create_and_query_with_curl(self) -> None:
        """The page's cURL create gives data.job_id; a cURL query of that id finds the job."""
        async with FakeShortAPI(run_time=0) as fake:
            code, out = await curl(
                "-X",
                "POST",
                f"{fake.url}/api/v1/job/create",
                "-H",
                f"Authorization: Bearer {fake.api_key}",
                "-H",
                "Content-Type: application/json",
                "-d",
                json.dumps(BODY),
            )
            assert code == 0
            created = json.loads(out)
            job_id = created["data"]["job_id"]
            code, out = await curl(
                f"{fake.url}/api/v1/job/query?id={job_id}",
                "-H",
                f"Authorization: Bearer {fake.api_key}",
            )
        assert created == {"code": 0, "data": {"job_id": job_id, "amount": "0.425"}}
        answer = json.loads(out)
        assert (code, answer["code"], answer["data"]["id"]) == (0, 0, job_id)
        assert answer["data"]["status"] == 2
        assert answer["data"]["result"]["videos"][0]["url"].startswith(fake.url)

    @pytest.mark.parametrize(
        ("transport", "status", "exit_code"), [("envelope", 200, 0), ("http", 401, 22)]
    )
    @pytest.mark.anyio
    async def test_refusal_seen_by_curl(
        self, transport: Transport, status: int, exit_code: int
    ) -> None:
        """A wrong key passes ``curl --fail`` in the envelope (only the code tells, and no
        job id comes back) and fails it with HTTP 401 in the http transport."""
        async with FakeShortAPI(error_transport=transport) as fake:
            args = [
                "-X",
                "POST",
                f"{fake.url}/api/v1/job/create",
                "-H",
                "Authorization: Bearer ak-00000000000000000000000000000000",
                "-H",
                "Content-Type: application/json",
                "-d",
                json.dumps(BODY),
            ]
            code, out = await curl("--write-out", "\n%{http_code}", *args)
            failing, _ = await curl("--fail", "--output", "/dev/null", *args)
        body, _, http_status = out.rpartition("\n")
        answer = json.loads(body)
        assert (code, int(http_status)) == (0, status)
        assert answer["code"] == 401
        assert "job_id" not in answer.get("data", {})
        assert failing == exit_code
        assert fake.stats.jobs_created == 0

    @pytest.mark.anyio
    async def test_a_form_post_is_refused(self) -> None:
        """cURL's default ``-d`` sends a form content type: the fake refuses it, like the
        service, even when the body is JSON."""
        async with FakeShortAPI() as fake:
            code, out = await curl(
                f"{fake.url}/api/v1/job/create",
                "-H",
                f"Authorization: Bearer {fake.api_key}",
                "-d",
                json.dumps(BODY),
            )
        answer = json.loads(out)
        assert code == 0
        assert answer["code"] == 415
        assert fake.stats.jobs_created == 0


class TestUrllib:
    @pytest.mark.anyio
    async def test_create_and_query_with_urllib(self) -> None:
        """The page's Python shape (urllib) reads data.job_id and queries the job by it."""
        async with FakeShortAPI(run_time=0) as fake:
            create = f"{fake.url}/api/v1/job/create"
            status, created = await anyio.to_thread.run_sync(
                urllib_call, create, fake.api_key, BODY
            )
            job_id = created["data"]["job_id"]
            query = f"{fake.url}/api/v1/job/query?id={job_id}"
            _, answer = await anyio.to_thread.run_sync(urllib_call, query, fake.api_key)
        assert (status, created["code"], created["data"]["amount"]) == (200, 0, "0.425")
        assert answer["data"]["status"] == 2
        assert answer["data"]["args"] == BODY["args"]

    @pytest.mark.anyio
    async def test_envelope_refusal_is_not_an_http_error(self) -> None:
        """In the envelope a wrong key is HTTP 200: urlopen raises nothing, data has no job id,
        and only ``code != 0`` shows the refusal."""
        async with FakeShortAPI() as fake:
            url = f"{fake.url}/api/v1/job/create"
            status, answer = await anyio.to_thread.run_sync(urllib_call, url, "ak-wrong", BODY)
        assert status == 200
        assert answer["code"] == 401
        assert answer.get("data", {}).get("job_id") is None
        assert fake.stats.jobs_created == 0

    @pytest.mark.anyio
    async def test_http_refusal_is_an_http_error(self) -> None:
        """With error_transport='http' the same refusal raises HTTPError 401 with the body."""
        async with FakeShortAPI(error_transport="http") as fake:
            url = f"{fake.url}/api/v1/job/create"
            with pytest.raises(urllib.error.HTTPError) as info:
                await anyio.to_thread.run_sync(urllib_call, url, "ak-wrong", BODY)
            body = json.loads(info.value.read())
            info.value.close()
        assert info.value.code == 401
        assert body["code"] == 401
        assert fake.stats.jobs_created == 0
