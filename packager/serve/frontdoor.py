"""The bento's front door: the first ASGI layer every request meets, before anything of BentoML's.

For each HTTP request, in this order:

1. `/livez`, `/healthz`, `/readyz` and the backend's health path that BentoML declares as the service's
   liveness endpoint pass (probes stay open); `/metrics` passes, or asks for PACKAGER_METRICS_TOKEN when one
   is set (401 without it).
2. Every other path needs `Authorization: Bearer KEY` with one of the bento's API keys (401 otherwise,
   with a JSON body and `WWW-Authenticate: Bearer`), when the bento has keys.
3. Only the routes packager serves exist: POST /v1/chat/completions, POST /v1/completions, GET /v1/models.
   Any other path is 404 and a known path with another method 405; neither reaches the backend.
4. An inference request's body is read here, whole, before any concurrency slot is taken: more than
   `max_body_bytes` (announced by Content-Length or counted while reading) is 413, a body not received within
   `body_timeout_s` is 408. A slow client therefore holds no slot of the gateway or of BentoML.
5. 429 and 503 answers, whoever gives them (the gateway, BentoML's concurrency limit, a backend that is
   restarting), carry `Retry-After`.

Because it answers refused requests itself, BentoML's HTTP metrics (labelled by raw path) never see them:
10,000 random paths add no series. Refusals are counted in `packager_refused_requests_total{reason}`.

It is the outermost middleware: `install()` puts it in front of BentoML's own (metrics, tracing, access
log, concurrency limit) in the process that builds the service's app.
"""
from __future__ import annotations

import json
from typing import Any, Callable

import anyio

from packager.serve.auth import KeyCheck, bearer_token

OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz"})
METRICS_PATH = "/metrics"
ROUTES: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("POST",),
    "/v1/completions": ("POST",),
    "/v1/models": ("GET", "HEAD"),
}
INFERENCE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
RETRY_AFTER_S = {429: 1, 503: 5}
REFUSAL_REASONS = ("unauthorized", "not_found", "method_not_allowed", "too_large", "body_timeout")


def error_body(status: int, message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


async def send_json(send, status: int, message: str, kind: str,
                    extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = error_body(status, message, kind)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *(extra_headers or [])]
    if status in RETRY_AFTER_S:
        headers.append((b"retry-after", str(RETRY_AFTER_S[status]).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    pass


def _content_length(headers) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class FrontDoor:
    """ASGI middleware; see the module doc. `on_refused(reason)` counts a refusal (reason in REFUSAL_REASONS)."""

    def __init__(self, app, keys: KeyCheck, metrics_token: KeyCheck | None = None, max_body_bytes: int = 4 << 20,
                 body_timeout_s: float = 15.0, on_refused: Callable[[str], None] | None = None,
                 open_paths: frozenset[str] = OPEN_PATHS):
        self.app = app
        self.open_paths = open_paths
        self.keys = keys
        self.metrics_token = metrics_token
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.on_refused = on_refused

    def _refused(self, reason: str) -> None:
        if self.on_refused is not None:
            try:
                self.on_refused(reason)
            except Exception:  # counting must never break answering
                pass

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        headers = scope.get("headers", [])
        if path in self.open_paths:
            await self.app(scope, receive, _with_retry_after(send))
            return
        if path == METRICS_PATH:
            if self.metrics_token and not self.metrics_token.accepts(bearer_token(headers)):
                self._refused("unauthorized")
                await send_json(send, 401, "/metrics of this bento needs its metrics token: "
                                "`Authorization: Bearer TOKEN` (PACKAGER_METRICS_TOKEN).", "authentication_error",
                                [(b"www-authenticate", b"Bearer")])
                return
            await self.app(scope, receive, send)
            return
        if self.keys and not self.keys.accepts(bearer_token(headers)):
            self._refused("unauthorized")
            has = bearer_token(headers) is not None
            await send_json(send, 401, ("The API key sent (`Authorization: Bearer KEY`) is not valid for this bento."
                                        if has else "This bento needs an API key: send `Authorization: Bearer KEY`.")
                            + " Keys are set where the bento runs (PACKAGER_API_KEYS or PACKAGER_API_KEYS_FILE).",
                            "authentication_error", [(b"www-authenticate", b"Bearer")])
            return
        allowed = ROUTES.get(path)
        if allowed is None:
            self._refused("not_found")
            await send_json(send, 404, f"No route {path[:200]!r} here. This bento serves POST /v1/chat/completions, "
                            "POST /v1/completions and GET /v1/models.", "not_found_error")
            return
        if method not in allowed:
            self._refused("method_not_allowed")
            await send_json(send, 405, f"{method} is not allowed on {path}; use {' or '.join(allowed)}.",
                            "invalid_request_error", [(b"allow", ", ".join(allowed).encode())])
            return
        if path in INFERENCE_ROUTES:
            declared = _content_length(headers)
            if declared is not None and declared > self.max_body_bytes:
                self._refused("too_large")
                await self._too_large(send, declared)
                return
            try:
                with anyio.fail_after(self.body_timeout_s):
                    body = await self._read_body(receive)
            except TimeoutError:
                self._refused("body_timeout")
                await send_json(send, 408, f"The request body did not arrive within {self.body_timeout_s:g} s.",
                                "invalid_request_error", [(b"connection", b"close")])
                return
            except _TooLarge:
                self._refused("too_large")
                await self._too_large(send, None)
                return
            except _Gone:
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, _with_retry_after(send))

    async def _too_large(self, send, declared: int | None) -> None:
        size = f" ({declared} bytes)" if declared is not None else ""
        await send_json(send, 413, f"The request body{size} is larger than this bento's limit of "
                        f"{self.max_body_bytes} bytes (bento arg max_body_bytes).", "invalid_request_error",
                        [(b"connection", b"close")])

    async def _read_body(self, receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _Gone
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not msg.get("more_body"):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that hands the already-read body over once, then waits on the real one (disconnects)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_retry_after(send):
    async def wrapped(msg) -> None:
        if msg["type"] == "http.response.start" and msg.get("status") in RETRY_AFTER_S:
            hdrs = list(msg.get("headers") or [])
            if not any(k.lower() == b"retry-after" for k, _ in hdrs):
                hdrs.append((b"retry-after", str(RETRY_AFTER_S[msg["status"]]).encode()))
                msg = {**msg, "headers": hdrs}
        await send(msg)

    return wrapped


def install(make: Callable[[Any], Any]) -> None:
    """Put `make(app)` in front of every middleware of the BentoML service app built in this process.

    BentoML adds a service's own middlewares inside its metrics, tracing, access-log and concurrency
    middlewares, so a request they refuse would still be counted under its raw path; this wraps the list
    BentoML builds (`ServiceAppFactory.middlewares`, bentoml 1.4) with the front door first instead.
    """
    from _bentoml_impl.server.app import ServiceAppFactory
    from starlette.middleware import Middleware

    prop: Any = ServiceAppFactory.middlewares
    if getattr(prop, "packager_front_door", False):
        return
    original = prop.fget

    def middlewares(self) -> list:
        return [Middleware(_build, make=make), *original(self)]

    setattr(ServiceAppFactory, "middlewares", _Marked(middlewares))


class _Marked(property):
    packager_front_door = True


def _build(app: Any, make: Callable[[Any], Any]) -> Any:
    """Starlette builds a middleware as `factory(app, **options)`."""
    return make(app)
