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

from shortwan.testing import FakeProcess, Fault, fake_process
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

    def test_a_second_run_on_the_same_folder_is_refused(
        self, tmp_path: Path, fake: FakeProcess
    ) -> None:
        """Two runs at once on one --out would both pay: whichever comes second stops with exit 2
        before touching the folder, and every prompt is paid once."""
        source = write_jsonl(tmp_path / "in.jsonl", requests(6, "twice"))
        out = tmp_path / "out"
        args = ["batch", str(source), "--out", str(out), "-c", "1"]
        runs = [_start(args, fake), _start(args, fake)]
        errors = [run.communicate(timeout=60)[1] for run in runs]
        codes = [run.returncode for run in runs]
        assert sorted(codes) == [0, 2], errors
        assert "in use by another run" in errors[codes.index(2)]
        rows = results(out)
        assert len(rows) == 6
        paid = fake.stats()["jobs_by_prompt"]
        assert [paid[f"twice {i}"] for i in range(6)] == [1] * 6

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


def big_png(path: Path, side: int = 7000) -> Path:
    """An opaque PNG that takes a good part of a second to check (every pixel is decoded)."""
    from PIL import Image

    Image.new("RGBA", (side, side), (9, 9, 9, 255)).save(path, "PNG", compress_level=1)
    return path


def damaged_png(path: Path) -> Path:
    """An opaque RGBA PNG whose IDAT length is off: Pillow raises SyntaxError reading it."""
    from PIL import Image

    Image.new("RGBA", (320, 240), (10, 20, 30, 255)).save(path, "PNG")
    data = bytearray(path.read_bytes())
    at = data.find(b"IDAT") - 4
    data[at : at + 4] = (int.from_bytes(data[at : at + 4], "big") - 9).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


class TestBadInput:
    @pytest.mark.parametrize(
        "args",
        [
            ("batch", "IN", "-o", "OUT", "--timeout", "nan"),
            ("batch", "IN", "-o", "OUT", "--timeout", "0"),
            ("batch", "IN", "-o", "OUT", "--timeout", "-5"),
            ("batch", "IN", "-o", "OUT", "--timeout", "-inf"),
            ("wait", "ffffffffffffffffffffffff", "--timeout", "nan"),
            ("download", "ffffffffffffffffffffffff", "--timeout", "0"),
            ("generate", "https://example.com/a.png", "--timeout", "-1"),
        ],
    )
    def test_bad_timeouts_are_usage_errors(
        self, tmp_path: Path, fake: FakeProcess, args: tuple[str, ...]
    ) -> None:
        """nan, 0 and negative timeouts exit 2 before any file is opened or request sent."""
        source = write_jsonl(tmp_path / "in.jsonl", requests(2, "timeout"))
        out = tmp_path / "out"
        before = fake.stats()["creates_received"]
        argv = [str(source) if a == "IN" else str(out) if a == "OUT" else a for a in args]
        done = shortwan(*argv, fake=fake)
        assert done.returncode == 2, done.stderr
        assert "--timeout" in done.stderr
        assert "Traceback" not in done.stderr
        assert not out.exists()
        assert fake.stats()["creates_received"] == before

    def test_inf_timeout_means_no_limit(self, fake: FakeProcess) -> None:
        """--timeout inf waits without a limit (here: until the job succeeds)."""
        (job_id,) = fake.add_jobs(1, prefix="inf")
        done = shortwan("wait", job_id, "--timeout", "inf", fake=fake)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().startswith("http://127.0.0.1")

    def test_generate_bad_input_is_a_usage_error(self, tmp_path: Path, fake: FakeProcess) -> None:
        """A missing image and a too-long prompt: both named, exit 2, no traceback, none sent."""
        before = fake.stats()["creates_received"]
        missing = str(tmp_path / "missing.png")
        done = shortwan("generate", missing, "-p", "x" * 6000, fake=fake)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert "missing.png" in done.stderr
        assert "prompt is 6000 characters" in done.stderr
        assert fake.stats()["creates_received"] == before

    def test_non_regular_input_file_refused(self, tmp_path: Path, fake: FakeProcess) -> None:
        """A FIFO as FILE (like <(cat x.jsonl), empty when read again) exits 2, unread."""
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        fifo = tmp_path / "in.jsonl"
        os.mkfifo(fifo)
        out = tmp_path / "out"
        for extra in ((), ("--dry-run",)):
            done = shortwan("batch", str(fifo), "-o", str(out), *extra, fake=fake, timeout=20)
            assert done.returncode == 2, done.stderr
            assert "not a regular file" in done.stderr
        assert not out.exists()

    def test_odd_lines_are_problems_of_their_own_line(self, tmp_path: Path) -> None:
        """Each odd line (bytes, nesting, digits, paths, image) is its own numbered problem."""
        good = json.dumps(requests(1)[0]).encode()
        image_line = '{{"prompt": "x", "first_frame_image": "{}"}}'.format
        broken = damaged_png(tmp_path / "broken.png")
        source = tmp_path / "in.jsonl"
        source.write_bytes(
            b"\n".join(
                [
                    b"\xef\xbb\xbf" + good,  # 1: BOM, fine
                    b'{"prompt": "bad \xff byte"}',  # 2: not UTF-8
                    b'{"duration": ' + b"9" * 5000 + b"}",  # 3: too many digits
                    b"[" * 100_000,  # 4: nested too deeply
                    image_line("img\\u0000.png").encode(),  # 5: NUL in the path
                    image_line("img\\ud800.png").encode(),  # 6: lone surrogate in the path
                    image_line("/dev/null").encode(),  # 7: a device
                    image_line(broken.name).encode(),  # 8: Pillow raises SyntaxError
                    good,  # 9: fine
                ]
            )
            + b"\n"
        )
        done = shortwan("batch", str(source), "-o", str(tmp_path / "o"), "--dry-run")
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert "2 valid requests, 7 invalid" in done.stdout
        for number in range(2, 9):
            assert f"line {number}:" in done.stderr
        assert "line 1:" not in done.stderr
        assert "line 9:" not in done.stderr
        assert "not UTF-8" in done.stderr
        assert "nested too deeply" in done.stderr
        assert "not a regular file" in done.stderr
        assert "not a readable image" in done.stderr


