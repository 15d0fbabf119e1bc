"""The bento's /v1 routes: relay OpenAI requests to the backend and observe each one on the way.

BentoML's own proxy (what `__command__` gives) forwards bytes blindly, so it cannot tell a token from a
header. This small ASGI app, mounted at /v1 with `@bentoml.asgi_app`, relays every /v1 request to the backend
with httpx and, for /v1/chat/completions and /v1/completions, measures:

* TTFT: request received -> first event carrying content (text, content, reasoning or tool calls);
* E2E: request received -> last byte sent; TPOT from both and the token count;
* prompt and generated tokens from the backend's usage report. For streams the relay asks for it
  (`stream_options.include_usage`) and, when the caller did not ask, drops that extra usage-only event, so
  callers see exactly what the backend would have sent them.

Overload is answered, never queued without bound: more than `concurrency` inference requests in flight get
429 here (outcome `rejected`); BentoML's TimeoutMiddleware answers 504 when no response has started within
traffic.timeout, and a stream starts only with its first event, so for streams that is a time-to-first-token
limit (outcome `timeout`). A caller that goes away cancels the backend request (outcome `cancelled`).

Overhead per request: one JSON parse of the request, JSON parses of the events up to the first token and of
the usage event, a substring test per relayed chunk. Measured against the fake OpenAI server on the 2-core
machine, relaying a token stream costs this app about 0.08 ms of CPU per token with httpx; the same relay
with aiohttp (BentoML's own proxy client) cost about 0.05 ms, a possible later change (tests inject httpx
transports today).
"""
from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Callable

import anyio
import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from packager.serve.bounds import Prepared, RequestLimits, prepare_inference
from packager.serve.frontdoor import error_body
from packager.serve.metrics import ServiceMetrics

INFERENCE_PATHS = ("/chat/completions", "/completions")
RELAYED_PATHS = ("/models",)  # relayed as they are, outside the inference limit
BACKEND_KEEPALIVE_S = 2.0  # idle backend connections kept this long (below the backends' own 5 s)
# Hop-by-hop headers (RFC 9110 7.6.1) and those the relay recomputes.
_DROP_REQUEST_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
                                   b"upgrade", b"te", b"trailer", b"proxy-authorization", b"proxy-connection",
                                   b"accept-encoding"})
_DROP_RESPONSE_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                                    "content-encoding", "date", "server"})
_CONTENT_KEYS_DELTA = ("content", "reasoning_content", "reasoning", "tool_calls")


def outcome_of_status(status: int) -> str:
    if status < 400:
        return "success"
    if status == 429:
        return "rejected"
    if status < 500:
        return "client_error"
    return "server_error"


def _has_content(event: dict[str, Any]) -> bool:
    for choice in event.get("choices") or ():
        if choice.get("text"):
            return True
        delta = choice.get("delta") or {}
        if any(delta.get(k) for k in _CONTENT_KEYS_DELTA):
            return True
    return False


