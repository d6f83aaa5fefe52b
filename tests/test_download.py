"""Downloads: streamed to .part, resumed, checked, renamed; never with the API key."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
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
    ServiceUnavailableError,
    ShortWanError,
    Video,
)
from shortwan._files import part_path, resolve_dest
from shortwan.testing import FakeShortAPI, Fault

REQ = ImageToVideo(prompt="a fox", first_frame_image="https://example.com/a.png")
POLL = PollPolicy(min_interval=0.02, max_interval=0.1, prior_seconds_per_video_second=0.001)


def client_for(fake: FakeShortAPI) -> AsyncShortWan:
    return AsyncShortWan(fake.api_key, base_url=fake.url, poll=POLL)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """Serve ``routes`` on 127.0.0.1 and yield the base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class TestDownload:
    @pytest.mark.anyio
    async def test_job_to_file(self, tmp_path: Path) -> None:
        """A job downloads to the path given, whole, with no .part left behind."""
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            job = await client.submit(REQ)
            path = await client.download(job, tmp_path / "out" / "fox.mp4")
        assert path.read_bytes()[4:8] == b"ftyp"
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fox.mp4"]
        assert fake.stats.downloads

    @pytest.mark.anyio
    async def test_folder_target_named_after_job(self, tmp_path: Path) -> None:
        """Into an existing folder, the file is named after the job id."""
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            video = await client.generate(REQ)
            path = await client.download(video, tmp_path)
        assert path == tmp_path / f"{video.job_id}.mp4"

    @pytest.mark.anyio
    async def test_key_never_sent_to_file_host(self, tmp_path: Path) -> None:
        """Download requests carry no Authorization header."""
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            video = await client.generate(REQ)
            await client.download(video, tmp_path / "v.mp4")
        assert all("Authorization" not in headers for headers in fake.stats.downloads)

    @pytest.mark.anyio
    async def test_truncated_body_resumes(self, tmp_path: Path) -> None:
        """A body cut short is resumed with Range from where the .part file ends."""
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            video = await client.generate(REQ)
            fake.script("download", [Fault.TRUNCATED_JSON])
            path = await client.download(video, tmp_path / "v.mp4")
            whole = await fake.result_video(video.job_id)
        assert path.read_bytes() == whole
        assert any("Range" in h for h in fake.stats.downloads)

    @pytest.mark.anyio
    async def test_existing_file_not_overwritten(self, tmp_path: Path) -> None:
        """An existing file is kept unless overwrite=True."""
        target = tmp_path / "v.mp4"
        target.write_bytes(b"mine")
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            video = await client.generate(REQ)
            with pytest.raises(DownloadError, match="exists"):
                await client.download(video, target)
            await client.download(video, target, overwrite=True)
        assert target.read_bytes()[4:8] == b"ftyp"

    @pytest.mark.anyio
    async def test_expired_url_refreshed_by_query(self, tmp_path: Path) -> None:
        """An expired link (410) is replaced once by asking the service for the job again."""
        async with FakeShortAPI(run_time=0, url_ttl=0.05) as fake, client_for(fake) as client:
            video = await client.generate(REQ)
            await anyio.sleep(0.1)
            path = await client.download(video, tmp_path / "v.mp4")
        assert path.stat().st_size > 0

    @pytest.mark.anyio
    async def test_failures_raise_and_leave_no_final_file(self, tmp_path: Path) -> None:
        """When every attempt fails, DownloadError names the job and no file is at the path."""
        async with FakeShortAPI(run_time=0) as fake:
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
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
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
        url = f"http://127.0.0.1:{port}/v.mp4"
        part = part_path(tmp_path / "v.mp4", job_id=None, url=url)
        part.write_bytes(b"garbage-from-an-old-attempt")
        try:
            async with AsyncShortWan("ak-x", base_url=f"http://127.0.0.1:{port}") as client:
                path = await client.download(url, tmp_path / "v.mp4")
        finally:
            await runner.cleanup()
        assert path.read_bytes() == body
        assert not part.exists()


