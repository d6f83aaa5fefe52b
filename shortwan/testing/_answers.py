"""How the fake answers: envelopes, refusals in the chosen error transport, throttling, faults."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Literal

import attrs
from aiohttp import web

from ._faults import Fault
from ._stats import FakeStats

__all__ = [
    "ERROR_TEXTS",
    "ERROR_TRANSPORTS",
    "Answers",
    "ErrorCodes",
    "ErrorText",
    "ErrorTransport",
    "Refusal",
]

ErrorTransport = Literal["envelope", "http"]
ErrorText = Literal["message", "info", "both"]
ERROR_TRANSPORTS: Final = ("envelope", "http")
ERROR_TEXTS: Final = ("message", "info", "both")
Refusal = Literal[
    "unauthorized",
    "insufficient_balance",
    "invalid_request",
    "unsupported_media_type",
    "job_not_found",
    "not_found",
    "method_not_allowed",
]
# The HTTP status of each refusal with error_transport="http". An unknown job id stays HTTP 200
# with code 1 in both transports: that is how the service was seen to answer it.
_STATUS: Final[Mapping[str, int]] = {
    "unauthorized": 401,
    "insufficient_balance": 402,
    "invalid_request": 400,
    "unsupported_media_type": 415,
    "job_not_found": 200,
    "not_found": 404,
    "method_not_allowed": 405,
}
_HTML_502: Final = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


def _nonzero(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value == 0:
        raise ValueError(f"error code {attribute.name} must be a non-zero int, not {value!r}")


@attrs.frozen(kw_only=True)
class ErrorCodes:
    """The ``code`` the fake puts in each kind of refusal.

    The service does not document its codes for these (only 3000 and, on queries, 1 are known),
    so the defaults are plain choices: the HTTP status the ``http`` transport sends, and 1 for an
    unknown job. Set your own to prove a client keys on ``code != 0``, not on a value.

    Attributes:
        unauthorized: a missing or wrong API key.
        insufficient_balance: a create the balance cannot pay.
        invalid_request: a create body that breaks a rule (not JSON, a bad argument or image).
        unsupported_media_type: a create whose Content-Type is not ``application/json``.
        job_not_found: a query for an id the fake does not know.
        not_found: a path the API does not have.
        method_not_allowed: a known path with the wrong method.
    """

    unauthorized: int = attrs.field(default=401, validator=_nonzero)
    insufficient_balance: int = attrs.field(default=402, validator=_nonzero)
    invalid_request: int = attrs.field(default=400, validator=_nonzero)
    unsupported_media_type: int = attrs.field(default=415, validator=_nonzero)
    job_not_found: int = attrs.field(default=1, validator=_nonzero)
    not_found: int = attrs.field(default=404, validator=_nonzero)
    method_not_allowed: int = attrs.field(default=405, validator=_nonzero)


class Answers:
    """Build every answer of the API paths, so they all share one envelope and one transport.

    Args:
        stats: where refusals and 429s are counted.
        error_transport: ``envelope`` (refusals are HTTP 200 with a non-zero code, as the
            service sends them) or ``http`` (refusals carry their HTTP status too).
        error_codes: the code of each refusal.
        error_text: the text field(s) of a refusal: ``message``, ``info`` or ``both``.
        extra_fields: add an unknown key to every envelope.
        retry_after: the Retry-After value of ``RATE_LIMIT`` faults.
        slow_delay: seconds a ``SLOW_AFTER`` answer waits.
    """

    def __init__(
        self,
        *,
        stats: FakeStats,
        error_transport: ErrorTransport,
        error_codes: ErrorCodes,
        error_text: ErrorText,
        extra_fields: bool,
        retry_after: str,
        slow_delay: float,
    ) -> None:
        if error_transport not in ERROR_TRANSPORTS:
            raise ValueError(f"error_transport must be envelope or http, not {error_transport!r}")
        if error_text not in ERROR_TEXTS:
            raise ValueError(f"error_text must be message, info or both, not {error_text!r}")
        self.stats = stats
        self.error_transport: ErrorTransport = error_transport
        self.error_codes = error_codes
        self.error_text: ErrorText = error_text
        self.extra_fields = extra_fields
        self.retry_after = retry_after
        self.slow_delay = slow_delay

    def envelope(self, code: int, data: Any = None, message: str | None = None) -> dict[str, Any]:
        """Return the JSON envelope ``{"code": ..., "data": ..., "message": ...}``."""
        body: dict[str, Any] = {"code": code}
        if data is not None:
            body["data"] = data
        if message is not None:
            if self.error_text in ("message", "both"):
                body["message"] = message
            if self.error_text in ("info", "both"):
                body["info"] = message
        if self.extra_fields:
            body["trace_id"] = secrets.token_hex(8)
        return body

    def ok(self, data: Mapping[str, Any]) -> web.Response:
        """Return a success: HTTP 200, code 0, ``data``."""
        return web.json_response(self.envelope(0, data))

    def refuse(self, kind: Refusal, message: str) -> web.Response:
        """Return a refusal of the request itself, in the chosen error transport."""
        self.stats.refusals[kind] += 1
        code: int = getattr(self.error_codes, kind)
        status = _STATUS[kind] if self.error_transport == "http" else 200
        return web.json_response(self.envelope(code, message=message), status=status)

    def routing_error(self, request: web.Request, error: web.HTTPException) -> web.Response:
        """Return aiohttp's routing refusal (404, 405, 413, ...) as the envelope."""
        if error.status == 404:
            return self.refuse("not_found", f"no such path: {request.path}")
        if error.status == 405:
            return self.refuse(
                "method_not_allowed", f"{request.path} does not take {request.method}"
            )
        kind = f"http_{error.status}"
        self.stats.refusals[kind] += 1
        status = error.status if self.error_transport == "http" else 200
        body = self.envelope(error.status, message=error.reason)
        return web.json_response(body, status=status)

    def throttled(self, endpoint: str, retry_after: str) -> web.Response:
        """Return HTTP 429 with Retry-After: a real status in both transports."""
        self.stats.count_rate_limited(endpoint)
        return web.json_response(
            self.envelope(429, message="too many requests"),
            status=429,
            headers={"Retry-After": retry_after},
        )

    async def faulty(
        self,
        request: web.Request,
        fault: Fault,
        endpoint: str,
        answer: Callable[[], web.Response] | None,
    ) -> web.StreamResponse:
        """Answer with ``fault``; ``answer`` makes the good answer the fault spoils."""
        if fault is Fault.RATE_LIMIT:
            return self.throttled(endpoint, self.retry_after)
        if fault is Fault.UNAVAILABLE:
            body = self.envelope(503, message="service unavailable")
            return web.json_response(body, status=503)
        if fault is Fault.CODE_3000:
            return web.json_response(
                self.envelope(3000, message="upstream model temporarily unavailable")
            )
        if fault in (Fault.RESET_BEFORE, Fault.RESET_AFTER):
            transport = request.transport
            if transport is not None:
                transport.abort()
            return web.Response()
        good = answer() if answer is not None else self.ok({})
        if fault is Fault.SLOW_AFTER:
            await asyncio.sleep(self.slow_delay)
            return good
        if fault is Fault.HTML_502:
            return web.Response(status=502, text=_HTML_502, content_type="text/html")
        raw = good.body if isinstance(good.body, bytes) else b"{}"
        return web.Response(body=raw[: max(1, len(raw) // 2)], content_type="application/json")

    @web.middleware
    async def envelope_errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Turn routing errors of the API paths into refusals; result files keep plain HTTP."""
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400 or request.path.startswith("/files/"):
                raise
            return self.routing_error(request, error)
