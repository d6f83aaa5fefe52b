"""Files on disk: names that cannot leave their folder, part files, and writing them durably.

A download is written to a part file beside its destination, named after what it is a download
of, by a writer that keeps the disk busy while the network flows; the finished file is fsynced
and renamed into place, and the rename itself made durable.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Final
from urllib.parse import urlsplit

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ._errors import DownloadError, quoted

__all__ = [
    "BlockWriter",
    "finish",
    "open_part",
    "output_target",
    "part_path",
    "resolve_dest",
    "safe_name",
    "size_of",
    "sync",
    "truncate",
]

# Start the disk writing as the file grows, so the fsync before the rename has little left.
_WRITEBACK_EVERY: Final = 8 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE: Final = 2
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _writeback_starter() -> Callable[[int], object] | None:
    """Return Linux's sync_file_range(fd, 0, 0, WRITE), which starts writeback without waiting.

    It lets the disk absorb a large download while it arrives, instead of all at once in the
    fsync before the rename. Elsewhere (or without it) that fsync does all the work.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    func.restype = ctypes.c_int
    return lambda fd: func(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


_start_writeback: Final = _writeback_starter()


def safe_name(text: str, suffix: str = ".mp4") -> str:
    """Turn a job id (or any text) into a file name that cannot leave its folder."""
    name = _UNSAFE.sub("_", text).strip("._") or "video"
    return name[:200] + suffix


def resolve_dest(dest: str | os.PathLike[str], name: str, *, job_id: str | None = None) -> Path:
    """Return the file to write: ``dest`` itself, or ``dest/name`` when ``dest`` is a folder.

    Raises:
        DownloadError: the derived name would land outside the folder, or ``dest`` is not a
            usable path (a NUL byte, a symlink loop).
    """
    path = Path(dest)
    if path.is_dir() or str(dest).endswith(("/", os.sep)):
        try:
            folder = path.resolve()
        except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise DownloadError(f"unusable path {str(dest)!r}: {exc}", job_id=job_id) from exc
        target, problem = output_target(folder, name)
        if problem is not None:
            raise DownloadError(problem, job_id=job_id)
        return target
    return path


# Longest file name most systems take (NAME_MAX); checked before paying, not after.
_NAME_MAX = 255


def output_target(folder: Path, name: str) -> tuple[Path, str | None]:
    """Return where ``name`` lands in ``folder`` (an absolute, resolved folder) and what is wrong.

    The problem is ``None`` for a usable name; otherwise it says why the video could not be saved
    there (outside the folder, a NUL byte, a part too long, not text the file system takes), so
    the request can be refused before it is paid for.
    """
    target = folder / name
    shown = quoted(name)
    if name.endswith(("/", os.sep)):
        return target, f"output {shown} names a folder, not a file"
    try:
        os.fsencode(name)
        target = target.resolve()
    except (ValueError, OSError, RuntimeError) as exc:  # NUL, surrogates, symlink loops
        return target, f"output {shown} is not a usable file name: {exc}"
    if not target.is_relative_to(folder) or target == folder:
        return target, f"output {shown} would be written outside {str(folder)!r}"
    longest = max(len(os.fsencode(part)) for part in target.relative_to(folder).parts)
    # Room for the partial file's suffix (".<12 hex>.part") next to the final name.
    if longest + 18 > _NAME_MAX:
        return target, f"output {shown} has a name longer than this system takes"
    return target, None


def part_path(dest: Path, *, job_id: str | None, url: str) -> Path:
    """Return the file that holds the bytes of ``dest`` until they are complete.

    It is named after what it is a download of: the job, else the URL without its query (a
    refreshed signed URL differs only there). A part file left by another video for the same
    ``dest`` is thus never resumed.
    """
    if job_id is not None:
        key = f"job:{job_id}"
    else:
        parts = urlsplit(url)
        key = f"url:{parts.scheme}://{parts.netloc.lower()}{parts.path}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return dest.with_name(f"{dest.name}.{digest}.part")


class BlockWriter:
    """Writes blocks in a worker thread, in order, starting writeback as the file grows."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.written = 0
        self.error: OSError | None = None
        self._pending = 0

    def _write(self, block: bytearray) -> None:
        self.handle.write(block)
        self._pending += len(block)
        if self._pending >= _WRITEBACK_EVERY and _start_writeback is not None:
            self.handle.flush()
            _start_writeback(self.handle.fileno())
            self._pending = 0

    async def drain(
        self, blocks: MemoryObjectReceiveStream[bytearray], scope: anyio.CancelScope
    ) -> None:
        """Write every block; on a disk error keep it in ``error`` and stop the download."""
        async with blocks:
            async for block in blocks:
                try:
                    await anyio.to_thread.run_sync(self._write, block)
                except OSError as exc:
                    self.error = exc
                    scope.cancel()
                    return
                self.written += len(block)


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def truncate(path: Path) -> None:
    path.unlink(missing_ok=True)


def open_part(part: Path, append: bool) -> BinaryIO:
    return part.open("ab" if append else "wb")


def sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def finish(part: Path, dest: Path) -> None:
    os.replace(part, dest)
    # Make the rename itself durable.
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
