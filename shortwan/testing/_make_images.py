"""Draw the sample images shipped for demos: ``python -m shortwan.testing._make_images [DIR]``.

Needs Pillow (the ``media`` extra). Six text-free landscapes, 960x540 JPEG, each with its own
palette and layout so the clips the fake renders from them are told apart at a glance. Everything
is drawn from fixed seeds, so a rerun gives the same pictures.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

WIDTH: Final = 960
HEIGHT: Final = 540
# Shapes are drawn at twice the size and scaled down: Pillow's drawing has no anti-aliasing.
SCALE: Final = 2
W: Final = WIDTH * SCALE
H: Final = HEIGHT * SCALE
QUALITY: Final = 82
DEFAULT_DIR: Final = Path(__file__).with_name("data") / "images"

Colour = tuple[int, int, int]
Stops = Sequence[tuple[float, Colour]]


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    r, g, b_ = (round(x + (y - x) * t) for x, y in zip(a, b, strict=True))
    return (r, g, b_)


def _at(stops: Stops, t: float) -> Colour:
    """Return the colour at ``t`` (0 to 1) along ``stops``, sorted by position."""
    for (p0, c0), (p1, c1) in itertools.pairwise(stops):
        if t <= p1:
            return _mix(c0, c1, 0.0 if p1 == p0 else max(0.0, (t - p0) / (p1 - p0)))
    return stops[-1][1]


def _band(draw: Any, top: int, bottom: int, stops: Stops) -> None:
    """Fill the rows ``top`` to ``bottom`` with a vertical gradient through ``stops``."""
    span = max(1, bottom - top - 1)
    for y in range(top, bottom):
        draw.line([(0, y), (W, y)], fill=_at(stops, (y - top) / span))


def _ridge(
    rng: random.Random, base: float, amplitude: float, waves: int, roughness: float
) -> list[tuple[float, float]]:
    """Return a closed polygon: a wavy skyline at height ``base`` (0 to 1), filled to the bottom."""
    phases = [rng.uniform(0, 2 * math.pi) for _ in range(3)]
    points = []
    for i in range(0, W + 1, 8):
        x = i / W
        y = (
            math.sin(x * waves * math.pi + phases[0])
            + 0.5 * math.sin(x * waves * 2.3 * math.pi + phases[1])
            + roughness * math.sin(x * waves * 7.1 * math.pi + phases[2])
        )
        points.append((float(i), (base - amplitude * y / 1.6) * H))
    return [*points, (float(W), float(H)), (0.0, float(H))]


def _finish(image: Any) -> Any:
    from PIL import Image  # noqa: PLC0415 - optional dependency

    return image.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)


def sunrise() -> Any:
    """Return a sun half out of a calm sea under an orange sky, purple headlands either side."""
    from PIL import Image, ImageDraw  # noqa: PLC0415 - optional dependency

    image = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(image)
    horizon = int(H * 0.62)
    _band(draw, 0, horizon, [(0, (38, 42, 104)), (0.55, (214, 96, 84)), (1, (255, 196, 92))])
    r = H * 0.16
    draw.ellipse((W / 2 - r, horizon - r, W / 2 + r, horizon + r), fill=(255, 236, 160))
    # The sea hides the sun's lower half; its reflection is a column of broken streaks.
    _band(draw, horizon, H, [(0, (228, 132, 80)), (1, (62, 40, 86))])
    rng = random.Random(1)  # noqa: S311 - drawing, not secrets
    for y in range(horizon + 6, H, 14):
        depth = (y - horizon) / (H - horizon)
        half = r * (1.1 - 0.5 * depth) * rng.uniform(0.5, 1.0)
        shift = rng.uniform(-20, 20)
        draw.line([(W / 2 - half + shift, y), (W / 2 + half + shift, y)], (255, 214, 140), 5)
    draw.polygon([(0, horizon - 120), (380, horizon), (0, horizon)], fill=(84, 44, 92))
    draw.polygon([(W, horizon - 70), (W - 520, horizon), (W, horizon)], fill=(70, 36, 80))
    return _finish(image)


def harbour() -> Any:
    """Return a bright harbour: blue sky, striped lighthouse on a jetty at left, boats at right."""
    from PIL import Image, ImageDraw  # noqa: PLC0415 - optional dependency

    image = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(image)
    horizon = int(H * 0.55)
    _band(draw, 0, horizon, [(0, (52, 128, 204)), (1, (186, 222, 240))])
    _band(draw, horizon, H, [(0, (30, 110, 150)), (1, (14, 58, 92))])
    for cx, cy, s in ((W * 0.62, H * 0.16, 1.0), (W * 0.82, H * 0.26, 0.7)):
        for dx, dy, rr in ((-60, 10, 50), (0, -10, 70), (70, 12, 48)):
            x, y, rad = cx + dx * s, cy + dy * s, rr * s
            draw.ellipse((x - rad, y - rad * 0.7, x + rad, y + rad * 0.7), fill=(246, 250, 252))
    deck = horizon + 90
    draw.rectangle((0, deck, W * 0.42, deck + 40), fill=(112, 92, 74))
    # A tapering tower, striped red and white; the stripes follow the taper so none sticks out.
    lx, top = W * 0.16, H * 0.18

    def half(y: float) -> float:
        return 44 + 26 * (y - top) / (deck - top)

    def slab(y0: float, y1: float) -> list[tuple[float, float]]:
        return [(lx - half(y0), y0), (lx + half(y0), y0), (lx + half(y1), y1), (lx - half(y1), y1)]

    draw.polygon(slab(top, deck), fill=(244, 244, 240))
    for i in range(3):
        y0 = top + (deck - top) * (0.2 + 0.28 * i)
        draw.polygon(slab(y0, y0 + 70), fill=(206, 40, 44))
    draw.rectangle((lx - 40, top - 70, lx + 40, top), fill=(255, 220, 96))
    draw.polygon([(lx - 56, top - 70), (lx, top - 130), (lx + 56, top - 70)], fill=(40, 40, 48))
    for bx, by, size, sail in (
        (W * 0.58, horizon + 150, 1.0, (250, 250, 246)),
        (W * 0.78, horizon + 70, 0.7, (250, 200, 70)),
        (W * 0.9, horizon + 230, 1.2, (240, 90, 70)),
    ):
        hull = [
            (bx - 130 * size, by),
            (bx + 130 * size, by),
            (bx + 90 * size, by + 44 * size),
            (bx - 90 * size, by + 44 * size),
        ]
        draw.polygon(hull, fill=(60, 44, 40))
        draw.line([(bx, by), (bx, by - 260 * size)], fill=(60, 44, 40), width=round(8 * size))
        draw.polygon(
            [(bx + 8, by - 12), (bx + 8, by - 250 * size), (bx + 120 * size, by - 12)], sail
        )
        draw.polygon(
            [(bx - 8, by - 12), (bx - 8, by - 200 * size), (bx - 90 * size, by - 12)], sail
        )
    return _finish(image)


def forest() -> Any:
    """Return misty green ridges under a pale sky, rows of pines getting darker toward the front."""
    from PIL import Image, ImageDraw  # noqa: PLC0415 - optional dependency

    image = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(image)
    _band(draw, 0, H, [(0, (206, 226, 214)), (0.5, (232, 238, 222)), (1, (170, 196, 170))])
    rng = random.Random(3)  # noqa: S311 - drawing, not secrets
    rows = [
        (0.48, (150, 184, 160), 60),
        (0.6, (100, 148, 112), 80),
        (0.74, (56, 108, 70), 110),
        (0.9, (22, 62, 38), 150),
    ]
    for base, colour, tree in rows:
        draw.polygon(_ridge(rng, base, 0.05, 3, 0.2), fill=colour)
        x = rng.uniform(-tree, 0)
        while x < W + tree:
            height = tree * rng.uniform(2.0, 3.2)
            foot = base * H + rng.uniform(-0.02, 0.04) * H
            for tier in range(3):
                top = foot - height * (1 - 0.28 * tier)
                half = tree * (0.55 - 0.12 * tier)
                draw.polygon(
                    [
                        (x, top),
                        (x + half, foot - height * 0.25 * tier),
                        (x - half, foot - height * 0.25 * tier),
                    ],
                    fill=colour,
                )
            x += tree * rng.uniform(0.7, 1.4)
    return _finish(image)


def city() -> Any:
    """Return a night skyline: navy sky, a crescent moon, towers with lit windows, a dark river."""
    from PIL import Image, ImageDraw  # noqa: PLC0415 - optional dependency

    image = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(image)
    water = int(H * 0.8)
    _band(draw, 0, water, [(0, (8, 12, 40)), (0.7, (36, 42, 96)), (1, (92, 62, 112))])
    _band(draw, water, H, [(0, (20, 18, 44)), (1, (6, 6, 18))])
    # The crescent is a disc minus an offset disc, cut in a mask so the sky shows through.
    mx, my, mr = W * 0.8, H * 0.17, 70
    moon = Image.new("L", (W, H))
    cut = ImageDraw.Draw(moon)
    cut.ellipse((mx - mr, my - mr, mx + mr, my + mr), fill=255)
    cut.ellipse((mx - mr + 36, my - mr - 14, mx + mr + 36, my + mr - 14), fill=0)
    image.paste((250, 244, 214), mask=moon)
    rng = random.Random(4)  # noqa: S311 - drawing, not secrets
    x = 0.0
    while x < W:
        width = rng.uniform(90, 200)
        top = water - rng.uniform(0.18, 0.6) * H
        shade = rng.randint(20, 44)
        draw.rectangle((x, top, x + width, water), fill=(shade, shade, shade + 18))
        for wy in range(int(top) + 24, water - 20, 36):
            for wx in range(int(x) + 16, int(x + width) - 24, 30):
                if rng.random() < 0.45:
                    draw.rectangle((wx, wy, wx + 14, wy + 18), fill=(255, 210, 110))
        # The river breaks each tower's lights into short dim streaks below it.
        for wy in range(water + 12, min(H, water + int((water - top) * 0.3)), 24):
            middle, reach = x + width / 2, width * rng.uniform(0.1, 0.35)
            draw.line([(middle - reach, wy), (middle + reach, wy)], fill=(120, 98, 62), width=5)
        x += width + rng.uniform(4, 24)
    return _finish(image)


def desert() -> Any:
    """Return ochre dunes in overlapping curves under a hazy sky, a small white sun high right."""
    from PIL import Image, ImageDraw  # noqa: PLC0415 - optional dependency

    image = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(image)
    _band(draw, 0, H, [(0, (120, 178, 222)), (0.45, (238, 222, 190)), (1, (226, 170, 100))])
    sx, sy, sr = W * 0.76, H * 0.14, 52
    draw.ellipse((sx - sr * 2, sy - sr * 2, sx + sr * 2, sy + sr * 2), fill=(200, 222, 236))
    draw.ellipse((sx - sr, sy - sr, sx + sr, sy + sr), fill=(255, 252, 236))
    rng = random.Random(5)  # noqa: S311 - drawing, not secrets
    dunes = [
        (0.5, (222, 170, 104)),
        (0.6, (208, 142, 76)),
        (0.72, (194, 118, 58)),
        (0.86, (168, 92, 44)),
    ]
    for base, colour in dunes:
        ridge = _ridge(rng, base, 0.08, 2, 0.0)
        draw.polygon(ridge, fill=colour)
        # The shaded lee side of each dune: the same curve, shifted and darker.
        shade = _mix(colour, (90, 40, 30), 0.25)
        top = [(x + 60, y + 18) for x, y in ridge[:-2]]
        draw.line(top, fill=shade, width=22)
    cx, cy = W * 0.24, H * 0.86
    green = (52, 96, 54)
    draw.rounded_rectangle((cx - 22, cy - 230, cx + 22, cy), 22, fill=green)
    draw.rounded_rectangle((cx - 90, cy - 170, cx - 56, cy - 70), 17, fill=green)
    draw.rectangle((cx - 90, cy - 92, cx - 10, cy - 70), fill=green)
    draw.rounded_rectangle((cx + 56, cy - 200, cx + 90, cy - 110), 17, fill=green)
    draw.rectangle((cx + 10, cy - 132, cx + 90, cy - 110), fill=green)
    return _finish(image)


def aurora() -> Any:
    """Return green and violet aurora curtains over snowy peaks, mirrored in a still lake."""
    from PIL import Image, ImageChops, ImageDraw, ImageFilter  # noqa: PLC0415 - optional dependency

    image = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(image)
    lake = int(H * 0.72)
    _band(draw, 0, lake, [(0, (4, 8, 24)), (1, (16, 40, 60))])
    rng = random.Random(6)  # noqa: S311 - drawing, not secrets
    for _ in range(160):
        x, y, r = rng.uniform(0, W), rng.uniform(0, lake * 0.8), rng.uniform(1.5, 3.5)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(230, 236, 255))
    # Curtains are drawn on their own layer and blurred, so they glow instead of looking cut out.
    glow = Image.new("RGB", (W, H))
    light = ImageDraw.Draw(glow)
    for colour, base, amp, phase in (
        ((60, 240, 140), 0.32, 0.1, 0.0),
        ((150, 90, 230), 0.2, 0.07, 1.7),
        ((40, 200, 170), 0.42, 0.06, 3.1),
    ):
        for i in range(0, W, 6):
            x = i / W
            y = (base + amp * math.sin(x * 2.4 * math.pi + phase)) * H
            light.line([(i, y), (i, y + H * 0.22)], fill=colour, width=6)
    glow = glow.filter(ImageFilter.GaussianBlur(28))
    # "Screen" lightens like light does: the stars stay visible through the curtains.
    image = ImageChops.screen(image, glow)
    draw = ImageDraw.Draw(image)
    peaks = [
        (0.0, 0.6),
        (0.14, 0.42),
        (0.3, 0.58),
        (0.47, 0.34),
        (0.63, 0.55),
        (0.8, 0.4),
        (1.0, 0.6),
    ]
    outline = [(x * W, y * H) for x, y in peaks]
    draw.polygon([*outline, (W, lake), (0, lake)], fill=(40, 48, 70))
    for before, (x, y), after in zip(outline, outline[1:], outline[2:], strict=False):
        if y < before[1] and y < after[1]:  # a summit: give it a snow cap
            draw.polygon([(x, y), (x - 60, y + 70), (x + 60, y + 70)], fill=(214, 226, 240))
    reflection = image.crop((0, 2 * lake - H, W, lake)).transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    image.paste(
        Image.blend(reflection, Image.new("RGB", reflection.size, (6, 14, 30)), 0.45), (0, lake)
    )
    return _finish(image)


SCENES: Final[dict[str, Callable[[], Any]]] = {
    "sunrise": sunrise,
    "harbour": harbour,
    "forest": forest,
    "city": city,
    "desert": desert,
    "aurora": aurora,
}


def main(folder: Path = DEFAULT_DIR) -> list[Path]:
    """Write every scene to ``folder`` as ``<name>.jpg`` and return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in SCENES.items():
        path = folder / f"{name}.jpg"
        draw().save(path, "JPEG", quality=QUALITY, optimize=True, progressive=True)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
