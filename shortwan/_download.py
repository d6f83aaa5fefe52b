"""Streaming, resumable, atomic downloads of result videos.

A video is written to a part file next to ``dest`` named after what it is a download of (see
``_files.part_path``), resumed with ``Range`` when that file exists (only on a 206 whose
``Content-Range`` starts where the file ends; a 200 restarts it, a range that stops short of the
total is kept and the rest asked for), its length checked, fsynced and renamed into place, so a
failure never leaves a file at the final path. Downloads to one path take turns. The API key is
never sent: download requests carry no credentials, and redirects are followed by hand, at most
five, never from https to http. Every failure is a :class:`DownloadError`; cancellation is not.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final
from urllib.parse import urljoin, urlsplit

import aiohttp
import anyio
import attrs

from ._config import RetryPolicy, Timeouts
from ._errors import DownloadError
from ._files import (
    BlockWriter,
    finish,
    open_part,
    part_path,
    size_of,
    sync,
    truncate,
)
from ._retry import AttemptFailed, RetryHook, Retrying, Safety

__all__ = ["Downloader"]

logger = logging.getLogger("shortwan")

_CHUNK: Final = 256 * 1024
_FLUSH: Final = 2 * 1024 * 1024
# Blocks waiting for the writer thread: the network keeps flowing while the disk catches up,
# and memory stays bounded (this many blocks of _FLUSH bytes, plus the one being filled).
_QUEUED_BLOCKS: Final = 3
_MAX_REDIRECTS: Final = 5
_EXPIRED: Final = frozenset({401, 403, 404, 410})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


Refresh = Callable[[], Awaitable[str | None]]


def _failed(error: DownloadError) -> AttemptFailed:
    """Return the failure of one attempt: an expired URL does not come back by asking again."""
    return AttemptFailed(error, Safety.FINAL if error.status in _EXPIRED else Safety.UNCERTAIN)


class _Turn:
    """Whose turn it is to download to one path, and how many are holding or waiting."""

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


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
        # A file takes longer than an API answer: the retries of one get ten times the time.
        self._retry = (
            retry if retry.timeout is None else attrs.evolve(retry, timeout=10 * retry.timeout)
        )
        self._limit: anyio.Semaphore | None = None
        self._max_concurrent = max_concurrent
        self._turns: dict[Path, _Turn] = {}
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

        Downloads to the same path take turns: a later one waits, then finds the file the earlier
        one wrote and follows ``overwrite``.

        Args:
            url: the file's URL.
            dest: the final path; :func:`part_path` holds the bytes until they are complete.
            job_id: named in errors and logs, and names the part file.
            overwrite: replace an existing file at ``dest``.
            refresh: called once when the URL has expired (401/403/404/410) to get a fresh one.

        Raises:
            DownloadError: the file could not be fetched or written (the original error is its
                ``__cause__``); a partial file is kept for a later resume, and nothing is left at
                ``dest``.
        """
        try:
            key = await anyio.to_thread.run_sync(dest.resolve)
            async with self._turn(key):
                return await self._fetch_new(url, dest, job_id, overwrite, refresh)
        except DownloadError:
            raise
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
            raise DownloadError(
                f"cannot write {str(dest)!r}: {exc}", url=url, job_id=job_id
            ) from exc
        except Exception as exc:
            raise DownloadError(f"download failed: {exc!r}", url=url, job_id=job_id) from exc

    @contextlib.asynccontextmanager
    async def _turn(self, key: Path) -> AsyncIterator[None]:
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[key]

    async def _fetch_new(
        self, url: str, dest: Path, job_id: str | None, overwrite: bool, refresh: Refresh | None
    ) -> Path:
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
        part = part_path(dest, job_id=job_id, url=url)
        retrying = Retrying(
            self._retry,
            operation="download",
            name="the download",
            job_id=job_id,
            on_retry=self.on_retry,
        )
        refreshed = False

        async def attempt() -> Path:
            # Each short range adds at least one byte, so this ends at the total.
            while not await self._attempt(url, part, job_id):
                logger.debug("the server sent part of the range; asking for the rest")
            await anyio.to_thread.run_sync(finish, part, dest)
            return dest

        async def after_failure(_retrying: Retrying, failure: AttemptFailed) -> bool:
            # An expired URL is refreshed once, by asking about the job again.
            nonlocal url, refreshed
            error = failure.error
            status = error.status if isinstance(error, DownloadError) else None
            if status not in _EXPIRED or refresh is None or refreshed:
                return False
            refreshed = True
            try:
                fresh = await refresh()
            except Exception as exc:
                raise DownloadError(
                    f"the download URL expired and getting a fresh one failed: {exc}",
                    url=url,
                    status=status,
                    job_id=job_id,
                ) from exc
            if not fresh or fresh == url:
                return False
            logger.info("download URL expired, got a fresh one", extra={"job_id": job_id})
            url = fresh
            _check_url(url, job_id)
            return True

        return await retrying.call(attempt, after_failure=after_failure)

    async def _attempt(self, url: str, part: Path, job_id: str | None) -> bool:
        """Fetch what ``part`` lacks; return whether it now holds the whole file."""
        have = await anyio.to_thread.run_sync(size_of, part)
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
                        return True  # the part file already holds every byte
                    await anyio.to_thread.run_sync(truncate, part)
                    raise _failed(
                        DownloadError("resume refused; restarting", url=url, job_id=job_id)
                    )
                if status == 206 and have:
                    content_range = response.headers.get("Content-Range", "")
                    span = _span_of(content_range)
                    if span is None or span[0] != have:
                        await anyio.to_thread.run_sync(truncate, part)
                        raise _failed(
                            DownloadError(
                                f"the server resumed with an unusable range {content_range!r};"
                                " restarting",
                                url=url,
                                job_id=job_id,
                            )
                        )
                    _, end, total = span
                    expected: int | None = end + 1 - have
                    # A range that stops short of a known total is kept; the rest is asked for.
                    complete = total is None or end == total - 1
                    append = True
                elif status == 200:
                    expected = response.content_length
                    complete = True
                    append = False
                else:
                    raise _failed(
                        DownloadError(
                            f"download answered HTTP {status}",
                            url=url,
                            status=status,
                            job_id=job_id,
                        )
                    )
                await self._stream(response, part, append=append, expected=expected, job_id=job_id)
                return complete
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failed(
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
                raise _failed(DownloadError("redirect without a Location", url=url, job_id=job_id))
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
        handle = await anyio.to_thread.run_sync(open_part, part, append)
        try:
            start = handle.tell()
            writer = BlockWriter(handle)
            broken: BaseException | None = None
            send, receive = anyio.create_memory_object_stream[bytearray](_QUEUED_BLOCKS)
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer.drain, receive, tg.cancel_scope)
                buffer = bytearray()
                try:
                    async for chunk in response.content.iter_chunked(_CHUNK):
                        buffer += chunk
                        if len(buffer) >= _FLUSH:
                            await send.send(buffer)
                            buffer = bytearray()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    broken = exc
                except anyio.BrokenResourceError:
                    pass  # the writer stopped on a disk error, raised below
                finally:
                    # Keep what did arrive, even when the body broke off: the next attempt
                    # resumes from there with a Range request.
                    with anyio.CancelScope(shield=True):
                        if buffer and writer.error is None:
                            with contextlib.suppress(anyio.BrokenResourceError):
                                await send.send(buffer)
                        send.close()
            if writer.error is not None:
                # Not retried: a full or failing disk does not heal by asking again.
                raise DownloadError(
                    f"cannot write {str(part)!r}: {writer.error}",
                    url=str(response.url),
                    job_id=job_id,
                ) from writer.error
            if broken is not None:
                raise broken
            await anyio.to_thread.run_sync(sync, handle)
        finally:
            # Shielded: a cancelled caller would otherwise skip the close (and leak the file).
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(handle.close)
        written = writer.written
        if expected is not None and written != expected:
            raise _failed(
                DownloadError(
                    f"got {written:,} bytes of {expected:,} (resume offset {start:,})",
                    url=str(response.url),
                    job_id=job_id,
                )
            )


def _check_url(url: str, job_id: str | None) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"not an http(s) URL: {url[:80]!r}", url=url, job_id=job_id)


def _span_of(content_range: str) -> tuple[int, int, int | None] | None:
    """Return a 206's ``(start, end, total)``, total ``None`` when unknown; ``None`` if invalid."""
    match = _CONTENT_RANGE.fullmatch(content_range.strip())
    if match is None:
        return None
    start, end = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if end < start or (total is not None and end >= total):
        return None
    return start, end, total


def _total_of(content_range: str | None) -> int | None:
    if not content_range:
        return None
    match = re.fullmatch(r"bytes\s+\*/(\d+)", content_range.strip())
    return int(match[1]) if match else None