class StreamObserver:
    """Watches an OpenAI server-sent-event stream as it is relayed.

    `feed(bytes)` returns the bytes to pass on (only complete events; a partial event waits for the rest);
    `flush()` returns what is left at the end. Parses JSON only up to the first content event and for events
    that carry usage or an error, so the relay stays cheap for long answers.
    """

    def __init__(self, t0: float, strip_usage_event: bool, clock: Callable[[], float] = time.perf_counter):
        self.t0 = t0
        self.clock = clock
        self.strip_usage_event = strip_usage_event
        self._buf = b""
        self.ttft_s: float | None = None
        self.content_events = 0
        self.usage: dict[str, Any] | None = None
        self.error = False
        self.done = False  # the `data: [DONE]` event has been passed on

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        complete, self._buf = buf[: end + 2], buf[end + 2:]
        if b"data: [DONE]" in complete:
            self.done = True
        if self.ttft_s is not None and b'"usage"' not in complete and b'"error"' not in complete:
            # Fast path once the first token is out: count events, pass the bytes on untouched.
            self.content_events += complete.count(b"data: {")
            return complete
        return self._process(complete)

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        if b"data: [DONE]" in rest:
            self.done = True
        return self._process(rest) if rest.strip() else rest

    def _process(self, complete: bytes) -> bytes:
        out: list[bytes] = []
        for raw in complete.split(b"\n\n"):
            if not raw:
                continue
            keep = True
            payload = raw[6:] if raw.startswith(b"data: ") else None
            if payload is not None and payload.startswith(b"{"):
                try:
                    event = json.loads(payload)
                except ValueError:
                    event = None
                if isinstance(event, dict):
                    if "error" in event:
                        self.error = True
                    if event.get("usage"):
                        self.usage = event["usage"]
                        if self.strip_usage_event and not event.get("choices"):
                            keep = False
                    if _has_content(event):
                        self.content_events += 1
                        if self.ttft_s is None:
                            self.ttft_s = self.clock() - self.t0
            if keep:
                out.append(raw + b"\n\n")
        return b"".join(out)

    @property
    def input_tokens(self) -> int | None:
        return (self.usage or {}).get("prompt_tokens")

    @property
    def output_tokens(self) -> int | None:
        if self.usage and self.usage.get("completion_tokens") is not None:
            return self.usage["completion_tokens"]
        return self.content_events or None


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise _Disconnected
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(chunks)


class _Disconnected(Exception):
    pass


class _NotFound:
    """The gateway's answer to any other /v1 path (an ASGI endpoint: a class instance, as Starlette wants)."""

    async def __call__(self, scope, receive, send) -> None:
        await _send_simple(send, *_json_response(404, f"No route /v1{scope.get('path', '')} here.",
                                                 "not_found_error"))


async def _end_capped_stream(send, state: "_RequestState", cap_s: float | None) -> None:
    """A stream that ran past max_stream_s: end it with an error event, or 504 if nothing was sent yet."""
    state.outcome = "timeout"
    state.complete = True
    msg = f"The answer ran longer than this bento's limit of {cap_s:g} s per stream (bento arg max_stream_s)."
    if not state.started:
        state.started = True
        await _send_simple(send, *_json_response(504, msg, "timeout"))
        return
    event = b"data: " + error_body(504, msg, "timeout") + b"\n\ndata: [DONE]\n\n"
    await send({"type": "http.response.body", "body": event, "more_body": False})


def _json_response(status: int, message: str, kind: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = error_body(status, message, kind)
    return status, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], body


