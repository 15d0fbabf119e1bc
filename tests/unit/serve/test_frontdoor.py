"""The bento's front door (ASGI middleware): API keys, the metrics token, the route table, body limits and
Retry-After, driven through httpx's in-process ASGI transport or raw ASGI calls."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from packager.serve.auth import KeyCheck
from packager.serve.frontdoor import REFUSAL_REASONS, FrontDoor

KEY = "key-one-aaaaaaaaaaaa"
KEY2 = "key-two-bbbbbbbbbbbb"
METRICS_TOKEN = "metrics-token-cccccccc"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = "/v1/chat/completions"


class Inner:
    """A tiny ASGI app behind the front door: records what reached it and answers `status` with JSON."""

    def __init__(self, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None):
        self.status = status
        self.headers = headers or []
        self.calls: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        assert scope["type"] == "http"
        chunks, messages = [], 0
        if scope["method"] in ("POST", "PUT", "PATCH"):
            while True:
                msg = await receive()
                messages += 1
                assert msg["type"] == "http.request"
                chunks.append(msg.get("body", b""))
                if not msg.get("more_body"):
                    break
        self.calls.append({"path": scope["path"], "method": scope["method"], "body": b"".join(chunks),
                           "messages": messages, "headers": dict(scope["headers"])})
        body = json.dumps({"ok": True, "path": scope["path"]}).encode()
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json"), *self.headers]})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def door(inner: Inner, keys=(KEY,), metrics_token: str | None = None, refused: list[str] | None = None,
         **kwargs) -> FrontDoor:
    return FrontDoor(inner, KeyCheck(list(keys)), KeyCheck([metrics_token]) if metrics_token else None,
                     on_refused=refused.append if refused is not None else None, **kwargs)


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bento")


CHAT_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


# --- API keys --------------------------------------------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize("headers,message", [
    ({}, "This bento needs an API key"),
    ({"Authorization": "Bearer wrong-key-dddddddddd"}, "The API key sent"),
    ({"Authorization": f"Bearer {KEY[:-1]}"}, "The API key sent"),
    ({"Authorization": f"Basic {KEY}"}, "This bento needs an API key"),
    ({"X-Api-Key": KEY}, "This bento needs an API key"),
])
async def test_without_a_valid_key_is_401_and_the_inner_app_is_never_called(headers, message):
    inner, refused = Inner(), []
    async with client_for(door(inner, refused=refused)) as c:
        r = await c.post(CHAT, json=CHAT_BODY, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.headers["content-type"] == "application/json"
    assert "retry-after" not in r.headers
    err = r.json()["error"]
    assert err["type"] == "authentication_error" and err["code"] == 401
    assert err["message"].startswith(message)
    assert KEY not in r.text  # never echo a key
    assert inner.calls == []
    assert refused == ["unauthorized"]


@pytest.mark.anyio
async def test_unknown_paths_and_wrong_methods_without_a_key_are_401_not_404():
    """Without a key nothing about the route table is revealed."""
    inner, refused = Inner(), []
    async with client_for(door(inner, refused=refused)) as c:
        statuses = [(await c.get("/docs")).status_code, (await c.get(CHAT)).status_code,
                    (await c.get("/v1/models")).status_code]
    assert statuses == [401, 401, 401]
    assert refused == ["unauthorized"] * 3 and inner.calls == []


@pytest.mark.anyio
async def test_with_a_right_key_the_inner_app_gets_the_exact_body():
    inner, refused = Inner(), []
    raw = json.dumps(CHAT_BODY, separators=(",", ":")).encode() + b"  \n"
    async with client_for(door(inner, keys=(KEY, KEY2), refused=refused)) as c:
        r1 = await c.post(CHAT, content=raw, headers={**AUTH, "content-type": "application/json"})
        r2 = await c.post("/v1/completions", content=b'{"prompt":"x"}', headers={"authorization": f"bearer {KEY2}"})
    assert (r1.status_code, r2.status_code) == (200, 200)
    assert r1.json() == {"ok": True, "path": CHAT}
    assert [(c["path"], c["method"], c["body"]) for c in inner.calls] == [
        (CHAT, "POST", raw), ("/v1/completions", "POST", b'{"prompt":"x"}')]
    assert inner.calls[0]["messages"] == 1  # the body read by the front door is handed over in one message
    assert inner.calls[0]["headers"][b"authorization"] == f"Bearer {KEY}".encode()
    assert refused == []


@pytest.mark.anyio
async def test_models_get_and_head_pass_with_a_key():
    inner = Inner()
    async with client_for(door(inner)) as c:
        r_get = await c.get("/v1/models", headers=AUTH)
        r_head = await c.head("/v1/models", headers=AUTH)
    assert (r_get.status_code, r_head.status_code) == (200, 200)
    assert [(c["path"], c["method"]) for c in inner.calls] == [("/v1/models", "GET"), ("/v1/models", "HEAD")]


@pytest.mark.anyio
async def test_without_configured_keys_no_key_is_needed():
    inner, refused = Inner(), []
    async with client_for(door(inner, keys=(), refused=refused)) as c:
        r = await c.post(CHAT, json=CHAT_BODY)
        r_any = await c.post(CHAT, json=CHAT_BODY, headers={"Authorization": "Bearer whatever"})
        r_404 = await c.get("/docs")
    assert (r.status_code, r_any.status_code, r_404.status_code) == (200, 200, 404)
    assert [c["path"] for c in inner.calls] == [CHAT, CHAT]
    assert refused == ["not_found"]


# --- open paths and /metrics ------------------------------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/livez", "/readyz"])
async def test_probes_are_open_without_a_key(path):
    inner, refused = Inner(), []
    async with client_for(door(inner, metrics_token=METRICS_TOKEN, refused=refused)) as c:
        r = await c.get(path)
    assert r.status_code == 200 and r.json()["path"] == path
    assert [c["path"] for c in inner.calls] == [path] and refused == []


@pytest.mark.anyio
async def test_metrics_is_open_without_a_metrics_token():
    inner, refused = Inner(), []
    async with client_for(door(inner, refused=refused)) as c:
        r = await c.get("/metrics")
    assert r.status_code == 200 and [c["path"] for c in inner.calls] == ["/metrics"] and refused == []


@pytest.mark.anyio
async def test_metrics_with_an_empty_token_check_is_open():
    inner = Inner()
    async with client_for(FrontDoor(inner, KeyCheck([KEY]), KeyCheck([]))) as c:
        r = await c.get("/metrics")
    assert r.status_code == 200 and len(inner.calls) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-token-xxxx"}, AUTH])
async def test_metrics_needs_its_token_when_one_is_set(headers):
    """Neither no token, a wrong one, nor an API key opens /metrics once PACKAGER_METRICS_TOKEN is set."""
    inner, refused = Inner(), []
    async with client_for(door(inner, metrics_token=METRICS_TOKEN, refused=refused)) as c:
        r = await c.get("/metrics", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"
    assert "PACKAGER_METRICS_TOKEN" in r.json()["error"]["message"]
    assert inner.calls == [] and refused == ["unauthorized"]


@pytest.mark.anyio
async def test_metrics_with_its_token_is_200():
    inner, refused = Inner(), []
    async with client_for(door(inner, metrics_token=METRICS_TOKEN, refused=refused)) as c:
        r = await c.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200 and [c["path"] for c in inner.calls] == ["/metrics"] and refused == []


# --- route table ----------------------------------------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize("method,path", [
    ("POST", "/v1/responses"), ("POST", "/tokenize"), ("POST", "/invocations"), ("GET", "/docs"),
    ("GET", "/"), ("GET", "/openapi.json"), ("POST", "/v1/embeddings"), ("GET", "/v1/models/m"),
    ("POST", "/v1/chat/completions/"), ("GET", "/random/a/b/c"),
])
async def test_other_paths_are_404_with_a_valid_key(method, path):
    inner, refused = Inner(), []
    async with client_for(door(inner, refused=refused)) as c:
        r = await c.request(method, path, headers=AUTH, content=b"{}" if method == "POST" else None)
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["type"] == "not_found_error" and err["code"] == 404
    assert repr(path) in err["message"]
    assert inner.calls == [] and refused == ["not_found"]


@pytest.mark.anyio
async def test_a_very_long_path_is_cut_in_the_404_message():
    inner = Inner()
    async with client_for(door(inner)) as c:
        r = await c.get("/x" * 1000, headers=AUTH)
    assert r.status_code == 404 and len(r.json()["error"]["message"]) < 400


@pytest.mark.anyio
@pytest.mark.parametrize("method,path,allow", [
    ("GET", "/v1/chat/completions", "POST"), ("PUT", "/v1/completions", "POST"),
    ("DELETE", "/v1/chat/completions", "POST"), ("POST", "/v1/models", "GET, HEAD"),
])
async def test_a_known_path_with_another_method_is_405_with_allow(method, path, allow):
    inner, refused = Inner(), []
    async with client_for(door(inner, refused=refused)) as c:
        r = await c.request(method, path, headers=AUTH)
    assert r.status_code == 405
    assert r.headers["allow"] == allow
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["message"].startswith(f"{method} is not allowed on {path}")
    assert inner.calls == [] and refused == ["method_not_allowed"]


# --- body limits ----------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_body_at_the_limit_passes_and_one_byte_more_is_413_by_content_length():
    inner, refused = Inner(), []
    async with client_for(door(inner, refused=refused, max_body_bytes=100)) as c:
        ok = await c.post(CHAT, content=b"a" * 100, headers=AUTH)
        big = await c.post(CHAT, content=b"a" * 101, headers=AUTH)
    assert ok.status_code == 200 and inner.calls[0]["body"] == b"a" * 100
    assert big.status_code == 413
    assert big.headers["connection"] == "close"
    err = big.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert "(101 bytes)" in err["message"] and "limit of 100 bytes" in err["message"]
    assert len(inner.calls) == 1 and refused == ["too_large"]


async def call(app, scope_extra: dict, receive, path: str = CHAT, method: str = "POST",
               headers: list[tuple[bytes, bytes]] | None = None) -> list[dict]:
    """Drive an ASGI app with a hand-made scope; return what it sent."""
    sent: list[dict] = []

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
             "headers": headers if headers is not None else [(b"authorization", f"Bearer {KEY}".encode())],
             "scheme": "http", "server": ("bento", 80), **scope_extra}
    await app(scope, receive, send)
    return sent


def status_of(sent: list[dict]) -> int:
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def body_of(sent: list[dict]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.anyio
async def test_declared_content_length_over_the_limit_is_413_without_reading_the_body():
    inner, refused, reads = Inner(), [], []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x", "more_body": False}

    sent = await call(door(inner, refused=refused, max_body_bytes=1000), {}, receive,
                      headers=[(b"authorization", f"Bearer {KEY}".encode()), (b"content-length", b"5000000")])
    assert status_of(sent) == 413
    assert b"(5000000 bytes)" in body_of(sent)
    assert reads == [] and inner.calls == [] and refused == ["too_large"]


@pytest.mark.anyio
async def test_chunked_body_over_the_limit_is_413():
    inner, refused = Inner(), []

    async def chunks():
        for _ in range(10):
            yield b"x" * 30

    async with client_for(door(inner, refused=refused, max_body_bytes=100)) as c:
        r = await c.post(CHAT, content=chunks(), headers=AUTH)
    assert r.status_code == 413
    assert "content-length" not in {k.lower() for k in r.request.headers}  # really sent without a length
    err = r.json()["error"]
    assert "limit of 100 bytes" in err["message"] and "bytes)" not in err["message"].split("limit")[0]
    assert inner.calls == [] and refused == ["too_large"]


@pytest.mark.anyio
async def test_chunked_body_under_the_limit_reaches_the_inner_app_whole():
    inner = Inner()

    async def chunks():
        for part in (b'{"model":', b'"m",', b'"prompt":"x"}'):
            yield part

    async with client_for(door(inner, max_body_bytes=100)) as c:
        r = await c.post("/v1/completions", content=chunks(), headers=AUTH)
    assert r.status_code == 200
    assert inner.calls[0]["body"] == b'{"model":"m","prompt":"x"}' and inner.calls[0]["messages"] == 1


@pytest.mark.anyio
async def test_a_stalled_body_is_408_after_body_timeout():
    inner, refused = Inner(), []
    calls = 0

    async def receive():
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b'{"model": "m", ', "more_body": True}
        await asyncio.Event().wait()  # the rest never comes
        raise AssertionError("unreachable")

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    sent = await asyncio.wait_for(call(door(inner, refused=refused, body_timeout_s=0.2), {}, receive), 5)
    elapsed = loop.time() - t0
    assert status_of(sent) == 408
    start = sent[0]
    assert (b"connection", b"close") in start["headers"]
    err = json.loads(body_of(sent))["error"]
    assert err["code"] == 408 and "within 0.2 s" in err["message"]
    assert 0.15 < elapsed < 2.0
    assert inner.calls == [] and refused == ["body_timeout"]


@pytest.mark.anyio
async def test_a_client_gone_while_sending_the_body_gets_no_answer():
    inner, refused = Inner(), []
    msgs = iter([{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}])

    async def receive():
        return next(msgs)

    sent = await call(door(inner, refused=refused), {}, receive)
    assert sent == [] and inner.calls == [] and refused == []


@pytest.mark.anyio
async def test_models_is_not_body_limited():
    """Only inference routes are read by the front door; GET /v1/models reaches the app untouched."""
    inner = Inner()
    async with client_for(door(inner, max_body_bytes=1)) as c:
        r = await c.get("/v1/models", headers={**AUTH, "content-length": "0"})
    assert r.status_code == 200 and len(inner.calls) == 1


# --- Retry-After ----------------------------------------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize("status,retry_after", [(429, "1"), (503, "5")])
async def test_429_and_503_from_the_inner_app_get_retry_after(status, retry_after):
    inner = Inner(status=status)
    async with client_for(door(inner)) as c:
        r = await c.post(CHAT, json=CHAT_BODY, headers=AUTH)
    assert r.status_code == status
    assert r.headers.get_list("retry-after") == [retry_after]
    assert r.json()["ok"] is True  # the inner app's body passes unchanged


@pytest.mark.anyio
@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_set_by_the_inner_app_is_kept_and_not_duplicated(status):
    inner = Inner(status=status, headers=[(b"Retry-After", b"30")])
    async with client_for(door(inner)) as c:
        r = await c.post(CHAT, json=CHAT_BODY, headers=AUTH)
    assert r.status_code == status
    assert r.headers.get_list("retry-after") == ["30"]


@pytest.mark.anyio
@pytest.mark.parametrize("status", [200, 400, 500, 504])
async def test_other_statuses_get_no_retry_after(status):
    inner = Inner(status=status)
    async with client_for(door(inner)) as c:
        r = await c.post(CHAT, json=CHAT_BODY, headers=AUTH)
    assert r.status_code == status and "retry-after" not in r.headers


@pytest.mark.anyio
async def test_readyz_503_gets_retry_after():
    inner = Inner(status=503)
    async with client_for(door(inner)) as c:
        r = await c.get("/readyz")
    assert r.status_code == 503 and r.headers.get_list("retry-after") == ["5"]


@pytest.mark.anyio
async def test_models_429_gets_retry_after():
    inner = Inner(status=429)
    async with client_for(door(inner)) as c:
        r = await c.get("/v1/models", headers=AUTH)
    assert r.status_code == 429 and r.headers.get_list("retry-after") == ["1"]


# --- refusals, other scopes --------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_on_refused_gets_one_reason_per_refusal_in_order():
    inner, refused = Inner(), []

    async def chunks():
        yield b"x" * 80
        yield b"x" * 80

    async with client_for(door(inner, refused=refused, max_body_bytes=100)) as c:
        await c.post(CHAT, json=CHAT_BODY)  # unauthorized
        await c.get("/docs", headers=AUTH)  # not_found
        await c.get(CHAT, headers=AUTH)  # method_not_allowed
        await c.post(CHAT, content=b"x" * 101, headers=AUTH)  # too_large (declared)
        await c.post(CHAT, content=chunks(), headers=AUTH)  # too_large (counted)
        await c.post(CHAT, content=b"{}", headers=AUTH)  # passes
        await c.get("/livez")  # open
    assert refused == ["unauthorized", "not_found", "method_not_allowed", "too_large", "too_large"]
    assert set(refused) <= set(REFUSAL_REASONS)
    assert [c["body"] for c in inner.calls] == [b"{}", b""]


@pytest.mark.anyio
async def test_a_failing_on_refused_does_not_break_the_answer():
    def boom(reason):
        raise RuntimeError("counter broke")

    inner = Inner()
    async with client_for(FrontDoor(inner, KeyCheck([KEY]), on_refused=boom)) as c:
        r = await c.get("/docs")
    assert r.status_code == 401


@pytest.mark.anyio
async def test_websockets_are_closed():
    inner, sent = Inner(), []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "websocket", "path": CHAT, "headers": [(b"authorization", f"Bearer {KEY}".encode())]}
    await door(inner)(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}] and inner.calls == []


@pytest.mark.anyio
async def test_lifespan_scope_passes_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    async def receive():
        return {"type": "lifespan.startup"}

    async def send(msg):
        pass

    await FrontDoor(app, KeyCheck([KEY]))({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]
