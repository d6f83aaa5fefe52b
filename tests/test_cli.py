"""The ``shortwan`` console script, run in subprocesses against a fake in its own process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from PIL import ImageChops, ImageStat

from shortwan.testing import FakeProcess, fake_process
from shortwan.testing._render import sample_images

SCRIPT = shutil.which("shortwan") or ""
IMAGE = sample_images()[0]


def command(*args: str) -> list[str]:
    # The installed console script when there is one, else the module: both are the same entry.
    if SCRIPT:
        return [SCRIPT, *args]
    return [sys.executable, "-m", "shortwan", *args]


def env_for(fake: FakeProcess | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SHORTAPI_KEY", "SHORTWAN_BASE_URL")}
    env["COLUMNS"] = "200"
    env["SHORTWAN_POLL"] = "fast"
    if fake is not None:
        env["SHORTAPI_KEY"] = fake.api_key
        env["SHORTWAN_BASE_URL"] = fake.url
    return env


def shortwan(
    *args: str, fake: FakeProcess | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own entry point
        command(*args),
        capture_output=True,
        text=True,
        env=env_for(fake),
        timeout=timeout,
        check=False,
    )


def write_jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def requests(n: int, tag: str = "clip") -> list[dict[str, object]]:
    return [
        {"prompt": f"{tag} {i}", "first_frame_image": "https://example.com/a.png", "duration": 2}
        for i in range(n)
    ]


def results(out: Path) -> list[dict[str, object]]:
    text = (out / "results.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def fail_odd(args: dict[str, object]) -> object:
    """Fake plan (imported by name in the fake's process): prompts ending in an odd digit fail."""
    from shortwan.testing import JobPlan

    return JobPlan(outcome="fail") if int(str(args["prompt"])[-1]) % 2 else None


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProcess]:
    with fake_process(queue_time=0.05, run_time=0.2, jitter=0.5) as server:
        yield server


class TestUsage:
    def test_help_lists_every_command(self) -> None:
        """--help names all seven commands; python -m shortwan is the same program."""
        for cmd in (command("--help"), [sys.executable, "-m", "shortwan", "--help"]):
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
            assert done.returncode == 0
            for name in ("generate", "batch", "status", "wait", "download", "fake-server", "demo"):
                assert name in done.stdout

    def test_missing_option_is_a_usage_error(self, tmp_path: Path) -> None:
        """batch without --out exits with 2."""
        source = write_jsonl(tmp_path / "in.jsonl", requests(1))
        assert shortwan("batch", str(source)).returncode == 2

    def test_missing_key_is_a_usage_error(self, tmp_path: Path) -> None:
        """Without SHORTAPI_KEY the command says so and exits with 2, sending nothing."""
        source = write_jsonl(tmp_path / "in.jsonl", requests(1))
        done = shortwan("batch", str(source), "--out", str(tmp_path / "out"))
        assert done.returncode == 2
        assert "SHORTAPI_KEY" in done.stderr


class TestDryRun:
    def test_bad_lines_reported_with_numbers_and_nothing_sent(
        self, tmp_path: Path, fake: FakeProcess
    ) -> None:
        """Every invalid line is named with its number and reason; the cost covers valid ones."""
        before = fake.stats()["creates_received"]
        lines = [
            *requests(2),
            {"prompt": "x", "first_frame_image": "https://e.com/a.png", "duration": 99},
            "not an object",
            {"prompt": "x", "first_frame_image": "missing.png"},
            {"prompt": "local", "first_frame_image": str(IMAGE), "duration": 4},
        ]
        source = write_jsonl(tmp_path / "in.jsonl", lines)
        with source.open("a") as handle:
            handle.write("{broken json\n")
        done = shortwan("batch", str(source), "--out", str(tmp_path / "o"), "--dry-run", fake=fake)
        assert done.returncode == 1
        assert "3 valid requests, 4 invalid" in done.stdout
        assert "$0.680" in done.stdout  # 2 + 2 + 4 seconds at $0.085
        assert "line 3:" in done.stderr
        assert "duration" in done.stderr
        assert "line 4:" in done.stderr
        assert "line 5:" in done.stderr
        assert "line 7:" in done.stderr
        assert "line 6:" not in done.stderr
        assert fake.stats()["creates_received"] == before
        assert not (tmp_path / "o").exists()