class Gateway:
    """The /v1 ASGI app. `app` is what the service mounts; the httpx client lives in its lifespan."""

    def __init__(self, backend_url: str, concurrency: int,
                 metrics_factory: Callable[[], ServiceMetrics] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, limits: RequestLimits | None = None):
        self.backend_url = backend_url.rstrip("/")
        self.concurrency = concurrency
        self.limits = limits or RequestLimits()
        self.in_flight = 0
        self.metrics: ServiceMetrics | None = None
        self._metrics_factory = metrics_factory
        self._transport = transport
        self.client: httpx.AsyncClient | None = None
        routes = [Route(p, _Endpoint(self, observe=True), methods=["POST"]) for p in INFERENCE_PATHS]
        routes += [Route(p, _Endpoint(self, observe=False), methods=["GET", "HEAD"]) for p in RELAYED_PATHS]
        routes.append(Route("/{path:path}", _NotFound(), methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                                                                 "HEAD"]))
        self.app = Starlette(routes=routes, lifespan=self._lifespan)

    def open(self) -> None:
        """Create the client and the metrics (idempotent); the lifespan calls it, tests may too."""
        if self.client is None:
            n = self.concurrency + 32
            self.client = httpx.AsyncClient(
                base_url=self.backend_url, transport=self._transport,
                timeout=httpx.Timeout(None, connect=10.0),
                # idle connections are dropped before the backend's own keep-alive timeout (5 s in llama-server's
                # cpp-httplib and in uvicorn) can close them under a request being sent
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n,
                                    keepalive_expiry=BACKEND_KEEPALIVE_S),
            )
        if self.metrics is None and self._metrics_factory is not None:
            self.metrics = self._metrics_factory()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.open()
        try:
            yield
        finally:
            await self.close()

    def record(self, outcome: str, t0: float, ttft_s: float | None = None, input_tokens: int | None = None,
               output_tokens: int | None = None) -> None:
        if self.metrics is None:
            return
        ok = outcome == "success"
        self.metrics.observe(outcome, e2e_s=(time.perf_counter() - t0) if ok else None,
                             ttft_s=ttft_s if ok else None, input_tokens=input_tokens, output_tokens=output_tokens)

    def refusal(self, prepared: Prepared) -> tuple[str, int, str, str] | None:
        """Why an inference request is not admitted now, as (outcome, status, message, error type), or None."""
        if prepared.problem is not None:
            return "client_error", 400, prepared.problem, "invalid_request_error"
        units = prepared.units
        if units > self.concurrency:
            return ("client_error", 400,
                    f"This request asks for {units} completions at once ({prepared.units_text}), more than the "
                    f"{self.concurrency} this replica runs in flight. Split it into smaller requests.",
                    "invalid_request_error")
        if self.in_flight + units > self.concurrency:
            return ("rejected", 429,
                    f"Too many requests: {self.in_flight} of this replica's {self.concurrency} inference slots are "
                    f"in use and this request needs {units}. Retry later or add replicas.", "rate_limit_exceeded")
        return None

    def count_refused(self, reason: str) -> None:
        """Count a request the front door answered itself (packager_refused_requests_total)."""
        self.open()
        if self.metrics is not None:
            self.metrics.refused[reason].inc()

    async def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
        """GET a backend path (readiness, metrics): (status, body text). Raises httpx.HTTPError."""
        self.open()
        assert self.client is not None
        r = await self.client.get(path, timeout=timeout_s)
        return r.status_code, r.text


