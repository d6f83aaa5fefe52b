"""Downloads: streamed to .part, resumed, checked, renamed; never with the API key."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from aiohttp import web

from shortwan import (
    AsyncShortWan,
    DownloadError,
    ImageToVideo,
    PollPolicy,
    RetryEvent,
    RetryPolicy,
    ShortWanError,
    Video,
)
from shortwan.testing import FakeShortAPI, Fault

REQ = ImageToVideo(prompt="a fox", first_frame_image="https://example.com/a.png")
POLL = PollPolicy(min_interval=0.02, max_interval=0.1, prior_seconds_per_video_second=0.001)


def client_for(fake: FakeShortAPI) -> AsyncShortWan:
    return AsyncShortWan(fake.api_key, base_url=fake.url, poll=POLL)


class TestDownload:
    @pytest.mark.anyio
    async def test_job_to_file(self, tmp_path: Path) -> None:
        """A job downloads to the path given, whole, with no .part left behind."""
        async with FakeShortAPI() as fake, client_for(fake) as client:
            job = await client.submit(REQ)
            path = await client.download(job, tmp_path / "out" / "fox.mp4")
        assert path.read_bytes()[4:8] == b"ftyp"
        assert not (tmp_path / "out" / "fox.mp4.part").exists()
        assert fake.stats.downloads

    @pytest.mark.anyio
    async def test_folder_target_named_after_job(self, tmp_path: Path) -> None:
        """Into an existing folder, the file is named after the job id."""
        async with FakeShortAPI() as fake, client_for(fake) as client:
            video = await client.generate(REQ)
            path = await client.download(video, tmp_path)
        assert path == tmp_path / f"{video.job_id}.mp4"

    @pytest.mark.anyio
    async def test_key_never_sent_to_file_host(self, tmp_path: Path) -> None:
        """Download requests carry no Authorization header."""
        async with FakeShortAPI() as fake, client_for(fake) as client:
            video = await client.generate(REQ)
            await client.download(video, tmp_path / "v.mp4")
        assert all("Authorization" not in headers for headers in fake.stats.downloads)

    @pytest.mark.anyio
    async def test_truncated_body_resumes(self, tmp_path: Path) -> None:
        """A body cut short is resumed with Range from where the .part file ends."""
        async with FakeShortAPI() as fake, client_for(fake) as client:
            video = await client.generate(REQ)
            fake.script("download", [Fault.TRUNCATED_JSON])
            path = await client.download(video, tmp_path / "v.mp4")
            whole = fake._video
        assert path.read_bytes() == whole
        assert any("Range" in h for h in fake.stats.downloads)

    @pytest.mark.anyio
    async def test_existing_file_not_overwritten(self, tmp_path: Path) -> None:
        """An existing file is kept unless overwrite=True."""
        target = tmp_path / "v.mp4"
        target.write_bytes(b"mine")
        async with FakeShortAPI() as fake, client_for(fake) as client:
            video = await client.generate(REQ)
            with pytest.raises(DownloadError, match="exists"):
                await client.download(video, target)
            await client.download(video, target, overwrite=True)
        assert target.read_bytes()[4:8] == b"ftyp"

    @pytest.mark.anyio
    async def test_expired_url_refreshed_by_query(self, tmp_path: Path) -> None:
        """An expired link (410) is replaced once by asking the service for the job again."""
        async with FakeShortAPI(url_ttl=0.05) as fake, client_for(fake) as client:
            video = await client.generate(REQ)
            await anyio.sleep(0.1)
            path = await client.download(video, tmp_path / "v.mp4")
        assert path.stat().st_size > 0

    @pytest.mark.anyio
    async def test_failures_raise_and_leave_no_final_file(self, tmp_path: Path) -> None:
        """When every attempt fails, DownloadError names the job and no file is at the path."""
        async with FakeShortAPI() as fake:
            client = AsyncShortWan(
                fake.api_key, base_url=fake.url, poll=POLL, retry=RetryPolicy(attempts=2)
            )
            async with client:
                video = await client.generate(REQ)
                fake.script("download", [Fault.HTML_502, Fault.HTML_502])
                with pytest.raises(DownloadError) as info:
                    await client.download(video, tmp_path / "v.mp4")
        assert info.value.job_id == video.job_id
        assert not (tmp_path / "v.mp4").exists()

    @pytest.mark.parametrize("job_id", ["../../escape", "/etc/passwd", "a/../../b"])
    @pytest.mark.anyio
    async def test_names_cannot_escape_the_folder(self, tmp_path: Path, job_id: str) -> None:
        """A job id full of path tricks still lands inside the target folder."""
        async with FakeShortAPI() as fake, client_for(fake) as client:
            real = await client.generate(REQ)
            video = Video(job_id=job_id, url=real.url)
            path = await client.download(video, tmp_path)
        assert path.parent == tmp_path.resolve()  # noqa: ASYNC240 - a test's own tmp folder

    @pytest.mark.anyio
    async def test_server_ignoring_range_restarts(self, tmp_path: Path) -> None:
        """A 200 to a Range request rewrites the file from the start."""
        body = b"0123456789" * 1000

        async def whole(_: web.Request) -> web.Response:
            return web.Response(body=body)

        app = web.Application()
        app.router.add_get("/v.mp4", whole)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        part = tmp_path / "v.mp4.part"
        part.write_bytes(b"garbage-from-an-old-attempt")
        try:
            async with AsyncShortWan("ak-x", base_url=f"http://127.0.0.1:{port}") as client:
                path = await client.download(f"http://127.0.0.1:{port}/v.mp4", tmp_path / "v.mp4")
        finally:
            await runner.cleanup()
        assert path.read_bytes() == body


class TestSecondHost:
    @pytest.mark.anyio
    async def test_key_absent_on_another_host_and_after_redirect(self, tmp_path: Path) -> None:
        """A file on a second host, reached directly or by redirect, never sees the API key."""
        async with FakeShortAPI() as api, FakeShortAPI(api_key="ak-" + "1" * 32) as files:
            async with client_for(files) as other:
                stored = await other.generate(REQ)  # a file that lives on the second host

            async def hop(_: web.Request) -> web.Response:
                raise web.HTTPFound(stored.url)

            app = web.Application()
            app.router.add_get("/r.mp4", hop)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            redirect = f"http://127.0.0.1:{runner.addresses[0][1]}/r.mp4"
            try:
                async with client_for(api) as client:
                    direct = Video(job_id=stored.job_id, url=stored.url)
                    await client.download(direct, tmp_path / "direct.mp4")
                    await client.download(redirect, tmp_path / "hop.mp4")
            finally:
                await runner.cleanup()
        assert len(files.stats.downloads) == 2
        for headers in files.stats.downloads:
            assert "Authorization" not in headers
            assert api.api_key not in repr(headers)
        assert (tmp_path / "direct.mp4").read_bytes() == (tmp_path / "hop.mp4").read_bytes()


class TestRetryEvents:
    @pytest.mark.anyio
    async def test_on_retry_sees_every_retry(self, tmp_path: Path) -> None:
        """on_retry gets each retried create, query and download with its cause and attempt."""
        events: list[RetryEvent] = []

        def broken(_event: RetryEvent) -> None:
            raise RuntimeError("a hook that fails must not break the retry")

        async with FakeShortAPI() as fake:
            fake.script("create", [Fault.UNAVAILABLE])
            fake.script("query", [Fault.HTML_502, Fault.UNAVAILABLE])
            fake.script("download", [Fault.UNAVAILABLE])
            async with AsyncShortWan(
                fake.api_key, base_url=fake.url, poll=POLL, on_retry=events.append
            ) as client:
                video = await client.generate(REQ)
                await client.download(video, tmp_path / "v.mp4")
            async with AsyncShortWan(
                fake.api_key, base_url=fake.url, poll=POLL, on_retry=broken
            ) as other:
                fake.script("query", [Fault.UNAVAILABLE])
                assert (await other.get_job(video.job_id)).id == video.job_id
        kinds = [e.operation for e in events]
        assert kinds == ["create", "query", "query", "download"]
        assert [e.attempt for e in events] == [1, 1, 2, 1]
        assert all(e.job_id == video.job_id for e in events[1:])
        assert all(isinstance(e.error, ShortWanError) and e.delay >= 0 for e in events)
