"""The exit codes of the command and the files a batch keeps in its folder."""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEMO_MARKER",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SPEND_CAP",
    "EXIT_USAGE",
    "JOURNAL_NAME",
    "RESERVED_NAMES",
    "RESULTS_NAME",
]

EXIT_OK: Final = 0
"""Every request produced its video (and file)."""
EXIT_FAILED: Final = 1
"""At least one request failed, timed out, was invalid or is uncertain."""
EXIT_USAGE: Final = 2
"""The command line, the input file or the settings are wrong; nothing was sent."""
EXIT_SPEND_CAP: Final = 3
"""The spend cap stopped requests from being sent."""
EXIT_INTERRUPTED: Final = 130
"""Stopped by Ctrl-C; rerun the same command to resume."""

JOURNAL_NAME: Final = "journal.sqlite"
RESULTS_NAME: Final = "results.jsonl"
DEMO_MARKER: Final = ".shortwan-demo"
"""Marks a folder the demo made, so a later demo may start it over (and nothing else may be)."""
RESERVED_NAMES: Final = (
    RESULTS_NAME,
    JOURNAL_NAME,
    *(JOURNAL_NAME + suffix for suffix in ("-wal", "-shm", "-journal", ".lock")),
    DEMO_MARKER,
)
"""Files the batch itself keeps in its folder: no line's output may take one of these names."""
