"""The /v1 relay against an in-process fake backend that answers like vLLM's OpenAI server (SSE events,
role-only first chunk, usage-only final chunk when stream_options.include_usage is set)."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from fakes.streaming_asgi import StreamingASGITransport

from packager.serve.gateway import Gateway, StreamObserver, outcome_of_status
from packager.serve.metrics import OUTCOMES, ServiceMetrics

LABELS = {"model": "m", "registry_version": "3", "backend": "vllm", "hardware": "cpu"}
WORDS = ["Paris", " is", " the", " capital", "."]


def fake_backend(seen: list[dict]) -> Starlette:
    async def chat(request: Request):
        body = await request.json()
        seen.append(body)
        if body.get("model") != "m":
            return JSONResponse({"error": {"message": "model not found"}}, status_code=404)
        usage = {"prompt_tokens": 7, "completion_tokens": len(WORDS), "total_tokens": 7 + len(WORDS)}
        if not body.get("stream"):
            return JSONResponse({"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)}, "finish_reason": "stop"}],
                "usage": usage})

        async def events():
            yield 'data: {"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
            for w in WORDS:
                await asyncio.sleep(0)
                yield "data: " + json.dumps({"id": "x", "choices": [{"index": 0, "delta": {"content": w}}]},
                                            separators=(",", ":")) + "\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield "data: " + json.dumps({"id": "x", "choices": [], "usage": usage}, separators=(",", ":")) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"])])


@pytest.fixture()
def setup():
    seen: list[dict] = []
    registry = CollectorRegistry()
    gw = Gateway("http://backend", concurrency=4,
                 metrics_factory=lambda: ServiceMetrics(LABELS, usd_per_hour=1.5, registry=registry),
                 transport=httpx.ASGITransport(app=fake_backend(seen)))
    gw.open()
    outer = Starlette()
    outer.mount("/v1", gw.app)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url="http://bento")
    return gw, client, registry, seen


def sample(registry, name, **labels):
    return registry.get_sample_value(name, {**LABELS, **labels})


def events_of(text: str) -> list[str]:
    return [e for e in text.split("\n\n") if e]


async def wait_until(condition, timeout_s: float = 5.0, every_s: float = 0.01) -> None:
    """Return as soon as condition() holds, checking every `every_s`; the deadline only guards against a
    hang (what happened is asserted by the caller afterwards, not here)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition still false after {timeout_s} s")
        await asyncio.sleep(every_s)


@pytest.mark.anyio
async def test_stream_relays_every_event_and_counts_tokens(setup):
    gw, client, registry, seen = setup
    r = await client.post("/v1/chat/completions", json={"model": "m", "stream": True,
                                                         "messages": [{"role": "user", "content": "Capital?"}]})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    evs = events_of(r.text)
    # role chunk + 5 words + [DONE]; the usage-only event the relay asked for is not passed on
    assert len(evs) == 7 and evs[-1] == "data: [DONE]"
    assert "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in evs[:-1]) == "Paris is the capital."
    assert not any('"usage"' in e for e in evs)
    assert seen[-1]["stream_options"] == {"include_usage": True}
    assert sample(registry, "packager_requests_total", outcome="success") == 1
    assert sample(registry, "packager_output_tokens_total") == 5
    assert sample(registry, "packager_input_tokens_total") == 7
    assert sample(registry, "packager_ttft_seconds_count") == 1
    assert sample(registry, "packager_tpot_seconds_count") == 1
    assert sample(registry, "packager_e2e_seconds_count") == 1
    assert sample(registry, "packager_usd_per_hour") == 1.5
    assert gw.in_flight == 0


@pytest.mark.anyio
async def test_stream_keeps_usage_event_when_the_caller_asked(setup):
    _, client, registry, seen = setup
    r = await client.post("/v1/chat/completions", json={
        "model": "m", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Capital?"}]})
    evs = events_of(r.text)
    usage_events = [json.loads(e[6:]) for e in evs if '"usage"' in e]
    assert usage_events and usage_events[0]["usage"]["completion_tokens"] == 5
    assert sample(registry, "packager_output_tokens_total") == 5


@pytest.mark.anyio
async def test_non_stream_passes_body_and_reads_usage(setup):
    _, client, registry, seen = setup
    r = await client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "?"}]})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Paris is the capital."
    assert "stream_options" not in seen[-1]
    assert sample(registry, "packager_output_tokens_total") == 5
    assert sample(registry, "packager_input_tokens_total") == 7
    assert sample(registry, "packager_e2e_seconds_count") == 1
    assert sample(registry, "packager_ttft_seconds_count") == 0  # not observable without a stream


@pytest.mark.anyio
async def test_backend_4xx_is_a_client_error_and_passes_through(setup):
    _, client, registry, _ = setup
    r = await client.post("/v1/chat/completions", json={"model": "other", "messages": []})
    assert r.status_code == 404 and r.json()["error"]["message"] == "model not found"
    assert sample(registry, "packager_requests_total", outcome="client_error") == 1
    assert sample(registry, "packager_e2e_seconds_count") == 0


