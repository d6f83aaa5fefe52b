"""What the fake saw, counted for tests to assert on."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

__all__ = ["FakeStats"]


@attrs.define(kw_only=True)
class FakeStats:
    """What the fake saw. Read them; the fake updates them.

    Attributes:
        creates_received: create requests, whatever became of them.
        jobs_created: jobs made (by creates and by ``add_jobs``).
        jobs_by_prompt: jobs made, per prompt: more than one means someone paid twice.
        creates_rejected: creates refused for their body (wrong content type, not JSON, a
            broken argument or image rule).
        refusals: every refusal of a request, by kind (``unauthorized``, ``invalid_request``,
            ``unsupported_media_type``, ``insufficient_balance``, ``job_not_found``,
            ``not_found``, ``method_not_allowed``, or ``http_<status>`` for other routing errors).
        queries: query requests.
        queries_by_job: queries answered, per job.
        queries_after_terminal: queries answered after the job's terminal answer, per job.
        faults: faults injected, as ``"endpoint:NAME"``.
        rate_limited: every HTTP 429 answered: the query rate limit's and ``RATE_LIMIT`` faults.
        rate_limited_by_endpoint: the same 429s per endpoint (``create``, ``query``,
            ``download``).
        callbacks_sent: callbacks delivered (answered below HTTP 400).
        callbacks_failed: callbacks that failed or were refused.
        downloads: the request headers of every result-file request.
        clips_rendered: clips rendered from a job's own image (``render=True``).
    """

    creates_received: int = 0
    jobs_created: int = 0
    jobs_by_prompt: Counter[str] = attrs.field(factory=Counter)
    creates_rejected: int = 0
    refusals: Counter[str] = attrs.field(factory=Counter)
    queries: int = 0
    queries_by_job: Counter[str] = attrs.field(factory=Counter)
    queries_after_terminal: Counter[str] = attrs.field(factory=Counter)
    faults: Counter[str] = attrs.field(factory=Counter)
    rate_limited: int = 0
    rate_limited_by_endpoint: Counter[str] = attrs.field(factory=Counter)
    callbacks_sent: int = 0
    callbacks_failed: int = 0
    downloads: list[dict[str, str]] = attrs.field(factory=list)
    clips_rendered: int = 0

    def count_rate_limited(self, endpoint: str) -> None:
        """Count one HTTP 429 answered on ``endpoint``."""
        self.rate_limited += 1
        self.rate_limited_by_endpoint[endpoint] += 1

    def summary(self) -> dict[str, Any]:
        """Return the counters as plain picklable values (``downloads`` as a count)."""
        return {
            "creates_received": self.creates_received,
            "jobs_created": self.jobs_created,
            "jobs_by_prompt": dict(self.jobs_by_prompt),
            "creates_rejected": self.creates_rejected,
            "refusals": dict(self.refusals),
            "queries": self.queries,
            "rate_limited": self.rate_limited,
            "rate_limited_by_endpoint": dict(self.rate_limited_by_endpoint),
            "callbacks_sent": self.callbacks_sent,
            "callbacks_failed": self.callbacks_failed,
            "downloads": len(self.downloads),
            "faults": dict(self.faults),
        }
