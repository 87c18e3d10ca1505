"""The request-body limit: a body over `--max-request-bytes` is refused with a 413 before any of it is parsed.

Without it the server read, parsed and tokenized a body of any size (a 2 MB message was refused only by
its token count, after all that work). The limit is an ASGI middleware in front of the whole app rather
than a FastAPI dependency: FastAPI reads and parses a route's body before it solves the route's
dependencies, so a dependency would run too late, and a middleware covers every route, /v1/models, /chat
and unknown paths included. It refuses a declared Content-Length over the limit without reading a byte,
and otherwise reads the body itself, counting bytes as they arrive (a chunked body has no Content-Length),
refusing it at the first chunk that passes the limit; the app then gets the body it read. So the app never
holds more than the limit (plus one chunk in flight, which uvicorn keeps under 64 KiB). The rest of a
refused body is drained and dropped by uvicorn, which keeps the connection open, so a client still sending
gets its 413 instead of a reset.
"""
from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatpipe.serve.errors import APIError

DEFAULT_MAX_REQUEST_BYTES = 1 << 20  # 1 MiB: some 30,000 short chat messages, far more than a context holds


def too_large(max_bytes: int) -> APIError:
    return APIError(413, f"the request body is over this server's limit of {max_bytes} bytes",
                    code="request_too_large")


class BodyLimit:
    """ASGI middleware: HTTP request bodies of at most `max_bytes`, or a 413 in OpenAI's error shape."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if _declared_length(scope) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the client left mid-body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await too_large(self.max_bytes).response()(scope, receive, send)


def _declared_length(scope: Scope) -> int:
    """The Content-Length header's value; 0 without one (uvicorn refuses a malformed one itself)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body already read as one message, then whatever the client sends next
    (its disconnect, which ends a generation)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