@pytest.mark.anyio
async def test_other_v1_paths_are_relayed_unobserved(setup):
    _, client, registry, _ = setup
    r = await client.get("/v1/models")
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "m"
    assert sample(registry, "packager_requests_total", outcome="success") == 0


@pytest.mark.anyio
async def test_over_the_concurrency_limit_is_429_and_counted(setup):
    gw, client, registry, _ = setup
    gw.in_flight = gw.concurrency  # as if 4 requests were streaming
    r = await client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 429 and "4 of this replica's 4 inference slots" in r.json()["error"]["message"]
    assert sample(registry, "packager_requests_total", outcome="rejected") == 1
    assert gw.in_flight == gw.concurrency


def _unpriced_gateway(backend) -> tuple[Gateway, CollectorRegistry, Starlette]:
    """A gateway (no price) in front of the mock `backend` handler, mounted at /v1 of an outer app."""
    registry = CollectorRegistry()
    gw = Gateway("http://backend", concurrency=2, transport=httpx.MockTransport(backend),
                 metrics_factory=lambda: ServiceMetrics(LABELS, usd_per_hour=None, registry=registry))
    gw.open()
    outer = Starlette()
    outer.mount("/v1", gw.app)
    return gw, registry, outer


def _client(outer: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url="http://bento")


@pytest.mark.anyio
async def test_backend_down_is_503_and_a_server_error():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    gw, registry, outer = _unpriced_gateway(refuse)
    async with _client(outer) as client:
        r = await client.post("/v1/completions", json={"model": "m", "prompt": "x"})
    assert r.status_code == 503 and "ConnectError" in r.json()["error"]["message"]
    assert sample(registry, "packager_requests_total", outcome="server_error") == 1
    assert registry.get_sample_value("packager_usd_per_hour", LABELS) is None  # no price, no gauge
    assert gw.in_flight == 0


@pytest.mark.anyio
async def test_a_connection_the_backend_closed_while_idle_is_retried_once_and_only_once():
    """A kept-alive connection the backend closed (its own keep-alive timeout) fails the send with
    RemoteProtocolError before any answer: the gateway sends the request once more; twice is a 503."""
    from packager.serve.gateway import BACKEND_KEEPALIVE_S

    calls: list[bytes] = []
    failures = {"left": 1}

    def backend(request):
        calls.append(request.read())
        if failures["left"]:
            failures["left"] -= 1
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(200, json={"choices": [{"index": 0, "text": "ok"}],
                                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    gw, registry, outer = _unpriced_gateway(backend)
    async with _client(outer) as client:
        r = await client.post("/v1/completions", json={"model": "m", "prompt": "x"})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "ok"
        assert len(calls) == 2 and calls[0] == calls[1] and b'"prompt"' in calls[0]  # the same body, sent again
        failures["left"] = 2
        r = await client.post("/v1/completions", json={"model": "m", "prompt": "x"})
    assert r.status_code == 503 and "RemoteProtocolError" in r.json()["error"]["message"]
    assert len(calls) == 4  # one retry, not more
    assert sample(registry, "packager_requests_total", outcome="success") == 1
    assert sample(registry, "packager_requests_total", outcome="server_error") == 1
    assert gw.in_flight == 0 and 0 < BACKEND_KEEPALIVE_S < 5


def test_observer_handles_events_split_across_chunks():
    t = iter([0.0, 0.25, 9.0])
    obs = StreamObserver(t0=0.0, strip_usage_event=True, clock=lambda: next(t))
    stream = (b'data: {"choices":[{"index":0,"text":""}]}\n\n'
              b'data: {"choices":[{"index":0,"text":"Hel"}]}\n\n'
              b'data: {"choices":[{"index":0,"text":"lo"}]}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
              b"data: [DONE]\n\n")
    out = b""
    for i in range(0, len(stream), 7):  # 7-byte pieces: every event arrives in parts
        out += obs.feed(stream[i:i + 7])
    out += obs.flush()
    assert out == stream.replace(
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n', b"")
    assert obs.ttft_s == 0.0  # the clock's first reading, taken at the first non-empty text
    assert obs.input_tokens == 3 and obs.output_tokens == 2
    assert not obs.error


def test_observer_without_usage_counts_content_events_and_sees_errors():
    obs = StreamObserver(t0=0.0, strip_usage_event=False, clock=lambda: 1.0)
    obs.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"choices":[{"delta":{"content":"b"}}]}\n\n')
    obs.feed(b'data: {"error":{"message":"boom","code":500}}\n\n')
    assert obs.output_tokens == 2 and obs.input_tokens is None
    assert obs.error


@pytest.mark.parametrize("status,outcome", [(200, "success"), (400, "client_error"), (404, "client_error"),
                                            (429, "rejected"), (500, "server_error"), (503, "server_error")])
def test_outcome_of_status(status, outcome):
    assert outcome_of_status(status) == outcome


def slow_backend(first_event_delay_s: float, gap_s: float, n: int, closed: list[bool]) -> Starlette:
    async def chat(request: Request):
        await request.body()

        async def events():
            try:
                await asyncio.sleep(first_event_delay_s)
                for i in range(n):
                    yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}) + "\n\n"
                    await asyncio.sleep(gap_s)
                yield "data: [DONE]\n\n"
            finally:
                closed.append(True)

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


