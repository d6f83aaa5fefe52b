"""The options of a hand-run fake: one table behind ``python -m shortwan.testing`` and the CLI."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import aiohttp
import anyio
import pytest
from helpers import callback_sink

from shortwan.testing import DEFAULT_API_KEY, FakeShortAPI, Fault
from shortwan.testing._serve import OPTIONS, add_arguments, fake_arguments

SCRIPT = shutil.which("shortwan")
CLI = [SCRIPT] if SCRIPT else [sys.executable, "-m", "shortwan"]
MODULE = [sys.executable, "-m", "shortwan.testing"]
MODEL = "alibaba/wan-2.7/image-to-video"
ARGS = {"first_frame_image": "https://example.com/a.png", "duration": 2}


def parse(*argv: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return vars(parser.parse_args(argv))


def help_of(command: list[str]) -> str:
    done = subprocess.run(  # noqa: S603 - our own entry points
        [*command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@asynccontextmanager
async def hand_run(command: list[str]) -> AsyncIterator[str]:
    """Start a hand-run fake on a free port and yield its URL; stop it with Ctrl-C after."""
    process = await anyio.open_process([*command, "--port", "0"], stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        with anyio.fail_after(30):
            first = b""
            while b"\n" not in first:
                first += await process.stdout.receive()
        url = first.decode().split()[2]
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            await process.wait()
        await process.aclose()


class TestTable:
    def test_both_commands_offer_every_option(self) -> None:
        """Each option of the table is a flag of shortwan fake-server and of the module."""
        for text in (help_of([*CLI, "fake-server"]), help_of(MODULE)):
            missing = [option.flag for option in OPTIONS if option.flag not in text]
            assert not missing, missing

    def test_issue_knobs_are_in_the_table(self) -> None:
        """Failure rate, faults, rate limit, callbacks, timing, seed and transport are there."""
        names = {option.name for option in OPTIONS}
        wanted = {
            "failure_rate",
            "faults",
            "query_rate_limit",
            "rate_limit_retry_after",
            "callback_drop",
            "callback_duplicate",
            "callback_delay",
            "callback_shape",
            "queue_time",
            "run_time",
            "jitter",
            "speed",
            "seed",
            "error_transport",
        }
        assert wanted <= names

    def test_defaults_follow_the_request_at_a_human_pace(self) -> None:
        """With no flags: request timing at speed 0.1, no faults, render on, no failures."""
        arguments = fake_arguments(parse())
        assert "queue_time" not in arguments
        assert "run_time" not in arguments
        assert arguments["speed"] == 0.1
        assert (arguments["fault_rates"], arguments["failure_rate"]) == ({}, 0.0)
        assert arguments["render"] is True
        assert arguments["error_transport"] == "envelope"

    def test_chaos_brings_failures_unless_told_otherwise(self) -> None:
        """--faults chaos fails a tenth of the jobs by default; --failure-rate overrides it."""
        chaos = fake_arguments(parse("--faults", "chaos"))
        assert chaos["failure_rate"] == 0.1
        assert Fault.RESET_AFTER in chaos["fault_rates"]["create"]
        assert (
            fake_arguments(parse("--faults", "chaos", "--failure-rate", "0"))["failure_rate"] == 0
        )

    def test_values_become_fake_arguments(self) -> None:
        """Parsed flags turn into arguments FakeShortAPI takes, with their types."""
        arguments = fake_arguments(
            parse(
                "--run-time",
                "0.5",
                "--query-rate-limit",
                "5",
                "--callback-drop",
                "1",
                "--balance",
                "2.5",
                "--error-transport",
                "http",
                "--no-render",
                "--seed",
                "3",
            )
        )
        assert arguments["run_time"] == 0.5
        assert arguments["query_rate_limit"] == 5.0
        assert arguments["callback_drop"] == 1.0
        assert arguments["balance"] == Decimal("2.5")
        assert (arguments["error_transport"], arguments["render"], arguments["seed"]) == (
            "http",
            False,
            3,
        )
        FakeShortAPI(**arguments)  # every argument is one the fake takes

    @pytest.mark.parametrize(
        "argv",
        [
            ("--callback-drop", "2"),
            ("--speed", "0"),
            ("--port", "70000"),
            ("--balance", "lots"),
            ("--error-transport", "smtp"),
            ("--queue-time", "-1"),
        ],
    )
    def test_bad_values_are_usage_errors(
        self, argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A value out of range stops argument parsing with a message, before any fake runs."""
        with pytest.raises(SystemExit) as info:
            parse(*argv)
        assert info.value.code == 2
        assert argv[0] in capsys.readouterr().err

    def test_unknown_names_are_refused(self) -> None:
        """fake_arguments refuses a name that is not in the table."""
        with pytest.raises(TypeError, match="colour"):
            fake_arguments({"colour": "red"})


class TestHandRuns:
    @pytest.mark.anyio
    async def test_cli_options_reach_the_fake(self) -> None:
        """shortwan fake-server with transport, rate-limit and callback flags serves them."""
        flags = [
            "--error-transport=http",
            "--query-rate-limit=1",
            "--query-burst=1",
            "--rate-limit-retry-after=seconds",
            "--callback-duplicate=1",
            "--callback-shape=bare",
            "--run-time=0",
            "--no-render",
        ]
        async with (
            callback_sink() as (hook_url, received),
            hand_run([*CLI, "fake-server", *flags]) as url,
            aiohttp.ClientSession() as http,
        ):
            wrong = {"Authorization": "Bearer ak-wrong"}
            async with http.post(f"{url}/api/v1/job/create", json={}, headers=wrong) as r:
                refused = r.status
            key = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
            body = {"model": MODEL, "args": ARGS, "callback_url": hook_url}
            async with http.post(f"{url}/api/v1/job/create", json=body, headers=key) as r:
                job_id = (await r.json())["data"]["job_id"]
            statuses = []
            for _ in range(2):
                params = {"id": job_id}
                async with http.get(f"{url}/api/v1/job/query", params=params, headers=key) as r:
                    statuses.append((r.status, r.headers.get("Retry-After")))
            with anyio.fail_after(10):
                while len(received) < 2:
                    await anyio.sleep(0.05)
        assert refused == 401
        assert statuses == [(200, None), (429, "1")]
        assert [payload["id"] for payload in received] == [job_id, job_id]  # bare and twice

    @pytest.mark.anyio
    async def test_module_options_reach_the_fake(self) -> None:
        """python -m shortwan.testing --error-transport http answers a wrong key with 401."""
        async with (
            hand_run([*MODULE, "--error-transport", "http"]) as url,
            aiohttp.ClientSession() as http,
        ):
            headers = {"Authorization": "Bearer ak-wrong"}
            async with http.post(f"{url}/api/v1/job/create", json={}, headers=headers) as r:
                answer = (r.status, (await r.json())["code"])
        assert answer == (401, 401)