class TestSecondHost:
    @pytest.mark.anyio
    async def test_key_absent_on_another_host_and_after_redirect(self, tmp_path: Path) -> None:
        """A file on a second host, reached directly or by redirect, never sees the API key."""
        async with (
            FakeShortAPI(run_time=0) as api,
            FakeShortAPI(run_time=0, api_key="ak-" + "1" * 32) as files,
        ):
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

        async with FakeShortAPI(run_time=0) as fake:
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


class TestFailuresAreDownloadErrors:
    @pytest.mark.anyio
    async def test_parent_that_is_a_file(self, tmp_path: Path) -> None:
        """A folder that cannot be made raises DownloadError naming the job, from the OSError."""
        (tmp_path / "taken").write_bytes(b"a file")
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            video = await client.generate(REQ)
            with pytest.raises(DownloadError) as info:
                await client.download(video, tmp_path / "taken" / "v.mp4")
        assert info.value.job_id == video.job_id
        assert isinstance(info.value.__cause__, FileExistsError)

    @pytest.mark.anyio
    async def test_nul_byte_in_path(self, tmp_path: Path) -> None:
        """A path with a NUL byte raises DownloadError with the ValueError as cause."""
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            video = await client.generate(REQ)
            with pytest.raises(DownloadError) as info:
                await client.download(video, tmp_path / "a\0b.mp4")
        assert info.value.job_id == video.job_id
        assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(DownloadError, match="unusable path") as folder:
            resolve_dest(f"{tmp_path}/a\0b/", "v.mp4", job_id="j1")
        assert folder.value.job_id == "j1"

    @pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
    @pytest.mark.anyio
    async def test_full_disk_is_not_retried(self, tmp_path: Path) -> None:
        """ENOSPC while streaming raises one DownloadError (no exception group) and no retry."""
        body = os.urandom(5 * 1024 * 1024)
        hits: list[str] = []

        async def whole(request: web.Request) -> web.Response:
            hits.append(request.path)
            return web.Response(body=body)

        async with serve({"/v.mp4": whole}) as base:
            url = f"{base}/v.mp4"
            dest = tmp_path / "v.mp4"
            part_path(dest, job_id=None, url=url).symlink_to("/dev/full")  # a disk that is full
            async with AsyncShortWan("ak-x", base_url=base) as client:
                with pytest.raises(DownloadError, match="cannot write") as info:
                    await client.download(url, dest)
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.ENOSPC
        assert hits == ["/v.mp4"]
        assert not dest.exists()

    @pytest.mark.anyio
    async def test_failed_refresh(self, tmp_path: Path) -> None:
        """An expired URL whose refresh query fails raises DownloadError caused by that error."""
        async with FakeShortAPI(run_time=0, url_ttl=0.0) as fake:
            client = AsyncShortWan(
                fake.api_key, base_url=fake.url, poll=POLL, retry=RetryPolicy(attempts=1)
            )
            async with client:
                video = await client.generate(REQ)
                fake.script("query", [Fault.UNAVAILABLE] * 5)
                with pytest.raises(DownloadError, match="fresh") as info:
                    await client.download(video, tmp_path / "v.mp4")
        assert info.value.job_id == video.job_id
        assert isinstance(info.value.__cause__, ServiceUnavailableError)
        assert not (tmp_path / "v.mp4").exists()


class TestRanges:
    @pytest.mark.anyio
    async def test_short_range_is_resumed(self, tmp_path: Path) -> None:
        """A 206 that stops before the total is kept, and the rest is asked for with Range."""
        body = bytes(range(256)) * 4
        ranges: list[str] = []

        async def partial(request: web.Request) -> web.StreamResponse:
            asked = request.headers.get("Range")
            if asked is None:
                response = web.StreamResponse(headers={"Content-Length": str(len(body))})
                await response.prepare(request)
                await response.write(body[:500])
                await anyio.sleep(0.05)  # let the client read them before the drop
                assert request.transport is not None
                request.transport.close()  # the connection drops mid-body
                return response
            ranges.append(asked)
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            end = min(start + 99, len(body) - 1)
            return web.Response(
                status=206,
                body=body[start : end + 1],
                headers={"Content-Range": f"bytes {start}-{end}/{len(body)}"},
            )

        async with serve({"/v.mp4": partial}) as base, AsyncShortWan("ak-x", base_url=base) as c:
            path = await c.download(f"{base}/v.mp4", tmp_path / "v.mp4")
        assert path.read_bytes() == body
        assert ranges[:2] == ["bytes=500-", "bytes=600-"]
        assert ranges[-1] == "bytes=1000-"


