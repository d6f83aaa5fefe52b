"""Where a batch's videos go: the file of each item, its download, and files found already there.

A batch that downloads names each video after its item's ``output`` (else its job id), inside one
folder. Names are checked before anything is paid for. With a journal, a file already at an item's
path may be the one a crashed run downloaded without noting it: it is claimed only if it is that
very video, byte for byte.
"""

from __future__ import annotations

import filecmp
import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeAlias

import anyio
import attrs

from ._errors import DownloadError, InvalidRequestError, ShortWanError, as_shortwan
from ._files import output_target, safe_name
from ._ledger import Page
from ._models import Outcome, Video

__all__ = ["Fetch", "Outputs"]

logger = logging.getLogger("shortwan")

Fetch: TypeAlias = "Callable[[Video, Path], Awaitable[Path]]"


class Outputs:
    """The download folder of one batch, or none.

    Args:
        folder: the resolved folder to download into; ``None``: the batch does not download.
        fetch: downloads a video to a path.
        claim_existing: a file already at an item's path may be that item's video (the batch
            has a journal, so an earlier run may have written it).
    """

    def __init__(self, folder: Path | None, fetch: Fetch, *, claim_existing: bool) -> None:
        self.folder = folder
        self._fetch = fetch
        self._claim_existing = claim_existing
        self._taken: set[Path] = set()

    @property
    def downloads(self) -> bool:
        """Whether the batch downloads its videos."""
        return self.folder is not None

    def reserve(self, output: str | None) -> None:
        """Check an item's file name before it is paid for, and keep it from other items.

        Raises:
            InvalidRequestError: a name that leaves the folder, or one taken in this batch.
        """
        if output is None or self.folder is None:
            return
        target = self._path(output)
        if target in self._taken:
            raise InvalidRequestError([f"output {output!r} appears twice in this batch"])
        self._taken.add(target)

    def _path(self, output: str | None, job_id: str | None = None) -> Path:
        assert self.folder is not None  # noqa: S101 - only called when downloading
        name = output if output is not None else safe_name(job_id or "video")
        target, problem = output_target(self.folder, name)
        if problem is not None:
            raise InvalidRequestError([problem])
        return target

    async def save(self, outcome: Outcome, output: str | None, page: Page) -> Outcome:
        """Download the outcome's video, when the batch downloads; note its path on ``page``.

        A replayed outcome whose file is still where an earlier run put it is left as it is.
        """
        if outcome.video is None or self.folder is None:
            return outcome
        if (
            outcome.replayed
            and outcome.path is not None
            and await anyio.Path(outcome.path).exists()
        ):
            return outcome
        try:
            dest = self._path(output, outcome.job_id)
            if self._claim_existing and await anyio.Path(dest).exists():
                path = await self._claim(outcome.video, dest)
            else:
                path = await self._fetch(outcome.video, dest)
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, ShortWanError)
                else DownloadError(f"download failed: {exc!r}", job_id=outcome.job_id)
            )
            if error is not exc:
                error.__cause__ = exc
            if error.job_id is None:
                error.job_id = outcome.job_id
            return attrs.evolve(outcome, error=error)
        try:
            await page.downloaded(path)
        except Exception as exc:
            # The file is whole at its path; only the note of it is missing (a rerun compares
            # the file with the video before claiming it).
            logger.exception("the download of job %s could not be journaled", outcome.job_id)
            error = as_shortwan(exc, "the download could not be journaled")
            error.job_id = error.job_id or outcome.job_id
            return attrs.evolve(outcome, path=path, error=error)
        return attrs.evolve(outcome, path=path)

    async def _claim(self, video: Video, dest: Path) -> Path:
        """Return ``dest`` if it already holds ``video``, else raise :class:`DownloadError`.

        A rerun finds the file of a crash that struck between its rename and the journal's
        note of it; but a file of the same name may be anything else too. The video is fetched
        beside it and compared, so the file is claimed only if it is this very video.
        """
        check = dest.with_name(f".{dest.name}.check")
        forget_check = functools.partial(check.unlink, missing_ok=True)
        try:
            await anyio.to_thread.run_sync(forget_check)  # left by an earlier crash
            fetched = await self._fetch(video, check)
            same = await anyio.to_thread.run_sync(
                functools.partial(filecmp.cmp, dest, fetched, shallow=False)
            )
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(forget_check)
        if not same:
            raise DownloadError(
                f"{str(dest)!r} exists and holds something else; move it away to download "
                "this video",
                url=video.url,
            )
        return dest
