"""AsyncShortWan: the client's lifecycle and its calls."""

from __future__ import annotations

import enum
import logging
import os
import ssl
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from ._config import DEFAULT_LIMITS, DEFAULT_RETRY, DEFAULT_TIMEOUTS, Limits, RetryPolicy, Timeouts
from ._convert import request_args, snapshot_from_data
from ._errors import (
    ConfigurationError,
    InvalidRequestError,
    MalformedResponseError,
    SubmissionUncertainError,
)
from ._http import Transport
from ._models import ImageToVideo, Job, JobSnapshot, JobStatus

__all__ = ["DEFAULT_BASE_URL", "AsyncShortWan"]

logger = logging.getLogger("shortwan")

DEFAULT_BASE_URL: Final = "https://api.shortapi.ai"
API_KEY_ENV: Final = "SHORTAPI_KEY"
BASE_URL_ENV: Final = "SHORTWAN_BASE_URL"


class _State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


def _resolve_key(api_key: str | None) -> str:
    key: object = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if not key:
        raise ConfigurationError(
            f"no API key: pass api_key=... or set the {API_KEY_ENV} environment variable"
        )
    if not isinstance(key, str) or any(ch.isspace() or not ch.isprintable() for ch in key):
        # A newline in a header value would split the request; say so without echoing the key.
        raise ConfigurationError("the API key contains white space or control characters")
    return key


def _resolve_base_url(base_url: str | None) -> str:
    url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"base_url must be an http(s) URL with a host, got {url!r}")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"base_url must not carry a query or fragment, got {url!r}")
    return url.rstrip("/")


def _job_id_problem(job_id: object) -> str | None:
    if not isinstance(job_id, str) or not job_id.strip():
        return f"a job id must be a non-empty string, got {job_id!r}"
    if len(job_id) > 256 or any(not ch.isprintable() or ch.isspace() for ch in job_id):
        return f"not a job id: {job_id[:40]!r}"
    return None


class AsyncShortWan:
    """An asyncio client for ShortAPI's ``alibaba/wan-2.7/image-to-video`` jobs.

    Use it as an async context manager, or call :meth:`aclose` when done. The HTTP session is
    created on first use inside the running loop, so building a client at import time is safe.

    Args:
        api_key: the ShortAPI key; defaults to the ``SHORTAPI_KEY`` environment variable.
        base_url: the API origin; defaults to ``SHORTWAN_BASE_URL`` or ``https://api.shortapi.ai``.
        timeouts: per-attempt time limits.
        retry: how failed requests are retried; creates are only retried when no job can exist.
        limits: connection pool sizes.
        session: an ``aiohttp.ClientSession`` to borrow; it is used as is and never closed.
        ssl_context: TLS settings (certificate verification is on by default).

    Raises:
        ConfigurationError: no API key, or a base URL that is not http(s).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        retry: RetryPolicy = DEFAULT_RETRY,
        limits: Limits = DEFAULT_LIMITS,
        session: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._transport = Transport(
            api_key=_resolve_key(api_key),
            base_url=_resolve_base_url(base_url),
            timeouts=timeouts,
            retry=retry,
            limits=limits,
            session=session,
            ssl_context=ssl_context,
        )
        self._state = _State.UNOPENED

    def __repr__(self) -> str:
        return f"<AsyncShortWan {self.base_url} {self._state.name.lower()}>"

    @property
    def base_url(self) -> str:
        """The API origin requests go to."""
        return self._transport.base_url

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._state is _State.CLOSED

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise RuntimeError("this shortwan client is closed; create a new one")
        self._state = _State.OPENED

    async def __aenter__(self) -> AsyncShortWan:
        if self._state is _State.CLOSED:
            raise RuntimeError("a closed shortwan client cannot be reopened; create a new one")
        self._state = _State.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session this client created. Idempotent; a borrowed one stays open."""
        self._state = _State.CLOSED
        await self._transport.aclose()

    async def submit(self, request: ImageToVideo) -> Job:
        """Create a job for ``request``; the job is charged from here on.

        Returns:
            The job, with its id and the amount charged.

        Raises:
            InvalidRequestError: ``request`` is not an :class:`ImageToVideo` (nothing was sent).
            SubmissionUncertainError: the create may have reached the service but its answer was
                lost; it was not resubmitted (see ``RetryPolicy.retry_uncertain_creates``).
            APIError: the service refused the create; no job exists.
            TransportError: the service could not be reached; no job exists.
        """
        if not isinstance(request, ImageToVideo):
            raise InvalidRequestError(
                [f"submit takes an ImageToVideo request, got {type(request).__name__}"]
            )
        self._check_open()
        try:
            created = await self._transport.create(request.model, request_args(request))
        except SubmissionUncertainError as exc:
            exc.request = request
            logger.warning("create outcome unknown, not resubmitted: %s", exc)
            raise
        job = Job(id=created.job_id, amount=created.amount, request=request)
        logger.info(
            "job %s created, charged %s",
            job.id,
            job.amount,
            extra={"job_id": job.id, "amount": str(job.amount)},
        )
        return job

    async def get_job(self, job_id: str) -> JobSnapshot:
        """Query a job once and return what the service said.

        Queries change nothing on the service, so they are retried on every transient failure.

        Raises:
            InvalidRequestError: ``job_id`` is not a plausible job id (nothing was sent).
            APIError: the service refused the query (for example, an unknown job id).
            MalformedResponseError: the answer could not be read.
            TransportError: the service could not be reached.
        """
        problem = _job_id_problem(job_id)
        if problem is not None:
            raise InvalidRequestError([problem])
        self._check_open()
        data = await self._transport.query(job_id)
        try:
            snapshot = snapshot_from_data(data, job_id=job_id)
        except MalformedResponseError as exc:
            exc.job_id = job_id
            raise
        if snapshot.id != job_id:
            # Never let an answer about another job stand in for this one.
            raise MalformedResponseError(
                f"asked for job {job_id}, the answer is about job {snapshot.id}",
                job_id=job_id,
                paths=["data.id"],
            )
        if snapshot.status is JobStatus.UNKNOWN:
            logger.warning(
                "job %s reports unknown status %d",
                job_id,
                snapshot.raw_status,
                extra={"job_id": job_id, "raw_status": snapshot.raw_status},
            )
        return snapshot