class TestPartFiles:
    def test_named_after_the_job_or_the_url_without_query(self, tmp_path: Path) -> None:
        """Part files differ per job and per URL path, but not per signed query."""
        dest = tmp_path / "v.mp4"
        a = part_path(dest, job_id="a", url="https://h/x.mp4?sig=1")
        assert a == part_path(dest, job_id="a", url="https://other/y.mp4")
        assert a != part_path(dest, job_id="b", url="https://h/x.mp4?sig=1")
        one = part_path(dest, job_id=None, url="https://h/x.mp4?sig=1")
        assert one == part_path(dest, job_id=None, url="https://h/x.mp4?sig=2")
        assert one != part_path(dest, job_id=None, url="https://h/y.mp4?sig=1")
        assert a.parent == dest.parent
        assert a.name.startswith("v.mp4.")
        assert a.name.endswith(".part")

    @pytest.mark.anyio
    async def test_part_of_another_video_is_not_resumed(self, tmp_path: Path) -> None:
        """Bytes left at the same path by another job, or by an older naming, are never used."""
        dest = tmp_path / "v.mp4"
        async with FakeShortAPI(run_time=0) as fake, client_for(fake) as client:
            video = await client.generate(REQ)
            alone = await client.download(video, tmp_path / "alone.mp4")
            other = part_path(dest, job_id="another-job", url=video.url)
            other.write_bytes(b"X" * 500)
            dest.with_name("v.mp4.part").write_bytes(b"Y" * 500)
            path = await client.download(video, dest)
        assert path.read_bytes() == alone.read_bytes()
        assert all("Range" not in headers for headers in fake.stats.downloads)
        assert other.read_bytes() == b"X" * 500  # not ours to remove


class TestSameDestination:
    @pytest.mark.parametrize("overwrite", [False, True])
    @pytest.mark.anyio
    async def test_concurrent_downloads_take_turns(self, tmp_path: Path, overwrite: bool) -> None:
        """Two downloads to one path run one after the other; the later follows overwrite."""
        bodies = {"/a.mp4": b"A" * 300_000, "/b.mp4": b"B" * 300_000}

        async def slow(request: web.Request) -> web.StreamResponse:
            body = bodies[request.path]
            response = web.StreamResponse(headers={"Content-Length": str(len(body))})
            await response.prepare(request)
            for i in range(0, len(body), 100_000):
                await response.write(body[i : i + 100_000])
                await anyio.sleep(0.02)
            return response

        dest = tmp_path / "v.mp4"
        results: dict[str, Path | DownloadError] = {}
        routes = {"/a.mp4": slow, "/b.mp4": slow}
        async with serve(routes) as base, AsyncShortWan("ak-x", base_url=base) as client:

            async def one(name: str) -> None:
                try:
                    results[name] = await client.download(
                        f"{base}{name}", dest, overwrite=overwrite
                    )
                except DownloadError as exc:
                    results[name] = exc

            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "/a.mp4")
                await anyio.sleep(0.01)
                tg.start_soon(one, "/b.mp4")
            assert client._downloader._turns == {}  # no lock is kept once nobody holds it
        assert results["/a.mp4"] == dest
        if overwrite:
            assert results["/b.mp4"] == dest
            assert dest.read_bytes() == bodies["/b.mp4"]
        else:
            assert isinstance(results["/b.mp4"], DownloadError)
            assert "exists" in str(results["/b.mp4"])
            assert dest.read_bytes() == bodies["/a.mp4"]
        left = sorted(p.name for p in tmp_path.iterdir())  # noqa: ASYNC240 - a test's tmp folder
        assert left == ["v.mp4"]
