"""The two calls of the protocol: create and query, with their checks in the service's order."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
from aiohttp import web

from ._answers import Answers
from ._faults import CREATES_FIRST, FaultPlan, RetryAfterStyle, TokenBucket, retry_after_header
from ._jobs import PRICE, FakeJob, JobBook, describe, duration_of
from ._rules import check_create
from ._stats import FakeStats

__all__ = ["JobAPI"]

# Bodies this large (data-URI images) are checked in a thread: decoding and reading them would
# otherwise stall every other request of the fake.
_CHECK_IN_THREAD: Final = 256 * 1024


def _read_create(raw: bytes) -> tuple[Any, list[str], Mapping[str, Any]] | None:
    """Parse and check a create body: ``(body, problems, args)``, or ``None`` if not JSON."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    problems, args = check_create(body)
    return body, problems, args


@attrs.define(kw_only=True, eq=False)
class JobAPI:
    """Serve ``job/create`` and ``job/query``.

    Args:
        api_key: the key it accepts.
        book: the jobs and the balance.
        answers: the envelope and error transport.
        faults: scripted and random faults.
        stats: the fake's counters.
        bucket: the query rate limit, if any.
        rate_limit_retry_after: how a 429 of the rate limit gives its wait: ``exact`` seconds
            (fractional, rounded up to the microsecond) or whole ``seconds`` (rounded up).
        result_url: makes a result URL for a finished job.
        on_created: told of each job made by a create (schedules its callback).
        extra_fields: add unknown keys to query answers.
    """

    api_key: str
    _book: JobBook
    _answers: Answers
    _faults: FaultPlan
    _stats: FakeStats
    bucket: TokenBucket | None
    rate_limit_retry_after: RetryAfterStyle
    _result_url: Callable[[FakeJob], str]
    _on_created: Callable[[FakeJob], None]
    extra_fields: bool

    def data(self, job: FakeJob, now: float | None = None) -> dict[str, Any]:
        """Return the ``data`` of a query answer about ``job``."""
        now = time.monotonic() if now is None else now
        url = self._result_url(job)
        return describe(job, now=now, url=url, extra_fields=self.extra_fields)

    def _authorized(self, request: web.Request) -> bool:
        expected = f"Bearer {self.api_key}"
        return secrets.compare_digest(request.headers.get("Authorization", ""), expected)

    async def create(self, request: web.Request) -> web.StreamResponse:
        """Answer a create: key, early faults, content type, body rules, balance, then the job."""
        self._stats.creates_received += 1
        answers = self._answers
        if not self._authorized(request):
            return answers.refuse("unauthorized", "invalid api key")
        fault = self._faults.draw("create")
        if fault is not None and fault not in CREATES_FIRST:
            return await answers.faulty(request, fault, "create", None)
        if request.content_type != "application/json":
            self._stats.creates_rejected += 1
            shown = request.content_type or "none"
            return answers.refuse(
                "unsupported_media_type",
                f"Content-Type must be application/json, not {shown}",
            )
        raw = await request.read()
        if len(raw) > _CHECK_IN_THREAD:
            checked = await asyncio.to_thread(_read_create, raw)
        else:
            checked = _read_create(raw)
        if checked is None:
            self._stats.creates_rejected += 1
            return answers.refuse("invalid_request", "the body is not JSON")
        body, problems, args = checked
        if problems:
            self._stats.creates_rejected += 1
            return answers.refuse("invalid_request", "; ".join(problems))
        amount = PRICE * duration_of(args)
        if not self._book.charge(amount):
            return answers.refuse("insufficient_balance", "insufficient balance")
        job = self._book.make(args, body.get("callback_url"), amount)
        self._on_created(job)

        def answer() -> web.Response:
            return answers.ok({"job_id": job.id, "amount": str(amount)})

        if fault is not None:
            return await answers.faulty(request, fault, "create", answer)
        return answer()

    async def query(self, request: web.Request) -> web.StreamResponse:
        """Answer a query: key, the rate limit, faults, then the job's state."""
        self._stats.queries += 1
        answers = self._answers
        if not self._authorized(request):
            return answers.refuse("unauthorized", "invalid api key")
        if self.bucket is not None:
            wait = self.bucket.take(time.monotonic())
            if wait > 0:
                header = retry_after_header(wait, self.rate_limit_retry_after)
                return answers.throttled("query", header)
        fault = self._faults.draw("query")
        job_id = request.query.get("id", "")
        job = self._book.jobs.get(job_id)

        def answer() -> web.Response:
            if job is None:
                return answers.refuse("job_not_found", f"job {job_id!r} not found")
            return answers.ok(self.data(job))

        if fault is not None:
            spoiled = answer if fault in CREATES_FIRST else None
            return await answers.faulty(request, fault, "query", spoiled)
        if job is not None:
            self._stats.queries_by_job[job.id] += 1
            if job.terminal_answered:
                self._stats.queries_after_terminal[job.id] += 1
            if job.status(time.monotonic()) >= 2:
                job.terminal_answered = True
        return answer()
