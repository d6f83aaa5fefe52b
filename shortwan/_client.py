"""AsyncShortWan: the client's lifecycle and its calls."""

from __future__ import annotations

import enum
import functools
import logging
import os
import ssl
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import aiohttp
import anyio

from ._aio import ClosedOnExit
from ._batch import Batch, RequestSource
from ._config import (
    DEFAULT_LIMITS,
    DEFAULT_POLL,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    Limits,
    PollPolicy,
    RetryPolicy,
    Timeouts,
)
from ._download import Downloader
from ._engine import Engine
from ._errors import ConfigurationError, DownloadError, InvalidRequestError
from ._files import resolve_dest, safe_name
from ._http import Transport
from ._ledger import ledger_for
from ._models import (
    ImageToVideo,
    Job,
    JobSnapshot,
    Outcome,
    Video,
    check_timeout,
    job_id_problem,
)
from ._options import DEFAULT_CONCURRENCY, BatchOptions
from ._outputs import Outputs
from ._rate import QueryBudget
from ._retry import RetryHook
from ._shared import SharedStore
from ._spec import DEFAULT_JOB_TIMEOUT
from ._spend import SpendLimit, open_budget
from ._stats import ClientStatistics
from ._table import JobTable

if TYPE_CHECKING:
    from .callbacks import CallbackReceiver
    from .journal import Journal

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
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - a port that is not a number raises here
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigurationError(f"base_url is not a usable URL ({exc}): {url!r}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError(f"base_url must be an http(s) URL with a host, got {url!r}")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"base_url must not carry a query or fragment, got {url!r}")
    return url.rstrip("/")


class AsyncShortWan(ClosedOnExit):
    """An asyncio client for ShortAPI's ``alibaba/wan-2.7/image-to-video`` jobs.

    Use it as an async context manager, or call :meth:`aclose` when done. The HTTP session is
    created on first use inside the running loop, so building a client at import time is safe.

    Args:
        api_key: the ShortAPI key; defaults to the ``SHORTAPI_KEY`` environment variable.
        base_url: the API origin; defaults to ``SHORTWAN_BASE_URL`` or ``https://api.shortapi.ai``.
        timeouts: per-attempt time limits.
        retry: how failed requests are retried; creates are only retried when no job can exist.
        limits: connection pool sizes.
        poll: how the shared poller schedules status queries.
        session: an ``aiohttp.ClientSession`` to borrow; it is used as is and never closed.
        ssl_context: TLS settings (certificate verification is on by default).
        max_finished_jobs: finished jobs kept in :attr:`jobs` (oldest dropped first); ``None``
            keeps all.
        query_budget: a shared query-rate budget to use instead of this client's own limiter.
        max_in_flight: jobs this client has created and not seen end, at most (``None``: no
            limit). A create waits for a slot; every ``submit``, ``generate`` and batch of the
            client shares the slots, so several batches cannot together run past it.
        on_retry: called with a :class:`RetryEvent` before each retry of a create, query or
            download (operation, job id, attempt, delay, cause), for metrics; it must not block.
        callbacks: a :class:`~shortwan.callbacks.CallbackReceiver`: every create then carries
            a callback URL with its own token, results arrive when the service calls back
            (confirmed by one query), and polling becomes a slow safety net.
        shared: a :class:`shortwan.redis.SharedState` (from ``await shortwan.redis.connect(...)``)
            to share with every process of its namespace: ``max_spend`` given as an amount is
            then one cap for all of them, every job end seen here is published, an attached
            job (and :meth:`get_job`) is answered from an end another process saw without a
            query, and a job another live worker polls is not polled here too. It is borrowed:
            closing the client never closes it.

    Raises:
        ConfigurationError: no API key, a base URL that is not http(s), or a ``shared`` state
            that is closed or cannot reach its server.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        retry: RetryPolicy = DEFAULT_RETRY,
        limits: Limits = DEFAULT_LIMITS,
        poll: PollPolicy = DEFAULT_POLL,
        session: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_finished_jobs: int | None = 10_000,
        query_budget: QueryBudget | None = None,
        max_in_flight: int | None = None,
        on_retry: RetryHook | None = None,
        callbacks: CallbackReceiver | None = None,
        shared: SharedStore | None = None,
    ) -> None:
        if shared is not None and (shared.closed or not shared.online):
            state = "closed" if shared.closed else "cannot reach its server"
            raise ConfigurationError(f"the shared state {shared!r} {state}; nothing was sent")
        limit: object = max_in_flight
        if limit is not None and (type(limit) is not int or limit < 1):
            raise ConfigurationError(f"max_in_flight must be an int >= 1 or None, got {limit!r}")
        kept: object = max_finished_jobs
        if kept is not None and (type(kept) is not int or kept < 0):
            raise ConfigurationError(
                f"max_finished_jobs must be an int >= 0 or None, got {max_finished_jobs!r}"
            )
        self._transport = Transport(
            api_key=_resolve_key(api_key),
            base_url=_resolve_base_url(base_url),
            timeouts=timeouts,
            retry=retry,
            limits=limits,
            session=session,
            ssl_context=ssl_context,
        )
        self._engine = Engine(
            self._transport,
            poll=poll,
            max_finished=max_finished_jobs,
            query_budget=query_budget,
            callbacks=callbacks,
            max_in_flight=max_in_flight,
            shared=shared,
        )
        self._downloader = Downloader(
            session=self._transport.session,
            timeouts=timeouts,
            retry=retry,
            max_concurrent=limits.max_downloads,
        )
        self._transport.on_retry = self._downloader.on_retry = on_retry
        self._state = _State.UNOPENED

    def __repr__(self) -> str:
        return f"<AsyncShortWan {self.base_url} {self._state.name.lower()}>"

    @property
    def base_url(self) -> str:
        """The API origin requests go to."""
        return self._transport.base_url

    @property
    def jobs(self) -> JobTable:
        """Every job this client created or attached: states, counts, spend and an event feed."""
        return self._engine.table

    def statistics(self) -> ClientStatistics:
        """Return a snapshot of the client's figures: jobs, polling, query rate, callbacks.

        The snapshot is frozen: it does not change as the client goes on, and changing it
        changes nothing in the client.
        """
        engine = self._engine
        receiver, sharing = engine.callbacks, engine.sharing
        return ClientStatistics(
            jobs=engine.table.statistics(),
            polling=engine.poller.statistics(),
            rate=engine.query_budget.statistics(),
            callbacks=None if receiver is None else receiver.statistics(),
            shared=None if sharing is None else sharing.statistics(),
        )

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

    async def aclose(self) -> None:
        """Stop background work and close the HTTP session this client created.

        Idempotent. Jobs that have not finished go on remotely; they are logged by id and can be
        collected with :meth:`attach` from another client. A borrowed session stays open.
        """
        self._state = _State.CLOSED
        try:
            await self._engine.aclose()
        finally:
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
        record = await self._engine.create(request)
        return self._engine.job(record)

    async def get_job(self, job_id: str) -> JobSnapshot:
        """Query a job once and return what the service said.

        Queries change nothing on the service, so they are retried on every transient failure.
        With ``shared``, a job whose end some process published is answered from that end, with
        no query: its snapshot then has status, URLs, error, refund and credit, and ``None`` for
        the fields the service echoes (model, arguments, timestamps). An end a query reports is
        published.

        Raises:
            InvalidRequestError: ``job_id`` is not a plausible job id (nothing was sent).
            APIError: the service refused the query (for example, an unknown job id).
            MalformedResponseError: the answer could not be read.
            TransportError: the service could not be reached.
        """
        problem = job_id_problem(job_id)
        if problem is not None:
            raise InvalidRequestError([problem])
        self._check_open()
        return await self._engine.look_up(job_id)

    def attach(self, job_id: str) -> Job:
        """Track a job created elsewhere (another process, an earlier run) by its id.

        The job is asked about at once and then polled like any other; await
        :meth:`Job.result` for its video. With ``shared``, an end another process published
        resolves it with no query, and a job another live worker polls is not polled here
        (except as a slow safety net, ``PollPolicy.callback_interval``): its end arrives when
        that worker publishes it.

        Raises:
            InvalidRequestError: ``job_id`` is not a plausible job id.
        """
        problem = job_id_problem(job_id)
        if problem is not None:
            raise InvalidRequestError([problem])
        self._check_open()
        return self._engine.job(self._engine.attach(job_id))

    async def generate(
        self, request: ImageToVideo, *, timeout: float | None = DEFAULT_JOB_TIMEOUT
    ) -> Video:
        """Submit ``request`` and wait for its video.

        Args:
            request: what to make.
            timeout: seconds to wait once the job exists; ``None`` waits as long as it takes.

        Raises:
            JobFailedError: the job ended in failure.
            JobTimeoutError: ``timeout`` passed; the job goes on and is named in the error.
            SubmissionUncertainError, APIError, TransportError: as for :meth:`submit`.
        """
        seconds = check_timeout(timeout)  # before paying, not after
        job = await self.submit(request)
        return await job.result(timeout=seconds)

    async def generate_many(
        self,
        requests: RequestSource,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_spend: SpendLimit = None,
        timeout: float | None = DEFAULT_JOB_TIMEOUT,
        journal: Journal | None = None,
        resubmit_uncertain: bool = False,
        download_to: str | os.PathLike[str] | None = None,
    ) -> AsyncGenerator[Outcome, None]:
        """Make a video for every request, yielding outcomes as jobs finish.

        The input is pulled only when one of ``concurrency`` slots is free, so it can be a
        generator of millions of requests (``ImageToVideo`` objects, :class:`BatchItem` objects
        or argument mappings, which may carry ``key`` and ``output``). Every request gets exactly
        one :class:`Outcome`; a failure is reported in it and never stops the others. Leaving the
        loop early or cancelling it stops admission; jobs already created stay in :attr:`jobs`
        and are logged by id.

        Args:
            requests: an iterable or async iterable of requests.
            concurrency: requests admitted and not yet reported, at most.
            max_spend: a cap in USD (or a :class:`SpendCounter`, such as one opened with
                ``shared.spend_counter(limit, name=..., window="day")``): a request whose cost
                would cross it is not sent and gets a :class:`SpendLimitError` outcome, as does
                every request after it. With a journal, money the journal's earlier runs
                committed counts toward an amount. With ``shared``, an amount is also the
                shared counter ``"default"`` of the namespace (every process must give the same
                one): the batch stays under both. A request whose reservation cannot reach the
                shared counter is not sent and gets a :class:`SharedStateError` outcome; the
                next one tries again.
            timeout: seconds to wait for each job once created; a late job's outcome carries a
                :class:`JobTimeoutError` and the job stays tracked.
            journal: a :class:`~shortwan.journal.Journal`; a rerun with the same journal and
                input replays finished requests, re-attaches created jobs without a new create,
                and sends nothing twice.
            resubmit_uncertain: with a journal, send again the requests an earlier run may have
                sent without learning the outcome (they may then be paid twice). By default
                their outcome is a :class:`SubmissionUncertainError`.
            download_to: a folder to download every video into (named after the item's
                ``output``, else its job id); outcomes then carry ``path``. A failed download
                leaves the video in the outcome and a :class:`DownloadError` as its error.
        """
        self._check_open()
        options = BatchOptions(
            concurrency=concurrency,
            max_spend=max_spend,
            timeout=timeout,
            journal=journal,
            resubmit_uncertain=resubmit_uncertain,
            download_to=download_to,
        )
        batch = await _open_batch(self, self._engine, requests, options)
        try:
            await self._engine.spawn(batch.run)
            receive = batch.receive  # closed by batch.stop(), which names what is left in it
            while True:
                # Take what is buffered without yielding to the loop; wait only when empty.
                try:
                    outcome = receive.receive_nowait()
                except anyio.WouldBlock:
                    await batch.wait_for_outcome()
                    continue
                except anyio.EndOfStream:
                    break
                batch.release_slot()
                yield outcome
            if batch.error is not None:
                raise batch.error
        finally:
            batch.stop()

    async def gather(
        self,
        requests: RequestSource,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_spend: SpendLimit = None,
        timeout: float | None = DEFAULT_JOB_TIMEOUT,
        journal: Journal | None = None,
        resubmit_uncertain: bool = False,
        download_to: str | os.PathLike[str] | None = None,
    ) -> list[Outcome]:
        """Make a video for every request and return the outcomes in input order.

        Takes the arguments of :meth:`generate_many`; errors are reported in the outcomes.
        """
        self._check_open()
        options = BatchOptions(
            concurrency=concurrency,
            max_spend=max_spend,
            timeout=timeout,
            journal=journal,
            resubmit_uncertain=resubmit_uncertain,
            download_to=download_to,
        )
        outcomes: list[Outcome] = []
        batch = await _open_batch(self, self._engine, requests, options, sink=outcomes.append)
        try:
            await self._engine.spawn(batch.run)
            await batch.finished.wait()
        finally:
            batch.stop()
        if batch.error is not None:
            raise batch.error
        outcomes.sort(key=lambda o: o.index)
        return outcomes

    async def download(
        self,
        target: Video | Job | str,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        timeout: float | None = DEFAULT_JOB_TIMEOUT,
    ) -> Path:
        """Download a video to ``dest`` and return the path written.

        The file is streamed to a partial file beside ``dest`` named after the job (or the URL's
        path), resumed after interruptions, checked against its announced length, fsynced and
        renamed into place: ``dest`` either holds the whole video or does not exist. No
        credentials are sent to the file's host. An expired URL is refreshed once by asking the
        service about the job again.

        Args:
            target: a :class:`Video`, a :class:`Job` (awaited first, up to ``timeout``) or a URL.
            dest: a file path, or an existing folder (the file is then named after the job id).
            overwrite: replace an existing file at the final path.
            timeout: how long to wait for a :class:`Job` to finish.

        Raises:
            DownloadError: the file could not be fetched (the error names the job).
            JobFailedError, JobTimeoutError: a :class:`Job` given as ``target`` did not succeed.
        """
        self._check_open()
        if isinstance(target, Job):
            target = await target.result(timeout=timeout)
        if isinstance(target, Video):
            url, job_id = target.url, target.job_id
        elif isinstance(target, str):
            url, job_id = target, None
        else:
            raise DownloadError(f"cannot download a {type(target).__name__}")
        name = safe_name(job_id or Path(url.split("?", 1)[0]).stem or "video")
        path = await anyio.to_thread.run_sync(
            functools.partial(resolve_dest, dest, name, job_id=job_id)
        )

        async def refresh() -> str | None:
            if job_id is None:
                return None
            snapshot = await self._engine.query(job_id)
            video = snapshot.video
            return video.url if video is not None else None

        return await self._downloader.fetch(
            url, path, job_id=job_id, overwrite=overwrite, refresh=refresh
        )


async def _open_batch(
    client: AsyncShortWan,
    engine: Engine,
    requests: RequestSource,
    options: BatchOptions,
    *,
    sink: Callable[[Outcome], None] | None = None,
) -> Batch:
    """Make the batch of one ``generate_many`` or ``gather`` call: its ledger, cap and folder."""
    ledger = ledger_for(options.journal)
    sharing = engine.sharing
    budget = await open_budget(
        options.max_spend,
        spent_before=ledger.spent,
        shared=None if sharing is None else sharing.spend_counter,
    )
    folder = None
    if options.download_to is not None:
        folder = anyio.Path(options.download_to)
        await folder.mkdir(parents=True, exist_ok=True)
        folder = await folder.resolve()

    async def fetch(video: Video, dest: Path) -> Path:
        return await client.download(video, dest)

    outputs = Outputs(
        None if folder is None else Path(folder), fetch, claim_existing=ledger.remembers
    )
    return Batch(
        engine, requests, options=options, ledger=ledger, budget=budget, outputs=outputs, sink=sink
    )
