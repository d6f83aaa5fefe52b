"""``shortwan batch --redis``: batches in several processes on one cap, and Redis unreachable."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest
from redis_harness import RedisServer, free_port

from shortwan.testing import FakeShortAPI

pytestmark = pytest.mark.anyio


def write_lines(path: Path, tag: str, n: int) -> Path:
    """Write a JSONL file of ``n`` 2 s requests ($0.17 each)."""
    lines = [
        {"prompt": f"{tag} {i}", "first_frame_image": "https://example.com/a.png", "duration": 2}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


async def batch(fake: FakeShortAPI, *args: str) -> tuple[int, str]:
    """Run ``shortwan batch ARGS`` against ``fake``; return its exit code and its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHORTAPI", "SHORTWAN"))}
    env.update(SHORTAPI_KEY=fake.api_key, SHORTWAN_BASE_URL=fake.url, SHORTWAN_POLL="fast")
    env["COLUMNS"] = "200"
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "shortwan", "batch", *args], env=env, check=False
        )
    return done.returncode, done.stderr.decode()


def rows(out: Path) -> list[dict[str, object]]:
    """Return the rows of a batch's results.jsonl."""
    text = (out / "results.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


async def test_two_batches_in_parallel_share_one_cap(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """Two ``shortwan batch --redis`` runs at once, on one $1.02 cap, create 6 jobs in all."""
    async with FakeShortAPI(run_time=0.05) as fake:
        codes: list[int] = []

        async def run(tag: str) -> None:
            source = write_lines(tmp_path / f"{tag}.jsonl", tag, 8)
            code, _ = await batch(
                fake,
                str(source),
                "--out",
                str(tmp_path / tag),
                "--max-spend",
                "1.02",
                "--redis",
                redis_server.url,
                "--redis-namespace",
                namespace,
            )
            codes.append(code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "left")
            tg.start_soon(run, "right")
        assert fake.stats.jobs_created == 6  # 6 × $0.17 = $1.02
    assert sorted(codes) == [3, 3]  # both stopped by the shared cap
    statuses = [row["status"] for tag in ("left", "right") for row in rows(tmp_path / tag)]
    assert sorted(set(statuses)) == ["not_sent_spend_cap", "succeeded"]
    assert statuses.count("succeeded") == 6


async def test_an_unreachable_redis_stops_the_batch_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    """``--redis`` naming a server nobody runs exits 2 with a clear message, sending nothing."""
    async with FakeShortAPI(run_time=0) as fake:
        source = write_lines(tmp_path / "in.jsonl", "nobody", 3)
        url = f"redis://127.0.0.1:{free_port()}/0"
        code, stderr = await batch(
            fake, str(source), "--out", str(tmp_path / "out"), "--redis", url
        )
        assert fake.stats.creates_received == 0
    assert code == 2
    assert "cannot use Redis" in stderr
    assert "Traceback" not in stderr
