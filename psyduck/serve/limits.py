"""`BodyLimit`: a request body over the server's limit is refused (413) before it is read.

Without it, a 50 MB prompt is received, parsed as JSON and validated on the event loop, where every
other request waits its turn: /health stopped answering for a minute. The limit (`psyduck serve
--max-body-mb`) is checked on the `Content-Length` header, so the body is never read at all; the
client gets the 413 while it is still sending, and the connection is closed behind the answer. A
body without a length (chunked) is read up to the limit and no further.

It is an ASGI middleware rather than a FastAPI dependency because by the time a dependency runs,
FastAPI has already read and parsed the body.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from psyduck.serve.errors import error_response


class BodyLimit:
    """Answer 413, in OpenAI's error shape, to a request whose body exceeds `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit():  # the server (uvicorn) already makes sure the body is no longer than this
            if int(length) > self.max_bytes:
                await self.refuse(int(length), scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        body, more = b"", True  # no length given: read it here, up to the limit
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its body was complete: nobody to answer
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self.refuse(len(body), scope, receive, send, at_least=True)
                return
        await self.app(scope, replay(body, receive), send)

    async def refuse(self, size: int, scope: Scope, receive: Receive, send: Send, at_least: bool = False) -> None:
        limit_mb = f"{self.max_bytes / 10**6:g}"
        response = error_response(
            413, f"the request body is {'over ' if at_least else ''}{size} bytes, above this server's limit of "
            f"{self.max_bytes} ({limit_mb} MB); send a shorter prompt, or start the server with a larger --max-body-mb",
            code="request_too_large", headers={"Connection": "close"},  # the unread rest must not be parsed as a request
        )
        await response(scope, receive, send)


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands out the body already read, then whatever the client sends next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def again() -> Message:
        return pending.pop(0) if pending else await receive()

    return again
