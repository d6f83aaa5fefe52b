"""Streaming, resumable, atomic downloads of result videos.

A video is written to ``<dest>.part``, resumed with ``Range`` when a partial file exists (only on a
206 whose ``Content-Range`` starts where the file ends; a 200 restarts it), its length checked,
fsynced and renamed into place, so a failure never leaves a file at the final path. The API key is
never sent: download requests carry no credentials, and redirects are followed by hand, at most
five, never from https to http.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, Final
from urllib.parse import urljoin, urlsplit

import aiohttp
import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ._config import RetryPolicy, Timeouts
from ._errors import DownloadError
from ._retry import RetryEvent, RetryHook, backoff_delay, notify_retry

__all__ = ["Downloader", "safe_name"]

logger = logging.getLogger("shortwan")

_CHUNK: Final = 256 * 1024
_FLUSH: Final = 2 * 1024 * 1024
# Blocks waiting for the writer thread: the network keeps flowing while the disk catches up,
# and memory stays bounded (this many blocks of _FLUSH bytes, plus the one being filled).
_QUEUED_BLOCKS: Final = 3
# Start the disk writing as the file grows, so the fsync before the rename has little left.
_WRITEBACK_EVERY: Final = 8 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE: Final = 2
_MAX_REDIRECTS: Final = 5
_EXPIRED: Final = frozenset({401, 403, 404, 410})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
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

Refresh = Callable[[], Awaitable[str | None]]


def safe_name(text: str, suffix: str = ".mp4") -> str:
    """Turn a job id (or any text) into a file name that cannot leave its folder."""
    name = _UNSAFE.sub("_", text).strip("._") or "video"
    return name[:200] + suffix


def resolve_dest(dest: str | os.PathLike[str], name: str) -> Path:
    """Return the file to write: ``dest`` itself, or ``dest/name`` when ``dest`` is a folder.

    Raises:
        DownloadError: the derived name would land outside the folder.
    """
    path = Path(dest)
    if path.is_dir() or str(dest).endswith(("/", os.sep)):
        folder = path.resolve()
        target = (folder / name).resolve()
        if target.parent != folder:
            raise DownloadError(f"refusing to write {name!r} outside {str(folder)!r}")
        return target
    return path


class _Retry(Exception):  # noqa: N818 - internal signal
    def __init__(self, error: DownloadError) -> None:
        super().__init__(str(error))
        self.error = error


class Downloader:
    """Downloads result files with a session that never carries the API key."""

    def __init__(
        self,
        *,
        session: Callable[[], aiohttp.ClientSession],
        timeouts: Timeouts,
        retry: RetryPolicy,
        max_concurrent: int,
    ) -> None:
        self._session = session
        self._timeouts = timeouts
        self._retry = retry
        self._limit: anyio.Semaphore | None = None
        self._max_concurrent = max_concurrent
        self.on_retry: RetryHook | None = None

    async def fetch(
        self,
        url: str,
        dest: Path,
        *,
        job_id: str | None = None,
        overwrite: bool = False,
        refresh: Refresh | None = None,
    ) -> Path:
        """Download ``url`` to ``dest`` and return ``dest``.

        Args:
            url: the file's URL.
            dest: the final path; ``dest.part`` holds the bytes until they are complete.
            job_id: named in errors and logs.
            overwrite: replace an existing file at ``dest``.
            refresh: called once when the URL has expired (401/403/404/410) to get a fresh one.

        Raises:
            DownloadError: the file could not be fetched; a partial ``.part`` file is kept for a
                later resume, and nothing is left at ``dest``.
        """
        if not overwrite and await anyio.to_thread.run_sync(dest.exists):
            raise DownloadError(
                f"{str(dest)!r} exists; pass overwrite=True to replace it", url=url, job_id=job_id
            )
        if self._limit is None:
            self._limit = anyio.Semaphore(self._max_concurrent)
        async with self._limit:
            return await self._fetch(url, dest, job_id=job_id, refresh=refresh)

    async def _fetch(
        self, url: str, dest: Path, *, job_id: str | None, refresh: Refresh | None
    ) -> Path:
        _check_url(url, job_id)
        await anyio.to_thread.run_sync(lambda: dest.parent.mkdir(parents=True, exist_ok=True))
        part = dest.with_name(dest.name + ".part")
        policy = self._retry
        started = time.monotonic()
        deadline = None if policy.timeout is None else started + 10 * policy.timeout
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            try:
                await self._attempt(url, part, job_id)
            except _Retry as retry:
                error = retry.error
                if error.status in _EXPIRED and refresh is not None and not refreshed:
                    refreshed = True
                    fresh = await refresh()
                    if fresh and fresh != url:
                        logger.info(
                            "download URL expired, got a fresh one", extra={"job_id": job_id}
                        )
                        url = fresh
                        _check_url(url, job_id)
                        continue
                if error.status in _EXPIRED or attempt >= policy.attempts:
                    raise error from retry.__cause__
                delay = backoff_delay(policy, attempt)
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise error from retry.__cause__
                notify_retry(
                    self.on_retry,
                    RetryEvent(
                        operation="download",
                        job_id=job_id,
                        attempt=attempt,
                        delay=delay,
                        error=error,
                    ),
                )
                logger.info(
                    "download failed, resuming in %.2f s: %s",
                    delay,
                    error,
                    extra={"job_id": job_id, "attempt": attempt},
                )
                await anyio.sleep(delay)
                continue
            await anyio.to_thread.run_sync(_finish, part, dest)
            return dest

    async def _attempt(self, url: str, part: Path, job_id: str | None) -> None:
        have = await anyio.to_thread.run_sync(_size, part)
        headers = {"Range": f"bytes={have}-"} if have else {}
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self._timeouts.pool + self._timeouts.connect,
            sock_connect=self._timeouts.connect,
            sock_read=self._timeouts.read,
        )
        session = self._session()
        try:
            response = await self._open(session, url, headers, timeout, job_id)
            async with response:
                status = response.status
                if status == 416 and have:
                    total = _total_of(response.headers.get("Content-Range"))
                    if total == have:
                        return  # the part file already holds every byte
                    await anyio.to_thread.run_sync(_truncate, part)
                    raise _Retry(
                        DownloadError("resume refused; restarting", url=url, job_id=job_id)
                    )
                if status == 206 and have:
                    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
                    if match is None or int(match[1]) != have:
                        await anyio.to_thread.run_sync(_truncate, part)
                        raise _Retry(
                            DownloadError(
                                "the server resumed at the wrong offset; restarting",
                                url=url,
                                job_id=job_id,
                            )
                        )
                    expected: int | None = int(match[2]) + 1 - have
                    append = True
                elif status == 200:
                    expected = response.content_length
                    append = False
                else:
                    raise _Retry(
                        DownloadError(
                            f"download answered HTTP {status}",
                            url=url,
                            status=status,
                            job_id=job_id,
                        )
                    )
                await self._stream(response, part, append=append, expected=expected, job_id=job_id)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Retry(
                DownloadError(
                    f"download interrupted: {str(exc) or type(exc).__name__}",
                    url=url,
                    job_id=job_id,
                )
            ) from exc

    async def _open(
        self,
        session: aiohttp.ClientSession,
        url: str,
        headers: dict[str, str],
        timeout: aiohttp.ClientTimeout,
        job_id: str | None,
    ) -> aiohttp.ClientResponse:
        for _ in range(_MAX_REDIRECTS + 1):
            response = await session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False
            )
            if response.status not in (301, 302, 303, 307, 308):
                return response
            location = response.headers.get("Location")
            response.release()
            if not location:
                raise _Retry(DownloadError("redirect without a Location", url=url, job_id=job_id))
            target = urljoin(url, location)
            if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
                raise DownloadError(
                    "refusing a redirect from https to http", url=target, job_id=job_id
                )
            _check_url(target, job_id)
            url = target
        raise DownloadError(f"more than {_MAX_REDIRECTS} redirects", url=url, job_id=job_id)

    async def _stream(
        self,
        response: aiohttp.ClientResponse,
        part: Path,
        *,
        append: bool,
        expected: int | None,
        job_id: str | None,
    ) -> None:
        handle = await anyio.to_thread.run_sync(_open_part, part, append)
        try:
            start = handle.tell()
            writer = _Writer(handle)
            broken: BaseException | None = None
            send, receive = anyio.create_memory_object_stream[bytearray](_QUEUED_BLOCKS)
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer.drain, receive)
                buffer = bytearray()
                try:
                    async for chunk in response.content.iter_chunked(_CHUNK):
                        buffer += chunk
                        if len(buffer) >= _FLUSH:
                            await send.send(buffer)
                            buffer = bytearray()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    broken = exc
                finally:
                    # Keep what did arrive, even when the body broke off: the next attempt
                    # resumes from there with a Range request.
                    with anyio.CancelScope(shield=True):
                        if buffer:
                            await send.send(buffer)
                        send.close()
            if broken is not None:
                raise broken
            await anyio.to_thread.run_sync(_sync, handle)
        finally:
            await anyio.to_thread.run_sync(handle.close)
        written = writer.written
        if expected is not None and written != expected:
            raise _Retry(
                DownloadError(
                    f"got {written:,} bytes of {expected:,} (resume offset {start:,})",
                    url=str(response.url),
                    job_id=job_id,
                )
            )


class _Writer:
    """Writes blocks in a worker thread, in order, starting writeback as the file grows."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.written = 0
        self._pending = 0

    def _write(self, block: bytearray) -> None:
        self.handle.write(block)
        self._pending += len(block)
        if self._pending >= _WRITEBACK_EVERY and _start_writeback is not None:
            self.handle.flush()
            _start_writeback(self.handle.fileno())
            self._pending = 0

    async def drain(self, blocks: MemoryObjectReceiveStream[bytearray]) -> None:
        async with blocks:
            async for block in blocks:
                await anyio.to_thread.run_sync(self._write, block)
                self.written += len(block)


def _check_url(url: str, job_id: str | None) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"not an http(s) URL: {url[:80]!r}", url=url, job_id=job_id)


def _total_of(content_range: str | None) -> int | None:
    if not content_range:
        return None
    match = re.fullmatch(r"bytes\s+\*/(\d+)", content_range.strip())
    return int(match[1]) if match else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _truncate(path: Path) -> None:
    path.unlink(missing_ok=True)


def _open_part(part: Path, append: bool) -> BinaryIO:
    return part.open("ab" if append else "wb")


def _sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _finish(part: Path, dest: Path) -> None:
    os.replace(part, dest)
    # Make the rename itself durable.
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
