"""The receiver's HTTP faces: an aiohttp handler and an ASGI 3 application.

Both read at most ``max_body`` bytes of a body (the rest is never buffered), hand the token and
the body to :meth:`CallbackReceiver.dispatch`, and answer with what it says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from aiohttp import web

from ._callback_shared import RETRY_AFTER

__all__ = ["ASGIApp", "Dispatcher", "aiohttp_handler"]

ASGIScope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Dispatcher(Protocol):
    """The receiver, as its HTTP faces see it."""

    @property
    def max_body(self) -> int:
        """Bodies longer than this are not read (``None`` is passed on instead)."""

    async def dispatch(self, token: str, body: bytes | None) -> tuple[int, bytes]:
        """Take one callback; return the HTTP status and body to answer with."""


def _headers(status: int) -> dict[str, str]:
    # A 503 means "ask again": the registry that knows the token could not be asked.
    return {"Retry-After": RETRY_AFTER} if status == 503 else {}


def aiohttp_handler(receiver: Dispatcher) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Return the aiohttp handler of ``receiver``'s callback route."""

    async def handler(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        body: bytes | None
        if request.content_length is not None and request.content_length > receiver.max_body:
            body = None
        else:
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > receiver.max_body:
                    break
                chunks.append(chunk)
            body = None if size > receiver.max_body else b"".join(chunks)
        status, answer = await receiver.dispatch(token, body)
        return web.Response(
            status=status, body=answer, content_type="application/json", headers=_headers(status)
        )

    return handler


class ASGIApp:
    """An ASGI 3 application object (servers tell ASGI 3 from 2 by an async ``__call__``)."""

    __slots__ = ("_receiver",)

    def __init__(self, receiver: Dispatcher) -> None:
        self._receiver = receiver

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("method") != "POST":
            await self._answer(send, 405, b'{"error":"POST only"}')
            return
        token = str(scope.get("path", "")).rstrip("/").rsplit("/", 1)[-1]
        limit = self._receiver.max_body
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            size += len(chunk)
            if size > limit:
                break  # stop reading: the rest is never buffered
            chunks.append(chunk)
        status, body = await self._receiver.dispatch(
            token, None if size > limit else b"".join(chunks)
        )
        await self._answer(send, status, body)

    @staticmethod
    async def _answer(send: ASGISend, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        headers += [(k.lower().encode(), v.encode()) for k, v in _headers(status).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
