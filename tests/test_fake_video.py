"""The videos the fake serves: the asked duration in a 16:9 frame, and the sample without PyAV."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from helpers import run_python
from PIL import Image, ImageStat

from shortwan.testing import FakeShortAPI
from shortwan.testing._render import FPS, plain_clip, sample_images

MODEL = "alibaba/wan-2.7/image-to-video"
SAMPLE = resources.files("shortwan.testing").joinpath("data/sample.mp4").read_bytes()
HARBOUR = next(path for path in sample_images() if path.name == "harbour.jpg")


def probe(clip: bytes | Path) -> tuple[float, int, int, int]:
    """Return a clip's (duration in seconds, width, height, frame count), read by PyAV."""
    source: Any = str(clip) if isinstance(clip, Path) else io.BytesIO(clip)
    with av.open(source) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base)
        frames = sum(1 for _ in container.decode(video=0))
        return duration, stream.width, stream.height, frames


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def download(http: aiohttp.ClientSession, fake: FakeShortAPI, args: dict[str, Any]) -> bytes:
    """Create an instant job with ``args`` and return its file's bytes."""
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    body = {"model": MODEL, "args": {"first_frame_image": "https://example.com/a.png", **args}}
    async with http.post(f"{fake.url}/api/v1/job/create", json=body, headers=headers) as r:
        job_id = (await r.json())["data"]["job_id"]
    params = {"id": job_id}
    async with http.get(f"{fake.url}/api/v1/job/query", params=params, headers=headers) as r:
        url = (await r.json())["data"]["result"]["videos"][0]["url"]
    async with http.get(url) as r:
        return await r.read()


class TestServedVideo:
    @pytest.mark.parametrize(
        ("duration", "resolution", "size"),
        [(2, "720p", (320, 180)), (7, "1080p", (480, 270)), (15, "720p", (320, 180))],
    )
    @pytest.mark.anyio
    async def test_video_has_the_asked_duration_and_a_16_9_frame(
        self,
        http: aiohttp.ClientSession,
        duration: int,
        resolution: str,
        size: tuple[int, int],
    ) -> None:
        """The file lasts the asked seconds, in a 16:9 frame a quarter of the resolution's."""
        async with FakeShortAPI(run_time=0) as fake:
            clip = await download(http, fake, {"duration": duration, "resolution": resolution})
        seconds, width, height, frames = probe(clip)
        assert abs(seconds - duration) <= 0.1
        assert (width, height) == size
        assert width * 9 == height * 16
        assert frames == duration * FPS

    @pytest.mark.anyio
    async def test_rendered_clip_has_the_asked_duration(self, http: aiohttp.ClientSession) -> None:
        """A clip rendered from the job's image also lasts the asked seconds, 16:9."""
        image = "data:image/jpeg;base64," + base64.b64encode(HARBOUR.read_bytes()).decode()
        async with FakeShortAPI(run_time=0, render=True) as fake:
            clip = await download(
                http, fake, {"first_frame_image": image, "duration": 6, "resolution": "720p"}
            )
        seconds, width, height, _frames = probe(clip)
        assert abs(seconds - 6) <= 0.1
        assert (width, height) == (320, 180)
        assert fake.stats.clips_rendered == 1

    @pytest.mark.anyio
    async def test_jobs_of_one_shape_share_one_encode(self, http: aiohttp.ClientSession) -> None:
        """Two jobs of the same length and resolution get the same bytes; result_video agrees."""
        async with FakeShortAPI(run_time=0) as fake:
            first = await download(http, fake, {"duration": 3})
            second = await download(http, fake, {"duration": 3})
            other = await download(http, fake, {"duration": 4})
            served = await fake.result_video(next(iter(fake.jobs)))
        assert first == second == served
        assert other != first

    def test_plain_clip_shows_time_passing(self) -> None:
        """In a plain clip the bar moves right and the tick row fills: the length is visible."""
        clip = plain_clip(4, 320, 180)
        assert clip is not None
        with av.open(io.BytesIO(clip)) as container:
            frames = [frame.to_image().convert("L") for frame in container.decode(video=0)]

        def brightness(frame: Image.Image, box: tuple[int, int, int, int]) -> float:
            return float(ImageStat.Stat(frame.crop(box)).mean[0])

        first, last = frames[0], frames[-1]
        left, right, ticks = (0, 0, 16, 150), (304, 0, 320, 150), (0, 170, 320, 180)
        assert brightness(first, left) > brightness(last, left) + 50
        assert brightness(last, right) > brightness(first, right) + 50
        assert brightness(last, ticks) > brightness(first, ticks) + 50

    def test_without_pyav_the_bundled_sample_is_served(self) -> None:
        """In an environment without PyAV every job gets the two-second sample, byte for byte."""
        script = """
import asyncio, hashlib, sys
sys.modules["av"] = None  # as if PyAV were not installed
import aiohttp
from shortwan.testing import FakeShortAPI

async def main():
    async with FakeShortAPI(run_time=0) as fake, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {fake.api_key}"}
        args = {"first_frame_image": "https://example.com/a.png", "duration": 9}
        body = {"model": "alibaba/wan-2.7/image-to-video", "args": args}
        url = fake.url + "/api/v1/job/create"
        async with http.post(url, json=body, headers=headers) as r:
            job_id = (await r.json())["data"]["job_id"]
        url = fake.url + "/api/v1/job/query"
        async with http.get(url, params={"id": job_id}, headers=headers) as r:
            url = (await r.json())["data"]["result"]["videos"][0]["url"]
        async with http.get(url) as r:
            print(hashlib.sha256(await r.read()).hexdigest())

asyncio.run(main())
"""
        done = run_python(script)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == hashlib.sha256(SAMPLE).hexdigest()


class TestDemoVideos:
    def test_demo_videos_have_their_lines_durations(self, tmp_path: Path) -> None:
        """Each MP4 the demo leaves lasts its line's duration (within 0.1 s), in a 16:9 frame."""
        script = shutil.which("shortwan")
        args = [script] if script else [sys.executable, "-m", "shortwan"]
        out = tmp_path / "demo"
        env = {**os.environ, "COLUMNS": "200"}
        done = subprocess.run(  # noqa: S603 - our own entry point
            [*args, "demo", "-o", str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=90,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in (out / "demo.jsonl").read_text().splitlines()]
        assert {line["duration"] for line in lines} == {2, 3, 4}
        for line in lines:
            seconds, width, height, _frames = probe(out / line["output"])
            assert abs(seconds - line["duration"]) <= 0.1, line
            assert width * 9 == height * 16