class TestBatch:
    def test_failures_results_and_exit_code(self, tmp_path: Path) -> None:
        """Failed jobs give exit code 1 and a results row each; the others are downloaded."""
        with fake_process(plan="test_cli.fail_odd", run_time=0.1) as server:
            source = write_jsonl(tmp_path / "in.jsonl", requests(6, "fail"))
            out = tmp_path / "out"
            done = shortwan("batch", str(source), "--out", str(out), fake=server)
        assert done.returncode == 1, done.stderr
        rows = results(out)
        assert sorted(int(str(r["line"])) for r in rows) == [1, 2, 3, 4, 5, 6]
        by_status: dict[object, list[dict[str, object]]] = {}
        for row in rows:
            by_status.setdefault(row["status"], []).append(row)
        assert len(by_status["succeeded"]) == 3
        assert len(by_status["failed"]) == 3
        for row in by_status["succeeded"]:
            assert Path(str(row["file"])).read_bytes()[4:8] == b"ftyp"
        for row in by_status["failed"]:
            assert row["error_type"] == "JobFailedError"
            assert row["job_id"]
        assert "succeeded" in done.stdout

    def test_rerun_resumes_without_sending(self, tmp_path: Path, fake: FakeProcess) -> None:
        """A finished batch run again exits 0 and creates no job."""
        source = write_jsonl(tmp_path / "in.jsonl", requests(5, "again"))
        out = tmp_path / "out"
        assert shortwan("batch", str(source), "--out", str(out), fake=fake).returncode == 0
        created = fake.stats()["jobs_created"]
        done = shortwan("batch", str(source), "--out", str(out), fake=fake)
        assert done.returncode == 0
        assert fake.stats()["jobs_created"] == created
        assert all(row["replayed"] for row in results(out))

    def test_spend_cap_exit_code(self, tmp_path: Path, fake: FakeProcess) -> None:
        """A cap that stops requests gives exit code 3 and 'not sent' rows."""
        source = write_jsonl(tmp_path / "in.jsonl", requests(5, "cap"))
        out = tmp_path / "out"
        args = ("batch", str(source), "--out", str(out), "--max-spend", "0.35", "-c", "1")
        done = shortwan(*args, fake=fake)
        assert done.returncode == 3, done.stderr
        statuses = sorted(str(row["status"]) for row in results(out))
        assert statuses == ["not_sent_spend_cap"] * 3 + ["succeeded"] * 2


def _start(args: list[str], fake: FakeProcess) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 - our own entry point
        command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(fake),
    )


def _wait_for_results(out: Path, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = out / "results.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} results after {timeout} s")


class TestInterrupt:
    @pytest.mark.parametrize("presses", [1, 2])
    def test_ctrl_c_then_resume(self, tmp_path: Path, presses: int) -> None:
        """Ctrl-C once (jobs in flight end) or twice (at once) exits 130; rerun: no double."""
        with fake_process(queue_time=0.05, run_time=0.8, jitter=0.5, seed=presses) as server:
            source = write_jsonl(tmp_path / "in.jsonl", requests(40, f"sig{presses}"))
            out = tmp_path / "out"
            args = ["batch", str(source), "--out", str(out), "-c", "8"]
            process = _start(args, server)
            _wait_for_results(out, 4)
            for _ in range(presses):
                process.send_signal(signal.SIGINT)
                time.sleep(0.05)
            _stdout, stderr = process.communicate(timeout=30)
            assert process.returncode == 130, stderr
            assert "resume" in stderr
            first = results(out)
            assert len(first) < 40
            done = shortwan(*args, fake=server)
            assert done.returncode == 0, done.stderr
            stats = server.stats()
        rows = results(out)
        assert sorted(int(str(r["line"])) for r in rows) == list(range(1, 41))
        assert all(row["status"] == "succeeded" for row in rows)
        assert max(stats["jobs_by_prompt"].values()) == 1
        assert stats["jobs_created"] == 40
        assert len({row["job_id"] for row in rows}) == 40


class TestSingleJob:
    def test_generate_status_wait_download(self, tmp_path: Path, fake: FakeProcess) -> None:
        """generate prints id, cost and path; status, wait and download work from the id alone."""
        out = tmp_path / "one.mp4"
        done = shortwan(
            "generate", str(IMAGE), "-p", "a slow pan", "-d", "3", "-o", str(out), fake=fake
        )
        assert done.returncode == 0, done.stderr
        assert "$0.255" in done.stdout
        assert str(out) in done.stdout
        job_id = done.stdout.split("job ", 1)[1].split()[0]
        status = shortwan("status", job_id, fake=fake)
        assert status.returncode == 0
        assert "succeeded" in status.stdout
        raw = shortwan("status", job_id, "--json", fake=fake)
        assert json.loads(raw.stdout)["id"] == job_id
        waited = shortwan("wait", job_id, fake=fake)
        assert waited.returncode == 0
        assert waited.stdout.strip().startswith("http://127.0.0.1")
        again = tmp_path / "again.mp4"
        fetched = shortwan("download", job_id, "-o", str(again), fake=fake)
        assert fetched.returncode == 0, fetched.stderr
        assert again.read_bytes() == out.read_bytes()

    def test_unknown_job_fails_cleanly(self, fake: FakeProcess) -> None:
        """A job id the service does not know is an error message and exit 1, no traceback."""
        done = shortwan("status", "ffffffffffffffffffffffff", fake=fake)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        assert "error" in done.stderr


class TestDemo:
    def test_demo_makes_playable_videos_from_its_images(self, tmp_path: Path) -> None:
        """The demo needs no key and leaves six decodable MP4s, each moving and each different."""
        out = tmp_path / "demo"
        done = shortwan("demo", "-o", str(out), timeout=90)
        assert done.returncode == 0, done.stderr
        videos = sorted(out.glob("*.mp4"))
        assert len(videos) == 6
        firsts = set()
        for path in videos:
            with av.open(str(path)) as container:
                frames = [f.to_image().convert("L") for f in container.decode(video=0)]
            assert len(frames) >= 12
            moved = ImageStat.Stat(ImageChops.difference(frames[0], frames[-1])).mean[0]
            assert moved > 1.0  # the camera moves over the image
            firsts.add(frames[0].tobytes())
        assert len(firsts) == 6
        assert len(results(out)) == 6