def name_clashes(n: int = 0) -> list[dict[str, object]]:
    """Lines 1 and 6 are fine; 2 reuses a key, 3 an output, 4 and 5 take the batch's own files."""
    base = requests(6, f"clash{n}")
    extra: list[dict[str, object]] = [
        {"key": "a", "output": "a.mp4"},
        {"key": "a", "output": "b.mp4"},
        {"key": "c", "output": "./a.mp4"},
        {"key": "d", "output": "results.jsonl"},
        {"key": "e", "output": "journal.sqlite-wal"},
        {"key": "f", "output": "f.mp4"},
    ]
    return [{**line, **more} for line, more in zip(base, extra, strict=True)]


class TestNames:
    def test_dry_run_reports_clashing_keys_and_outputs(self, tmp_path: Path) -> None:
        """--dry-run names lines reusing a key or an output, or taking the batch's own files."""
        source = write_jsonl(tmp_path / "in.jsonl", name_clashes())
        done = shortwan("batch", str(source), "-o", str(tmp_path / "o"), "--dry-run")
        assert done.returncode == 1
        assert "2 valid requests, 4 invalid" in done.stdout
        assert "line 2: key 'a' is also the key of line 1" in done.stderr
        assert "line 3: output './a.mp4' is also the output of line 1" in done.stderr
        assert "line 4: output 'results.jsonl' would overwrite" in done.stderr
        assert "line 5: output 'journal.sqlite-wal' would overwrite" in done.stderr

    def test_batch_refuses_them_before_sending_and_keeps_keys(
        self, tmp_path: Path, fake: FakeProcess
    ) -> None:
        """The real run sends only the good lines; every refused row carries its line's key."""
        before = fake.stats()["creates_received"]
        source = write_jsonl(tmp_path / "in.jsonl", name_clashes(1))
        out = tmp_path / "o"
        done = shortwan("batch", str(source), "-o", str(out), fake=fake)
        assert done.returncode == 1, done.stderr
        assert fake.stats()["creates_received"] == before + 2
        rows = {row["line"]: row for row in results(out)}
        assert {n: rows[n]["key"] for n in rows} == dict(enumerate("aacdef", start=1))
        assert [n for n in rows if rows[n]["status"] == "invalid"] == [2, 3, 4, 5]
        assert rows[1]["status"] == rows[6]["status"] == "succeeded"
        assert (out / "results.jsonl").read_text().count("\n") == 6


class TestMarkup:
    def test_service_text_is_printed_as_it_is(self) -> None:
        """A failure reason with [/], [bold] and :emoji: codes is shown verbatim by status."""
        reason = "upstream said [/] oops, [bold]x[/bold] :smile:"
        with fake_process(run_time=0, failure_rate=1.0, failure_reason=reason) as server:
            (job_id,) = server.add_jobs(1, prefix="markup")
            done = shortwan("status", job_id, fake=server)
        assert done.returncode == 0, done.stderr
        assert reason in done.stdout