async def call_asgi(app, body: dict, disconnect_after_chunks: int | None = None, disconnect_after_done: bool = False):
    """Drive an ASGI app like a server would; optionally the client goes away after N body chunks, or as soon
    as it has read `data: [DONE]`."""
    sent: list[dict] = []
    gone = asyncio.Event()
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(msg):
        sent.append(msg)
        chunks = [m for m in sent if m["type"] == "http.response.body"]
        if disconnect_after_chunks is not None and len(chunks) >= disconnect_after_chunks:
            gone.set()
        if disconnect_after_done and b"data: [DONE]" in msg.get("body", b""):
            gone.set()

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "scheme": "http", "server": ("bento", 80)}
    await app(scope, receive, send)
    return sent


def gateway_for(backend: Starlette, registry) -> Starlette:
    gw = Gateway("http://backend", concurrency=4, transport=StreamingASGITransport(backend),
                 metrics_factory=lambda: ServiceMetrics(LABELS, usd_per_hour=None, registry=registry))
    gw.open()
    outer = Starlette()
    outer.mount("/v1", gw.app)
    return outer


@pytest.mark.anyio
async def test_caller_going_away_cancels_the_backend_stream():
    registry, closed = CollectorRegistry(), []
    backend = slow_backend(0.0, 0.05, 200, closed)
    app = gateway_for(backend, registry)
    sent = await asyncio.wait_for(call_asgi(app, {"model": "m", "stream": True}, disconnect_after_chunks=1), 30)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    # the relay cancels the backend's task; its generator's `finally` runs when that task next runs
    await wait_until(lambda: closed)
    assert closed == [True]  # the backend's generator was closed (once): vLLM would abort the request
    assert len([m for m in sent if m["type"] == "http.response.body"]) < 10
    assert sample(registry, "packager_requests_total", outcome="cancelled") == 1
    assert sample(registry, "packager_requests_total", outcome="success") == 0


@pytest.mark.anyio
async def test_no_first_token_within_traffic_timeout_is_504_and_counted_as_timeout():
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    registry, closed = CollectorRegistry(), []
    app = TimeoutMiddleware(gateway_for(slow_backend(2.0, 0.0, 3, closed), registry), timeout=0.2)
    sent = await asyncio.wait_for(call_asgi(app, {"model": "m", "stream": True}), 30)
    assert sent[0]["status"] == 504
    # TimeoutMiddleware answers first, then the cancelled relay records its outcome (every outcome's counter
    # exists from the start at 0, so wait for any count, then check it is exactly one timeout)
    await wait_until(lambda: sum(sample(registry, "packager_requests_total", outcome=o) or 0 for o in OUTCOMES) > 0)
    assert {o: sample(registry, "packager_requests_total", outcome=o) for o in OUTCOMES} == {
        o: (1 if o == "timeout" else 0) for o in OUTCOMES}


@pytest.mark.anyio
async def test_lifespan_opens_and_closes_the_client_and_creates_the_metrics():
    registry = CollectorRegistry()
    gw = Gateway("http://backend", concurrency=1,
                 metrics_factory=lambda: ServiceMetrics(LABELS, usd_per_hour=2.0, registry=registry))
    async with gw.app.router.lifespan_context(gw.app):
        assert gw.client is not None and gw.metrics is not None
        assert registry.get_sample_value("packager_usd_per_hour", LABELS) == 2.0
    assert gw.client is None


@pytest.mark.anyio
async def test_caller_hanging_up_right_after_done_is_a_success_not_a_cancel():
    """locust and most SDKs close the connection as soon as they read [DONE], often before the backend has
    closed its side: the answer was delivered whole and must count as a success with its tokens."""
    registry, closed = CollectorRegistry(), []

    async def chat(request: Request):
        await request.body()

        async def events():
            try:
                for i in range(5):
                    yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}) + "\n\n"
                yield "data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}) + "\n\n"
                yield "data: [DONE]\n\n"
                await asyncio.sleep(2.0)  # the backend is slow to close its side of the stream
            finally:
                closed.append(True)

        return StreamingResponse(events(), media_type="text/event-stream")

    app = gateway_for(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]), registry)
    sent = await asyncio.wait_for(call_asgi(app, {"model": "m", "stream": True}, disconnect_after_done=True), 30)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert body.count(b"data: {") == 5 and body.rstrip().endswith(b"data: [DONE]")  # usage stripped (not asked)
    assert sample(registry, "packager_requests_total", outcome="success") == 1
    assert sample(registry, "packager_requests_total", outcome="cancelled") == 0
    assert sample(registry, "packager_output_tokens_total") == 5
