"""Render the sample MP4 the fake serves: ``python -m shortwan.testing._make_sample [PATH]``.

Needs PyAV and Pillow (the ``video`` and ``media`` extras). The clip is two seconds of a
coloured disc gliding over a gradient, small enough to ship in the package and real enough for
any player.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

WIDTH, HEIGHT, FPS, SECONDS = 320, 180, 24, 2
DEFAULT_PATH = Path(__file__).with_name("data") / "sample.mp4"


def render_frame(index: int) -> Any:
    """Return frame ``index`` as a Pillow image."""
    from PIL import Image, ImageDraw  # noqa: PLC0415 - optional dependency

    t = index / (FPS * SECONDS)
    red = Image.linear_gradient("L").rotate(90).resize((WIDTH, HEIGHT))
    green = Image.linear_gradient("L").resize((WIDTH, HEIGHT))
    blue = Image.new("L", (WIDTH, HEIGHT), int(140 + 60 * math.sin(2 * math.pi * t)))
    frame = Image.merge("RGB", (red, green, blue))
    cx = 40 + (WIDTH - 80) * t
    cy = HEIGHT / 2 + 40 * math.sin(2 * math.pi * t)
    ImageDraw.Draw(frame).ellipse((cx - 28, cy - 28, cx + 28, cy + 28), fill=(250, 120, 40))
    return frame


def main(path: Path = DEFAULT_PATH) -> Path:
    """Write the clip to ``path`` and return it."""
    import av  # noqa: PLC0415 - optional dependency

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "30", "preset": "veryslow"}
        for index in range(FPS * SECONDS):
            frame = av.VideoFrame.from_image(render_frame(index))  # type: ignore[no-untyped-call]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


if __name__ == "__main__":
    written = main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH)
    print(f"wrote {written} ({written.stat().st_size:,} bytes)")
