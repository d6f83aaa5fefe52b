"""``python -m shortwan`` and the ``shortwan`` console script."""

from __future__ import annotations

import sys


def run() -> None:
    """Start the command line, or say how to install it."""
    try:
        from .cli import main  # noqa: PLC0415 - the extra may be missing
    except ModuleNotFoundError as exc:
        if exc.name not in ("click", "rich") and not (exc.name or "").startswith("rich."):
            raise
        sys.stderr.write(
            f"the shortwan command needs the 'cli' extra ({exc.name} is missing):\n"
            "    python -m pip install 'shortwan[cli]'\n"
        )
        sys.exit(2)
    main()


if __name__ == "__main__":
    run()
