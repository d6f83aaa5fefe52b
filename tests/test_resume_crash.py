"""A batch killed with SIGKILL and rerun with its journal: one outcome each, none paid twice."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shortwan.testing import Fault, fake_process

CHILD = Path(__file__).with_name("resume_child.py")


def child(url: str, key: str, db: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 - our own script and arguments
        [sys.executable, str(CHILD), url, key, str(db), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def journal_states(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT key, state FROM requests").fetchall())
    finally:
        conn.close()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.timeout(120)
def test_sigkill_mid_batch_then_resume(tmp_path: Path) -> None:
    """Kill a 200-job run mid-way; the rerun gives each request one outcome, none paid twice."""
    db = tmp_path / "batch.db"
    options = {
        "queue_time": 0.05,
        "run_time": 0.5,
        "jitter": 0.8,
        "seed": 7,
        "failure_rate": 0.05,
        # A few creates lose their answer after the job was made: those are the uncertain ones.
        "fault_rates": {"create": {Fault.RESET_AFTER: 0.03}},
    }
    with fake_process(**options) as fake:
        first = child(fake.url, fake.api_key, db)
        assert first.stdout is not None
        seen = 0
        deadline = time.monotonic() + 60
        while seen < 60 and time.monotonic() < deadline:
            line = first.stdout.readline()
            if not line:
                break
            seen += 1
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        assert first.returncode == -signal.SIGKILL
        assert seen == 60, "the first run ended before it could be killed"

        states = journal_states(db)
        in_flight = [k for k, s in states.items() if s == "submitted"]
        maybe_sent = {k for k, s in states.items() if s in ("intent", "uncertain")}
        assert in_flight, "the kill should catch jobs in flight"
        created_before = fake.stats()["jobs_created"]

        second = child(fake.url, fake.api_key, db, "--resubmit")
        out, err = second.communicate(timeout=90)
        assert second.returncode == 0, err
        stats = fake.stats()

    outcomes = [json.loads(line) for line in out.splitlines()]
    assert sorted(o["index"] for o in outcomes) == list(range(200))
    assert len({o["key"] for o in outcomes}) == 200
    replayed = sum(o["replayed"] for o in outcomes)
    assert replayed >= 60 - len(maybe_sent)
    # Jobs created in the first run were collected, not created again.
    by_key = {o["key"]: o for o in outcomes}
    for key in in_flight:
        assert by_key[key]["job_id"] is not None
    # No prompt was paid twice, except those the journal flagged and the rerun opted to resend.
    doubled = {f"job-{p.split()[1]}" for p, n in stats["jobs_by_prompt"].items() if n > 1}
    assert doubled <= maybe_sent, doubled - maybe_sent
    assert max(stats["jobs_by_prompt"].values()) <= 2
    assert stats["jobs_created"] - created_before <= 200 - (len(states) - len(maybe_sent))
    assert all(o["ok"] or o["error"] for o in outcomes)
    # What happened, for the record (shown with -s, or when an assertion below fails).
    print(
        f"killed after {seen} outcomes: {len(in_flight)} jobs in flight, {len(maybe_sent)} "
        f"maybe sent; rerun: {replayed} replayed, {len(doubled)} resent, "
        f"{stats['jobs_created']} jobs created in all for 200 requests"
    )
    for outcome in outcomes:
        if outcome["job_id"] is None:
            assert outcome["error"] == "SubmissionUncertainError"
