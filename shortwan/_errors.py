"""The exceptions shortwan raises.

Every error derives from one root, and every error about a job carries its ``job_id`` when one is
known::

    ShortWanError
    ├── ConfigurationError (ValueError)      the client was set up wrongly (no API key, bad URL)
    ├── InvalidRequestError (ValueError)     rejected locally; nothing was sent, nothing spent
    ├── APIError                             the service answered code != 0 or an HTTP error status
    │   ├── AuthenticationError              401, 403
    │   ├── InsufficientBalanceError         402
    │   ├── RateLimitError                   429, with .retry_after
    │   ├── BadRequestError                  400, 404, 422: the service refused the request itself
    │   ├── ServiceUnavailableError          code 3000, HTTP 503
    │   └── ServerError                      other 5xx
    ├── TransportError                       connection failures and timeouts
    │   └── MalformedResponseError           a body that is not the documented envelope
    ├── SubmissionUncertainError             a create was sent, its outcome is unknown: maybe paid
    ├── JobFailedError                       the job ended in failure (.reason, .refunded)
    ├── JobTimeoutError (TimeoutError)       our deadline passed; the remote job may still finish
    ├── JobDetachedError                     the client was closed before the job ended
    ├── SpendLimitError                      not sent: it would have crossed the spend cap
    ├── DownloadError                        the video could not be fetched
    ├── JournalError                         a batch journal could not record or read something
    └── SharedStateError                     shared state (Redis) could not be read or written

aiohttp, json and cattrs exceptions never reach the caller untranslated; they are kept as
``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "DownloadError",
    "InsufficientBalanceError",
    "InvalidRequestError",
    "JobDetachedError",
    "JobFailedError",
    "JobTimeoutError",
    "JournalError",
    "MalformedResponseError",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "SharedStateError",
    "ShortWanError",
    "SpendLimitError",
    "SubmissionUncertainError",
    "TransportError",
]

_SNIPPET = 300


def snippet(body: str | bytes | None, limit: int = _SNIPPET) -> str | None:
    """Return the start of a response body, fit for an error message."""
    if body is None:
        return None
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = text.strip()
    if len(text) > limit:
        return text[:limit] + f"… ({len(text)} characters)"
    return text


def quoted(text: str, limit: int = 80) -> str:
    """Return ``text`` quoted for an error message, cut to about ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[: limit - 3]) + "…"


def as_shortwan(exc: Exception, what: str) -> ShortWanError:
    """Return ``exc`` if it is a shortwan error, else a :class:`ShortWanError` caused by it."""
    if isinstance(exc, ShortWanError):
        return exc
    error = ShortWanError(f"{what}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class ShortWanError(Exception):
    """Base class of every error shortwan raises."""

    job_id: str | None

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id

    def __str__(self) -> str:
        if self.job_id is not None and self.job_id not in self.message:
            return f"{self.message} (job {self.job_id})"
        return self.message


class ConfigurationError(ShortWanError, ValueError):
    """The client cannot be used as configured, for example without an API key."""


class InvalidRequestError(ShortWanError, ValueError):
    """A request breaks a documented rule; it was not sent and nothing was spent.

    ``problems`` lists every broken rule, one readable line each.
    """

    def __init__(self, problems: Sequence[str], *, job_id: str | None = None) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            message = f"invalid request: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"invalid request, {len(self.problems)} problems:\n{lines}"
        super().__init__(message, job_id=job_id)


class APIError(ShortWanError):
    """The service answered with a non-zero ``code`` or an HTTP error status.

    An API error to a create means the service rejected it: no job was created.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        body: str | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.status = status
        self.code = code
        self.body = body


class AuthenticationError(APIError):
    """The API key was refused (HTTP 401 or 403)."""


class InsufficientBalanceError(APIError):
    """The account cannot pay for the job (HTTP 402)."""


class BadRequestError(APIError):
    """The service refused the request as invalid (HTTP 400, 404 or 422); no job was created."""


class RateLimitError(APIError):
    """The service asked us to slow down (HTTP 429) for longer than we may wait.

    ``retry_after`` is the delay the service asked for, in seconds, when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = 429,
        code: int | None = None,
        body: str | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, body=body, job_id=job_id)
        self.retry_after = retry_after


class ServiceUnavailableError(APIError):
    """The model or the service is temporarily unavailable (code 3000, HTTP 503)."""


class ServerError(APIError):
    """The service failed with a 5xx status to a request that is safe to repeat."""


class TransportError(ShortWanError):
    """The request failed below the API: connection, TLS, timeout."""


class MalformedResponseError(TransportError):
    """The service answered with something that is not its documented envelope.

    ``body`` holds the start of what came back, ``status`` the HTTP status, and for answers that
    were JSON but had the wrong shape ``paths`` names each offending field.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str | None = None,
        paths: Sequence[str] = (),
        job_id: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.status = status
        self.body = body
        self.paths = tuple(paths)


class SubmissionUncertainError(ShortWanError):
    """A create request may have reached the service, but its answer was lost.

    The job may exist and may have been charged. shortwan did not resubmit it, so at most one job
    exists for this request. ``request`` is the request that was sent; ``callback_token`` is the
    token its callback URL carried, when callbacks were on.
    """

    def __init__(
        self,
        message: str,
        *,
        request: object = None,
        callback_token: str | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.request = request
        self.callback_token = callback_token


class JobFailedError(ShortWanError):
    """The job ended in failure on the service.

    ``reason`` is the service's error text, ``refunded`` whether the charge was returned, and
    ``status`` the raw status number it ended with.
    """

    job_id: str

    def __init__(
        self,
        job_id: str,
        reason: str | None,
        *,
        refunded: bool | None = None,
        status: int | None = None,
    ) -> None:
        text = reason or "no reason given"
        refund = {True: "refunded", False: "not refunded", None: "refund unknown"}[refunded]
        super().__init__(f"job {job_id} failed: {text} ({refund})", job_id=job_id)
        self.reason = reason
        self.refunded = refunded
        self.status = status


class JobTimeoutError(ShortWanError, TimeoutError):
    """Our own deadline passed while waiting; the remote job may still finish and be collected."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        last_status: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.last_status = last_status


class JobDetachedError(ShortWanError):
    """The client stopped tracking the job (it was closed); the job may still finish remotely."""


class SpendLimitError(ShortWanError):
    """The request was not sent: its cost would have crossed ``max_spend``.

    ``limit`` is the cap, ``committed`` what was spent or reserved when the request was refused,
    ``cost`` what the request would have cost.
    """

    def __init__(self, message: str, *, limit: object, committed: object, cost: object) -> None:
        super().__init__(message)
        self.limit = limit
        self.committed = committed
        self.cost = cost


class DownloadError(ShortWanError):
    """A result video could not be downloaded."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.url = url
        self.status = status


class JournalError(ShortWanError):
    """A batch journal could not record or read something; the cause is kept as ``__cause__``.

    A write that raised it was not recorded (its transaction was rolled back), so the journal
    still says what it said before, and it stays usable for later writes.
    """


class SharedStateError(ShortWanError):
    """State shared by several processes (``shortwan.redis``) could not be read or written.

    Raised in place of an answer that cannot be trusted: a spend reservation that cannot reach the
    shared counter fails closed with it, so no create is sent past a cap nobody can check. The
    cause (a connection error, a timeout) is kept as ``__cause__``.
    """
