"""The bento's /v1 relay (packager.serve.gateway) under bad input, overload and a backend that breaks off,
in-process against small fake backends (the same faults against the real bento are in
tests/integration/test_reliability_api.py and test_reliability_faults.py)."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from packager.serve.gateway import Gateway
from packager.serve.metrics import ServiceMetrics

LABELS = {"model": "m", "registry_version": "1", "backend": "vllm", "hardware": "cpu"}


@pytest.fixture
def anyio_backend():
    return "asyncio"


def slow_backend(events: int, gap_s: float) -> Starlette:
    """Streams `events` content events `gap_s` apart; refuses bodies that are not JSON objects with 400."""

    async def chat(request: Request):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return JSONResponse({"error": {"message": "invalid JSON body", "code": 400}}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": {"message": "body must be an object", "code": 400}}, status_code=400)

        async def gen():
            for i in range(events):
                await asyncio.sleep(gap_s)
                yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": f" t{i}"}}]}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def make(transport: httpx.AsyncBaseTransport, concurrency: int = 4):
    registry = CollectorRegistry()
    gw = Gateway("http://backend", concurrency=concurrency, transport=transport,
                 metrics_factory=lambda: ServiceMetrics(LABELS, usd_per_hour=None, registry=registry))
    gw.open()
    outer = Starlette()
    outer.mount("/v1", gw.app)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=outer, raise_app_exceptions=False),
                               base_url="http://bento", timeout=30)
    return gw, client, registry


def count(registry, outcome: str) -> float:
    return registry.get_sample_value("packager_requests_total", {**LABELS, "outcome": outcome}) or 0.0


@pytest.mark.anyio
async def test_burst_beyond_the_limit_is_refused_at_once_and_admitted_streams_complete():
    gw, client, registry = make(httpx.ASGITransport(app=slow_backend(events=5, gap_s=0.1)), concurrency=4)

    async def one():
        t0 = time.perf_counter()
        r = await client.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": []})
        return r.status_code, time.perf_counter() - t0, r.text

    async with client:
        res = await asyncio.gather(*[one() for _ in range(24)])
    ok = [r for r in res if r[0] == 200]
    refused = [r for r in res if r[0] == 429]
    assert len(ok) == 4 and len(refused) == 20
    assert all(r[2].rstrip().endswith("data: [DONE]") for r in ok)
    assert max(r[1] for r in refused) < min(r[1] for r in ok)  # refused before any admitted stream ended
    assert all("rate_limit_exceeded" in r[2] for r in refused)
    assert count(registry, "rejected") == 20 and count(registry, "success") == 4
    assert gw.in_flight == 0


class _BreaksOff(httpx.AsyncByteStream):
    """A backend stream that sends two events and then loses its connection (the backend died)."""

    async def __aiter__(self):
        yield b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
        yield b'data: {"choices":[{"index":0,"delta":{"content":" Paris"}}]}\n\n'
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    async def aclose(self):
        pass


@pytest.mark.anyio
async def test_backend_breaking_off_mid_stream_ends_the_callers_stream_without_done():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_BreaksOff())

    gw, client, registry = make(httpx.MockTransport(handler))
    async with client:
        r = await asyncio.wait_for(client.post("/v1/chat/completions", json={"model": "m", "stream": True,
                                                                              "messages": []}), 10)
    assert r.status_code == 200  # the stream had started
    assert " Paris" in r.text and "[DONE]" not in r.text  # what arrived is passed on; the end marker is not faked
    assert count(registry, "server_error") == 1 and count(registry, "success") == 0
    assert gw.in_flight == 0


@pytest.mark.anyio
async def test_backend_unreachable_is_503_with_a_message():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    gw, client, registry = make(httpx.MockTransport(refuse))
    async with client:
        r = await client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 503 and "backend is not answering" in r.json()["error"]["message"]
    assert gw.in_flight == 0


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b'{"model": ', b"\xff\xfe\x00", b"[1, 2]", b""], ids=["truncated", "not-utf8",
                                                                                      "list", "empty"])
async def test_invalid_bodies_reach_the_backend_unchanged_and_its_4xx_comes_back(body):
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(400, json={"error": {"message": "bad body", "code": 400}})

    gw, client, registry = make(httpx.MockTransport(handler))
    async with client:
        r = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "bad body"
    assert seen == [body]
    assert count(registry, "client_error") == 1 and gw.in_flight == 0


@pytest.mark.anyio
async def test_deeply_nested_json_is_relayed_not_a_500():
    """json.loads raises RecursionError (not ValueError) on deep nesting; the relay answered 500 before."""
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(400, json={"error": {"message": "too deeply nested", "code": 400}})

    gw, client, _ = make(httpx.MockTransport(handler))
    body = b'{"a":' * 5000 + b"1" + b"}" * 5000
    async with client:
        r = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert gw.in_flight == 0
    assert r.status_code == 400, r.text[:300]