class _Endpoint:
    """One ASGI endpoint of the gateway (a class instance, so Starlette hands it the raw ASGI triple)."""

    def __init__(self, gw: Gateway, observe: bool):
        self.gw = gw
        self.observe = observe

    async def __call__(self, scope, receive, send) -> None:
        gw = self.gw
        t0 = time.perf_counter()
        try:
            body = await _read_body(receive)
        except _Disconnected:
            if self.observe:
                gw.record("cancelled", t0)
            return
        prepared = Prepared(body)
        units = 0
        if self.observe:
            prepared = prepare_inference(body, scope.get("path", ""), gw.limits)
            refused = gw.refusal(prepared)
            if refused is not None:
                outcome, status, message, kind = refused
                gw.record(outcome, t0)
                await _send_simple(send, *_json_response(status, message, kind))
                return
            units = prepared.units
            gw.in_flight += units
        state = _RequestState(t0)
        try:
            await self._handle(scope, receive, send, state, prepared)
        except _Disconnected:
            state.outcome = "cancelled"
        except anyio.get_cancelled_exc_class():
            # Cancelled from outside: BentoML's TimeoutMiddleware before the response started (504), else
            # the server shutting down while we stream.
            state.outcome = "timeout" if not state.started else "cancelled"
            raise
        except Exception:
            state.outcome = "server_error"
            if not state.started:
                await _send_simple(send, *_json_response(500, "The bento's relay failed; see the server log.",
                                                         "internal_error"))
            raise
        finally:
            if self.observe:
                gw.in_flight -= units
                obs = state.observer
                gw.record(state.outcome, t0, ttft_s=obs.ttft_s if obs else None,
                          input_tokens=state.input_tokens if obs is None else obs.input_tokens,
                          output_tokens=state.output_tokens if obs is None else obs.output_tokens)

    async def _handle(self, scope, receive, send, state: "_RequestState", prepared: "Prepared") -> None:
        gw = self.gw
        gw.open()
        assert gw.client is not None
        body, stream, strip_usage = prepared.body, prepared.stream, prepared.strip_usage
        path = scope.get("path", "/")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in _DROP_REQUEST_HEADERS]
        request = gw.client.build_request(scope["method"], path, headers=headers, content=body)
        disconnected = False

        async def watch_disconnect(cancel: anyio.CancelScope) -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            if state.done_relayed and not state.complete:
                # The client read `data: [DONE]` and hung up before the backend closed its stream (locust and
                # most SDKs do): the answer was delivered whole, so it counts as it ended, not as cancelled.
                obs = state.observer
                state.outcome = "server_error" if obs is not None and obs.error else "success"
                state.complete = True
                cancel.cancel()
            elif not state.complete:  # after the last byte, servers report a disconnect too
                disconnected = True
                cancel.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect, tg.cancel_scope)
            with anyio.move_on_after(gw.limits.max_stream_s if stream else None) as cap:
                await self._relay(request, stream, strip_usage, send, state)
            if cap.cancelled_caught and not state.complete:
                await _end_capped_stream(send, state, gw.limits.max_stream_s)
            tg.cancel_scope.cancel()
        if disconnected and not state.complete:
            state.outcome = "cancelled"

    async def _relay(self, request: httpx.Request, stream: bool, strip_usage: bool, send,
                     state: "_RequestState") -> None:
        assert self.gw.client is not None
        try:
            try:
                resp = await self.gw.client.send(request, stream=True)
            except httpx.RemoteProtocolError:
                # the backend closed a kept-alive connection as the request went out (its idle timeout; llama-server
                # also drops every connection after its second streamed answer): nothing was answered, so the
                # request is sent once more, on a new connection
                resp = await self.gw.client.send(request, stream=True)
        except httpx.HTTPError as e:
            state.outcome = "server_error"
            state.started = state.complete = True
            await _send_simple(send, *_json_response(
                503, f"The backend is not answering ({type(e).__name__}); it may still be starting or may have "
                     "died. See /readyz and the server log.", "backend_unavailable"))
            return
        try:
            status = resp.status_code
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.items()
                       if k.lower() not in _DROP_RESPONSE_HEADERS]
            if not (stream and status == 200):
                content = await resp.aread()
                state.outcome = outcome_of_status(status)
                if self.observe and status == 200:
                    state.read_usage(content)
                state.started = state.complete = True
                await _send_simple(send, status, headers + [(b"content-length", str(len(content)).encode())],
                                   content)
                return
            state.observer = obs = StreamObserver(state.t0, strip_usage_event=strip_usage)
            try:
                async for chunk in resp.aiter_raw():
                    out = obs.feed(chunk)
                    if not out:
                        continue
                    if not state.started:
                        state.started = True
                        await send({"type": "http.response.start", "status": status, "headers": headers})
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                    if obs.done:  # the client has the whole answer: a disconnect from now on is not a cancel
                        state.done_relayed = True
            except httpx.HTTPError:
                state.outcome = "server_error"
                if state.started:
                    state.complete = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                else:
                    state.started = state.complete = True
                    await _send_simple(send, *_json_response(502, "The backend broke off the stream.",
                                                             "backend_error"))
                return
            tail = obs.flush()
            if not state.started:
                state.started = True
                await send({"type": "http.response.start", "status": status, "headers": headers})
            state.outcome = "server_error" if obs.error else "success"
            state.complete = True
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):  # a capped or abandoned stream still closes its connection
                await resp.aclose()


class _RequestState:
    __slots__ = ("t0", "started", "complete", "outcome", "observer", "input_tokens", "output_tokens", "done_relayed")

    def __init__(self, t0: float):
        self.t0 = t0
        self.started = False  # http.response.start sent
        self.complete = False  # the last body message is being or was sent
        self.done_relayed = False  # a stream's `data: [DONE]` reached the client
        self.outcome = "server_error"
        self.observer: StreamObserver | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None

    def read_usage(self, content: bytes) -> None:
        try:
            usage = json.loads(content).get("usage") or {}
        except (ValueError, AttributeError):
            return
        self.input_tokens = usage.get("prompt_tokens")
        self.output_tokens = usage.get("completion_tokens")


async def _send_simple(send, status: int, headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
