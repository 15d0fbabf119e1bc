"""An httpx transport onto an ASGI app that streams the response (the gateway's unit tests use it as the
backend connection)."""
from __future__ import annotations

import asyncio

import httpx


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Like httpx.ASGITransport, but hands the response over as soon as it starts and streams its body
    (httpx's own transport waits for the whole response): cancellation reaches the backend mid-stream, and a
    stalled stream stalls the relay."""

    def __init__(self, app):
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        queue: asyncio.Queue = asyncio.Queue()
        started: asyncio.Future = asyncio.get_running_loop().create_future()
        closed = asyncio.Event()
        sent_body = False

        async def receive():
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await closed.wait()
            return {"type": "http.disconnect"}

        async def send(msg):
            if msg["type"] == "http.response.start":
                started.set_result(msg)
            else:
                await queue.put(msg.get("body", b""))
                if not msg.get("more_body"):
                    await queue.put(None)

        scope = {"type": "http", "method": request.method, "path": request.url.path, "root_path": "",
                 "query_string": request.url.query, "headers": list(request.headers.raw), "scheme": "http",
                 "server": ("backend", 80)}
        task = asyncio.create_task(self.app(scope, receive, send))
        start = await started

        class Body(httpx.AsyncByteStream):
            async def __aiter__(self):
                while (chunk := await queue.get()) is not None:
                    yield chunk

            async def aclose(self):
                closed.set()
                task.cancel()

        return httpx.Response(start["status"], headers=start["headers"], stream=Body())