class TestStopping:
    def test_first_ctrl_c_sends_no_line_read_meanwhile(
        self, tmp_path: Path, fake: FakeProcess
    ) -> None:
        """A line whose image was being checked when Ctrl-C came is not sent afterwards."""
        big_png(tmp_path / "big.png")
        lines = [
            requests(1, "race")[0],
            {"prompt": "race big", "first_frame_image": "big.png", "duration": 2},
        ]
        source = write_jsonl(tmp_path / "in.jsonl", lines)
        before = fake.stats()["creates_received"]
        process = _start(["batch", str(source), "--out", str(tmp_path / "out"), "-c", "4"], fake)
        deadline = time.monotonic() + 30
        while fake.stats()["creates_received"] == before and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)  # while line 2's image is being read for sending
        _stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == 130, stderr
        assert fake.stats()["creates_received"] == before + 1

    def test_second_ctrl_c_counts_creates_landing_while_closing(self, tmp_path: Path) -> None:
        """Creates under way at a second Ctrl-C show in the spend and the jobs left running."""
        slow = {"create": {Fault.SLOW_AFTER: 1.0}}
        with fake_process(queue_time=0.5, run_time=30, slow_delay=1.0, fault_rates=slow) as server:
            source = write_jsonl(tmp_path / "in.jsonl", requests(3, "landing"))
            process = _start(["batch", str(source), "--out", str(tmp_path / "out")], server)
            deadline = time.monotonic() + 30
            while server.stats()["creates_received"] < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            process.send_signal(signal.SIGINT)
            time.sleep(0.05)
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=30)
            job_ids = list(server.jobs())
        assert process.returncode == 130, stderr
        assert len(job_ids) == 3
        assert "$0.510" in stdout  # spent this run: 3 × 2 s at $0.085
        for job_id in job_ids:
            assert job_id in stderr


class TestDemoFolder:
    def test_demo_refuses_a_batch_folder(self, tmp_path: Path) -> None:
        """demo -o a folder holding another batch's journal leaves it alone and exits 2."""
        out = tmp_path / "batch"
        out.mkdir()
        journal, results_file = out / "journal.sqlite", out / "results.jsonl"
        journal.write_bytes(b"paid jobs")
        results_file.write_text("{}\n")
        done = shortwan("demo", "-o", str(out))
        assert done.returncode == 2
        assert "journal.sqlite" in done.stderr
        assert journal.read_bytes() == b"paid jobs"
        assert results_file.read_text() == "{}\n"
        assert sorted(p.name for p in out.iterdir()) == ["journal.sqlite", "results.jsonl"]

    def test_demo_run_again_in_its_folder_makes_its_videos_again(self, tmp_path: Path) -> None:
        """A second demo in the folder the first one made starts over, its videos included
        (a download never replaces a file it did not write), and leaves other files alone."""
        out = tmp_path / "demo"
        assert shortwan("demo", "-o", str(out), timeout=90).returncode == 0
        mine = out / "notes.txt"
        mine.write_text("mine")
        done = shortwan("demo", "-o", str(out), timeout=90)
        assert done.returncode == 0, done.stdout + done.stderr
        rows = results(out)
        assert sorted(str(row["status"]) for row in rows) == ["succeeded"] * 6
        assert len(list(out.glob("*.mp4"))) == 6
        assert mine.read_text() == "mine"


class TestWiring:
    def test_the_command_line_does_not_load_the_fake(self) -> None:
        """Importing the command line (every command but fake-server and demo) loads no fake."""
        code = "import sys, shortwan.cli; print('shortwan.testing' in sys.modules)"
        done = subprocess.run(  # noqa: S603 - our own interpreter
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == "False"

    def test_fast_polling_is_the_fakes_time_scale(self) -> None:
        """--poll fast is the policy shortwan.testing.fast_poll() gives tests and demos."""
        from shortwan._config import FAST_POLL
        from shortwan.testing import fast_poll

        assert fast_poll() == FAST_POLL

    def test_retry_uncertain_still_names_resubmit_uncertain(self, tmp_path: Path) -> None:
        """The former flag --retry-uncertain is accepted as --resubmit-uncertain."""
        source = write_jsonl(tmp_path / "in.jsonl", requests(1))
        for flag in ("--resubmit-uncertain", "--retry-uncertain"):
            args = ("batch", str(source), "-o", str(tmp_path / "o"), flag, "--dry-run")
            done = shortwan(*args)
            assert done.returncode == 0, done.stderr
            assert "1 valid requests, 0 invalid" in done.stdout
