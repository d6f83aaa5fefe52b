"""Clips rendered from a job's image, and the fake serving them in place of the bundled sample."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import av
import pytest
from PIL import Image, ImageChops, ImageStat

from shortwan.testing import FakeShortAPI, Fault
from shortwan.testing._render import image_bytes_from_arg, plain_clip, render_clip, sample_images

MODEL = "alibaba/wan-2.7/image-to-video"
SAMPLE = resources.files("shortwan.testing").joinpath("data/sample.mp4").read_bytes()
IMAGES = sample_images()
HARBOUR = next(path for path in IMAGES if path.name == "harbour.jpg")


def data_uri(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def frames_of(clip: bytes) -> list[Image.Image]:
    with av.open(io.BytesIO(clip), "r") as container:
        return [frame.to_image() for frame in container.decode(video=0)]


def mean_colour(image: Image.Image) -> list[float]:
    return list(ImageStat.Stat(image.convert("RGB")).mean)


def colour_distance(a: list[float], b: list[float]) -> float:
    return math.dist(a, b)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def finished_job(http: aiohttp.ClientSession, fake: FakeShortAPI, image: str) -> str:
    """Create a job for ``image``, wait for it to succeed, and return its result URL."""
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    body = {"model": MODEL, "args": {"first_frame_image": image, "duration": 2}}
    async with http.post(f"{fake.url}/api/v1/job/create", json=body, headers=headers) as r:
        job_id = (await r.json())["data"]["job_id"]
    with anyio.fail_after(5):
        while True:
            params = {"id": job_id}
            async with http.get(
                f"{fake.url}/api/v1/job/query", params=params, headers=headers
            ) as r:
                data: dict[str, Any] = (await r.json())["data"]
            if data["status"] == 2:
                url: str = data["result"]["videos"][0]["url"]
                return url
            await anyio.sleep(0.02)


async def fetch(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url, headers=headers or {}) as r:
        return r.status, dict(r.headers), await r.read()


class TestRenderClip:
    @pytest.mark.parametrize("motion", ["zoom", "pan"])
    def test_clip_has_requested_size_and_length(self, motion: str) -> None:
        """The clip decodes with PyAV at the asked size, with about seconds × fps frames."""
        clip = render_clip(HARBOUR.read_bytes(), seconds=1.5, width=320, height=180, motion=motion)
        assert clip is not None
        frames = frames_of(clip)
        assert abs(len(frames) - 18) <= 1
        assert {frame.size for frame in frames} == {(320, 180)}

    @pytest.mark.parametrize("motion", ["zoom", "pan"])
    def test_first_and_last_frames_differ(self, motion: str) -> None:
        """The camera moves: the last frame is clearly not the first."""
        clip = render_clip(HARBOUR.read_bytes(), motion=motion)
        assert clip is not None
        frames = frames_of(clip)
        difference = ImageStat.Stat(ImageChops.difference(frames[0], frames[-1])).mean
        assert max(difference) > 5

    @pytest.mark.parametrize("path", IMAGES, ids=lambda path: path.stem)
    def test_zoom_starts_on_the_whole_image(self, path: Path) -> None:
        """A zoom's first frame has the source image's mean colour: the clip comes from it."""
        clip = render_clip(path.read_bytes(), motion="zoom")
        assert clip is not None
        first = mean_colour(frames_of(clip)[0])
        assert colour_distance(first, mean_colour(Image.open(path))) < 6

    def test_any_aspect_ratio_and_png(self) -> None:
        """A tall PNG with transparency still gives a clip of the asked size."""
        tall = Image.new("RGBA", (300, 700), (30, 160, 90, 128))
        buffer = io.BytesIO()
        tall.save(buffer, "PNG")
        clip = render_clip(buffer.getvalue(), seconds=0.5)
        assert clip is not None
        assert {frame.size for frame in frames_of(clip)} == {(480, 270)}

    @pytest.mark.parametrize(
        "data",
        [b"", b"not an image at all", HARBOUR.read_bytes()[:3000], b"GIF89a" + bytes(100)],
        ids=["empty", "text", "truncated-jpeg", "gif-header"],
    )
    def test_unreadable_bytes_give_none(self, data: bytes) -> None:
        """Bytes that are not a readable image give None, never an exception."""
        assert render_clip(data) is None

    @pytest.mark.parametrize(
        "options",
        [{"motion": "spin"}, {"width": 481}, {"seconds": 0}, {"fps": -1}],
        ids=["motion", "odd-width", "seconds", "fps"],
    )
    def test_bad_options_raise(self, options: dict[str, Any]) -> None:
        """Options out of range are a programming error: ValueError."""
        with pytest.raises(ValueError, match=r"motion|width|positive"):
            render_clip(HARBOUR.read_bytes(), **options)


class TestImageBytesFromArg:
    def test_data_uri_round_trips(self) -> None:
        """A data URI decodes to exactly the bytes it was made from."""
        assert image_bytes_from_arg(data_uri(HARBOUR)) == HARBOUR.read_bytes()

    def test_wrapped_base64_is_accepted(self) -> None:
        """Line breaks inside the base64 body (MIME style) are ignored."""
        payload = base64.encodebytes(b"\x89PNG fake body").decode("ascii")
        assert image_bytes_from_arg(f"data:image/png;base64,{payload}") == b"\x89PNG fake body"

    @pytest.mark.parametrize(
        "value",
        [
            "https://example.com/a.png",
            "http://example.com/a.jpg",
            "garbage",
            "data:image/png;base64,!!not base64!!",
            "data:text/plain;base64,aGVsbG8=",
            "data:image/png;base64,",
            "data:image/png,rawbytes",
        ],
    )
    def test_anything_else_is_none(self, value: str) -> None:
        """URLs, other schemes, broken base64 and empty payloads give None."""
        assert image_bytes_from_arg(value) is None


class TestSampleImages:
    def test_six_small_landscapes(self) -> None:
        """Six JPEGs ship, each 960x540 and under 60 KB, sorted by name."""
        assert len(IMAGES) == 6
        assert [path.name for path in IMAGES] == sorted(path.name for path in IMAGES)
        for path in IMAGES:
            with Image.open(path) as image:
                assert (image.format, image.size) == ("JPEG", (960, 540))
            assert path.stat().st_size < 60_000

    def test_each_has_its_own_colours(self) -> None:
        """Mean colours are far apart, so clips from different images are told apart."""
        means = [mean_colour(Image.open(path)) for path in IMAGES]
        closest = min(colour_distance(a, b) for i, a in enumerate(means) for b in means[i + 1 :])
        assert closest > 30


class TestFakeRender:
    @pytest.mark.anyio
    async def test_served_file_is_a_clip_of_the_job_image(
        self, http: aiohttp.ClientSession
    ) -> None:
        """With render=True the file is a new MP4 whose colours are those of the job's image."""
        async with FakeShortAPI(run_time=0, render=True) as fake:
            url = await finished_job(http, fake, data_uri(HARBOUR))
            status, headers, clip = await fetch(http, url)
        assert (status, headers["Content-Type"]) == (200, "video/mp4")
        assert clip != SAMPLE
        frames = frames_of(clip)
        assert frames[0].size == (480, 270)
        first = mean_colour(frames[0])
        nearest = min(
            IMAGES, key=lambda path: colour_distance(first, mean_colour(Image.open(path)))
        )
        assert nearest == HARBOUR
        assert fake.stats.clips_rendered == 1

    @pytest.mark.anyio
    async def test_range_request_on_a_clip(self, http: aiohttp.ClientSession) -> None:
        """A Range request on a rendered clip gets 206 with a Content-Range over the clip."""
        async with FakeShortAPI(run_time=0, render=True) as fake:
            url = await finished_job(http, fake, data_uri(IMAGES[0]))
            _, _, whole = await fetch(http, url)
            status, headers, part = await fetch(http, url, {"Range": "bytes=100-299"})
            past_end, _, _ = await fetch(http, url, {"Range": f"bytes={len(whole)}-"})
        assert whole != SAMPLE
        assert status == 206
        assert headers["Content-Range"] == f"bytes 100-299/{len(whole)}"
        assert part == whole[100:300]
        assert past_end == 416

    @pytest.mark.anyio
    async def test_racing_requests_share_one_render(self, http: aiohttp.ClientSession) -> None:
        """Several downloads at once of a new job's file render it once and get the same bytes."""
        bodies: list[bytes] = []

        async with FakeShortAPI(run_time=0, render=True) as fake:
            url = await finished_job(http, fake, data_uri(IMAGES[1]))

            async def download() -> None:
                bodies.append((await fetch(http, url))[2])

            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(download)
        assert len(bodies) == 4
        assert len(set(bodies)) == 1
        assert bodies[0] != SAMPLE
        assert fake.stats.clips_rendered == 1

    @pytest.mark.anyio
    async def test_url_image_falls_back_to_a_plain_clip(self, http: aiohttp.ClientSession) -> None:
        """A job whose image is a web URL (never fetched) is served a plain clip of its length."""
        async with FakeShortAPI(run_time=0, render=True) as fake:
            url = await finished_job(http, fake, "https://example.com/a.png")
            _, _, body = await fetch(http, url)
        assert body == plain_clip(2, 480, 270)
        assert fake.stats.clips_rendered == 0

    @pytest.mark.anyio
    async def test_cut_short_download_announces_the_clip(self, http: aiohttp.ClientSession) -> None:
        """A truncated download sends the clip's first half, so resuming it builds the clip."""
        async with FakeShortAPI(run_time=0, render=True) as fake:
            url = await finished_job(http, fake, data_uri(HARBOUR))
            fake.script("download", [Fault.TRUNCATED_JSON])
            received = bytearray()

            async def keep(response: aiohttp.ClientResponse) -> None:
                async for chunk in response.content.iter_any():
                    received.extend(chunk)

            async with http.get(url) as r:
                announced = r.content_length
                with pytest.raises(aiohttp.ClientPayloadError):
                    await keep(r)
            _, _, rest = await fetch(http, url, {"Range": f"bytes={len(received)}-"})
            _, _, whole = await fetch(http, url)
        assert announced == len(whole)
        assert bytes(received) + rest == whole
        assert whole != SAMPLE

    @pytest.mark.anyio
    async def test_default_serves_a_plain_clip_whatever_the_image(
        self, http: aiohttp.ClientSession
    ) -> None:
        """Without render the file is the plain clip of the job's length, whatever the image."""
        async with FakeShortAPI(run_time=0) as fake:
            url = await finished_job(http, fake, data_uri(HARBOUR))
            status, _, body = await fetch(http, url)
        assert status == 200
        assert body == plain_clip(2, 480, 270)
        assert body != SAMPLE
        assert fake.stats.clips_rendered == 0
