"""Make a first video against the embedded fake service: no API key, no network."""

import anyio

from shortwan import AsyncShortWan, ImageToVideo
from shortwan.testing import FakeShortAPI, fast_poll


async def main() -> None:
    async with (
        FakeShortAPI(run_time=2.0) as fake,
        AsyncShortWan(fake.api_key, base_url=fake.url, poll=fast_poll()) as client,
    ):
        request = ImageToVideo(
            prompt="a red fox runs through fresh snow",
            first_frame_image="https://example.com/fox.png",
            duration=5,
        )
        job = await client.submit(request)
        print(f"job {job.id} created, charged ${job.amount}")
        video = await job.result(timeout=60)
        path = await client.download(video, "shortwan-demo/fox.mp4")
        print(f"video ready: {video.url} -> {path}")


if __name__ == "__main__":
    anyio.run(main)
