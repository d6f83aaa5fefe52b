"""The README's first command: the quickstart makes a real, playable video offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_quickstart_makes_a_playable_mp4(tmp_path: Path) -> None:
    """examples/quickstart.py runs without a key or network and leaves a decodable MP4."""
    done = subprocess.run(  # noqa: S603 - our own example, run with this interpreter
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "charged $0.425" in done.stdout
    video = tmp_path / "shortwan-demo" / "fox.mp4"
    with av.open(str(video)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames > 0
