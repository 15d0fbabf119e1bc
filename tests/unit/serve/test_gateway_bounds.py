"""Bounds of one inference request in the /v1 gateway: how much work it is (units), max_tokens default and
limit, admission against the replica's concurrency, unknown /v1 paths, and the per-stream time cap."""
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

from packager.serve.bounds import RequestLimits, prepare_inference
from packager.serve.gateway import Gateway
from packager.serve.metrics import OUTCOMES, ServiceMetrics

LABELS = {"model": "m", "registry_version": "3", "backend": "vllm", "hardware": "cpu"}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
NO_LIMITS = RequestLimits(max_tokens_default=None, max_tokens_limit=None, max_stream_s=None)


def enc(obj) -> bytes:
    return json.dumps(obj).encode()


# --- prepare_inference: units -------------------------------------------------------------------------------

@pytest.mark.parametrize("req,units,text", [
    ({"messages": []}, 1, "n=1"),
    ({"messages": [], "n": 3}, 3, "n=3"),
    ({"messages": [], "n": 2, "best_of": 5}, 5, "n=5"),
    ({"messages": [], "n": 6, "best_of": 2}, 6, "n=6"),
    ({"messages": [], "n": None}, 1, "n=1"),
    ({"messages": [], "n": 0}, 1, "n=1"),
    ({"messages": [], "n": -4}, 1, "n=1"),
    ({"messages": [], "n": True}, 1, "n=1"),
])
def test_chat_units_are_n_or_best_of(req, units, text):
    p = prepare_inference(enc(req), CHAT, NO_LIMITS)
    assert (p.units, p.units_text, p.problem) == (units, text, None)


@pytest.mark.parametrize("prompt,n,units,text", [
    ("one prompt", 1, 1, "n=1"),
    (["a", "b", "c"], 1, 3, "n=1 x 3 prompts"),
    (["a", "b", "c"], 2, 6, "n=2 x 3 prompts"),
    ([1, 2, 3, 4], 1, 1, "n=1"),  # a flat list of token ids is one prompt
    ([1, 2, 3, 4], 3, 3, "n=3"),
    ([[1, 2], [3], [4, 5, 6]], 1, 3, "n=1 x 3 prompts"),  # a list of token-id lists: several prompts
    ([[1, 2], [3]], 2, 4, "n=2 x 2 prompts"),
    (["only"], 1, 1, "n=1"),
    ([], 1, 1, "n=1"),
])
def test_completions_units_are_n_times_prompts(prompt, n, units, text):
    p = prepare_inference(enc({"model": "m", "prompt": prompt, "n": n}), COMPLETIONS, NO_LIMITS)
    assert (p.units, p.units_text) == (units, text)


def test_completions_best_of_times_prompts():
    p = prepare_inference(enc({"prompt": ["a", "b"], "n": 1, "best_of": 3}), COMPLETIONS, NO_LIMITS)
    assert (p.units, p.units_text) == (6, "n=3 x 2 prompts")


def test_a_prompt_list_on_chat_is_not_counted_as_prompts():
    p = prepare_inference(enc({"prompt": ["a", "b", "c"], "messages": []}), CHAT, NO_LIMITS)
    assert p.units == 1


@pytest.mark.parametrize("n", [3.0, "3"])
def test_units_count_n_the_backend_will_coerce(n):
    assert prepare_inference(enc({"messages": [], "n": n}), CHAT, NO_LIMITS).units == 3


# --- prepare_inference: max_tokens ----------------------------------------------------------------------

def test_default_max_tokens_is_injected_when_absent():
    p = prepare_inference(enc({"model": "m", "messages": []}), CHAT, RequestLimits(max_tokens_default=256))
    assert json.loads(p.body) == {"model": "m", "messages": [], "max_tokens": 256}
    assert p.problem is None and p.stream is False


def test_default_max_tokens_is_injected_when_null():
    p = prepare_inference(enc({"messages": [], "max_tokens": None}), CHAT, RequestLimits(max_tokens_default=64))
    assert json.loads(p.body)["max_tokens"] == 64


def test_the_default_limits_inject_1024():
    p = prepare_inference(enc({"prompt": "x"}), COMPLETIONS, RequestLimits())
    assert json.loads(p.body)["max_tokens"] == 1024


@pytest.mark.parametrize("req", [{"messages": [], "max_tokens": 50}, {"messages": [], "max_completion_tokens": 50},
                                 {"messages": [], "max_tokens": None, "max_completion_tokens": 50}])
def test_given_max_tokens_or_max_completion_tokens_is_left_alone(req):
    body = enc(req)
    p = prepare_inference(body, CHAT, RequestLimits(max_tokens_default=256))
    assert p.body is body and p.problem is None  # relayed byte for byte: no default added


def test_no_default_leaves_the_body_unchanged():
    body = enc({"messages": []})
    assert prepare_inference(body, CHAT, RequestLimits(max_tokens_default=None)).body is body


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_above_the_limit_is_a_problem_naming_the_field_and_the_limit(field):
    limits = RequestLimits(max_tokens_limit=100)
    p = prepare_inference(enc({"messages": [], field: 101}), CHAT, limits)
    assert p.problem == f"{field}=101 is above this bento's limit of 100 (bento arg max_tokens_limit)."
    ok = prepare_inference(enc({"messages": [], field: 100}), CHAT, limits)
    assert ok.problem is None


def test_limit_is_checked_on_both_fields():
    p = prepare_inference(enc({"messages": [], "max_tokens": 10, "max_completion_tokens": 5000}), CHAT,
                          RequestLimits(max_tokens_limit=100))
    assert p.problem is not None and p.problem.startswith("max_completion_tokens=5000 ")


def test_default_above_the_limit_is_not_checked_against_it():
    """The injected default is the operator's own value; only what the caller sends is checked."""
    p = prepare_inference(enc({"messages": []}), CHAT, RequestLimits(max_tokens_default=500, max_tokens_limit=100))
    assert p.problem is None and json.loads(p.body)["max_tokens"] == 500


@pytest.mark.parametrize("value", [5000.0, "5000"])
def test_limit_also_bounds_values_the_backend_will_coerce(value):
    p = prepare_inference(enc({"messages": [], "max_tokens": value}), CHAT, RequestLimits(max_tokens_limit=100))
    assert p.problem is not None


# --- prepare_inference: streams and non-JSON ---------------------------------------------------------------

def test_stream_asks_for_usage_and_strips_it_later():
    p = prepare_inference(enc({"messages": [], "stream": True, "max_tokens": 5}), CHAT, NO_LIMITS)
    assert p.stream is True and p.strip_usage is True
    assert json.loads(p.body) == {"messages": [], "stream": True, "max_tokens": 5,
                                  "stream_options": {"include_usage": True}}


def test_stream_keeps_other_stream_options():
    p = prepare_inference(enc({"messages": [], "stream": True, "stream_options": {"continuous_usage_stats": True}}),
                          CHAT, NO_LIMITS)
    assert json.loads(p.body)["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}
    assert p.strip_usage is True


def test_stream_that_asked_for_usage_is_not_stripped():
    body = enc({"messages": [], "stream": True, "stream_options": {"include_usage": True}})
    p = prepare_inference(body, CHAT, NO_LIMITS)
    assert p.stream is True and p.strip_usage is False and p.body is body


def test_non_stream_gets_no_stream_options():
    p = prepare_inference(enc({"messages": [], "stream": False}), CHAT, RequestLimits(max_tokens_default=8))
    assert p.stream is False and "stream_options" not in json.loads(p.body)


@pytest.mark.parametrize("body", [b"not json", b"", b"[1, 2, 3]", b'"a string"', b"null", b"{\"unterminated",
                                  b"[" * 100_000, b"\xff\xfe"])
def test_non_object_body_passes_through_unchanged(body):
    p = prepare_inference(body, CHAT, RequestLimits(max_tokens_default=10, max_tokens_limit=5))
    assert p.body is body
    assert (p.units, p.stream, p.strip_usage, p.problem) == (1, False, False, None)


# --- the gateway: admission, unknown paths, stream cap ---------------------------------------------------------

def sample(registry, name, **labels):
    return registry.get_sample_value(name, {**LABELS, **labels})


def outcomes(registry) -> dict[str, float]:
    return {o: sample(registry, "packager_requests_total", outcome=o) for o in OUTCOMES}


def only(outcome: str, count: int = 1) -> dict[str, float]:
    return {o: (count if o == outcome else 0) for o in OUTCOMES}


def recording_backend(seen: list[dict], gw_ref: list[Gateway]) -> Starlette:
    """Answers like an OpenAI server; records each request body and the gateway's in_flight while it runs."""
    async def answer(request: Request):
        body = await request.json()
        seen.append({"path": request.url.path, "body": body, "in_flight": gw_ref[0].in_flight})
        return JSONResponse({"id": "x", "choices": [{"index": 0, "text": "ok"}],
                             "usage": {"prompt_tokens": 2, "completion_tokens": 1}})

    return Starlette(routes=[Route(CHAT, answer, methods=["POST"]), Route(COMPLETIONS, answer, methods=["POST"]),
                             Route("/{path:path}", answer, methods=["GET", "POST"])])


def build() -> tuple[Gateway, Starlette, CollectorRegistry, list[dict]]:
    seen: list[dict] = []
    registry = CollectorRegistry()
    ref: list[Gateway] = []
    gw = Gateway("http://backend", concurrency=4,
                 metrics_factory=lambda: ServiceMetrics(LABELS, usd_per_hour=None, registry=registry),
                 transport=httpx.ASGITransport(app=recording_backend(seen, ref)),
                 limits=RequestLimits(max_tokens_default=32, max_tokens_limit=1000))
    ref.append(gw)
    gw.open()
    outer = Starlette()
    outer.mount("/v1", gw.app)
    return gw, outer, registry, seen


@pytest.fixture()
def setup():
    gw, outer, registry, seen = build()
    return gw, httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url="http://bento"), registry, seen


@pytest.fixture()
def lenient():
    """A client that gets an app's exception as the 500 a server would send, instead of raising it."""
    gw, outer, registry, seen = build()
    transport = httpx.ASGITransport(app=outer, raise_app_exceptions=False)
    return gw, httpx.AsyncClient(transport=transport, base_url="http://bento"), registry, seen


@pytest.mark.anyio
async def test_a_request_holds_its_units_while_in_flight_and_gives_them_back(setup):
    gw, client, registry, seen = setup
    r = await client.post(COMPLETIONS, json={"model": "m", "prompt": ["a", "b"], "n": 2})
    assert r.status_code == 200
    assert seen[0]["in_flight"] == 4  # n=2 x 2 prompts held while the backend worked
    assert seen[0]["body"]["max_tokens"] == 32  # the default reached the backend
    assert gw.in_flight == 0
    assert outcomes(registry) == only("success")


@pytest.mark.anyio
async def test_more_units_than_the_concurrency_is_400_asking_to_split(setup):
    gw, client, registry, seen = setup
    r = await client.post(CHAT, json={"model": "m", "messages": [], "n": 5})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert "asks for 5 completions at once (n=5)" in err["message"]
    assert "more than the 4 this replica runs in flight" in err["message"]
    assert "Split it into smaller requests" in err["message"]
    assert seen == [] and gw.in_flight == 0
    assert outcomes(registry) == only("client_error")


@pytest.mark.anyio
async def test_prompt_list_times_n_over_the_concurrency_is_400(setup):
    gw, client, _, seen = setup
    r = await client.post(COMPLETIONS, json={"model": "m", "prompt": ["a", "b", "c"], "n": 2})
    assert r.status_code == 400
    assert "asks for 6 completions at once (n=2 x 3 prompts)" in r.json()["error"]["message"]
    assert seen == [] and gw.in_flight == 0


@pytest.mark.anyio
async def test_units_that_do_not_fit_beside_those_in_flight_are_429(setup):
    gw, client, registry, seen = setup
    gw.in_flight = 2  # as if two requests were running
    r = await client.post(CHAT, json={"model": "m", "messages": [], "n": 3})
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["type"] == "rate_limit_exceeded"
    assert "2 of this replica's 4 inference slots are in use and this request needs 3" in err["message"]
    assert seen == [] and gw.in_flight == 2
    assert outcomes(registry) == only("rejected")
    # exactly filling the free slots is admitted
    r = await client.post(CHAT, json={"model": "m", "messages": [], "n": 2})
    assert r.status_code == 200 and seen[0]["in_flight"] == 4 and gw.in_flight == 2


@pytest.mark.anyio
async def test_max_tokens_over_the_limit_is_400_before_the_backend(setup):
    gw, client, registry, seen = setup
    r = await client.post(CHAT, json={"model": "m", "messages": [], "max_tokens": 1001})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("max_tokens=1001 is above this bento's limit of 1000")
    assert seen == [] and gw.in_flight == 0
    assert outcomes(registry) == only("client_error")


@pytest.mark.anyio
@pytest.mark.parametrize("method,path", [("POST", "/v1/responses"), ("GET", "/v1/foo/bar"), ("POST", "/v1/embeddings"),
                                         ("DELETE", "/v1/models")])
async def test_unknown_v1_paths_are_404_without_reaching_the_backend(lenient, method, path):
    gw, client, registry, seen = lenient
    r = await client.request(method, path, content=b"{}" if method == "POST" else None)
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["type"] == "not_found_error" and path in err["message"]
    assert seen == [] and gw.in_flight == 0
    assert outcomes(registry) == only("success", 0)


@pytest.mark.anyio
async def test_unknown_v1_paths_never_reach_the_backend(lenient):
    """Nothing unknown is relayed, and no slot is taken."""
    gw, client, registry, seen = lenient
    for method, path in [("POST", "/v1/responses"), ("GET", "/v1/foo/bar"), ("POST", "/v1/embeddings")]:
        r = await client.request(method, path, content=b"{}" if method == "POST" else None)
        assert r.status_code >= 400
    assert seen == [] and gw.in_flight == 0
    assert outcomes(registry) == only("success", 0)


def stalling_backend(events_before_stall: int, closed: list[bool]) -> Starlette:
    async def chat(request: Request):
        await request.body()

        async def events():
            try:
                for i in range(events_before_stall):
                    yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}) + "\n\n"
                await asyncio.sleep(30)  # the backend hangs mid-answer
                yield "data: [DONE]\n\n"
            finally:
                closed.append(True)

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route(CHAT, chat, methods=["POST"])])


def capped_gateway(backend: Starlette, registry, max_stream_s: float) -> tuple[Gateway, Starlette]:
    gw = Gateway("http://backend", concurrency=4, transport=StreamingASGITransport(backend),
                 metrics_factory=lambda: ServiceMetrics(LABELS, usd_per_hour=None, registry=registry),
                 limits=RequestLimits(max_stream_s=max_stream_s))
    gw.open()
    outer = Starlette()
    outer.mount("/v1", gw.app)
    return gw, outer


@pytest.mark.anyio
async def test_a_stream_running_past_max_stream_s_is_ended_with_an_error_event_and_done():
    registry, closed = CollectorRegistry(), []
    gw, app = capped_gateway(stalling_backend(1, closed), registry, max_stream_s=0.3)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bento") as client:
        r = await asyncio.wait_for(client.post(CHAT, json={"model": "m", "stream": True, "messages": []}), 5)
    elapsed = loop.time() - t0
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert len(events) == 3
    assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == "t0"
    err = json.loads(events[1][6:])["error"]
    assert err["type"] == "timeout" and err["code"] == 504
    assert "limit of 0.3 s per stream" in err["message"] and "max_stream_s" in err["message"]
    assert events[2] == "data: [DONE]"
    assert 0.25 < elapsed < 2.0
    assert outcomes(registry) == only("timeout")
    assert gw.in_flight == 0
    for _ in range(100):  # the backend's stream is closed: its task is cancelled, its `finally` runs soon after
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed == [True]


@pytest.mark.anyio
async def test_a_stream_that_sent_nothing_by_max_stream_s_is_504():
    registry, closed = CollectorRegistry(), []
    gw, app = capped_gateway(stalling_backend(0, closed), registry, max_stream_s=0.3)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bento") as client:
        r = await asyncio.wait_for(client.post(CHAT, json={"model": "m", "stream": True, "messages": []}), 5)
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "timeout"
    assert outcomes(registry) == only("timeout") and gw.in_flight == 0


@pytest.mark.anyio
async def test_a_stream_within_max_stream_s_is_not_cut():
    registry = CollectorRegistry()

    async def chat(request: Request):
        await request.body()

        async def events():
            for i in range(3):
                yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    gw, app = capped_gateway(Starlette(routes=[Route(CHAT, chat, methods=["POST"])]), registry, max_stream_s=0.3)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bento") as client:
        r = await asyncio.wait_for(client.post(CHAT, json={"model": "m", "stream": True, "messages": []}), 5)
    events = [e for e in r.text.split("\n\n") if e]
    assert r.status_code == 200 and len(events) == 4 and events[-1] == "data: [DONE]"
    assert not any('"error"' in e for e in events)
    assert outcomes(registry) == only("success") and gw.in_flight == 0


@pytest.mark.parametrize("value,stream", [("false", False), ("true", True), (0, False), (1, True), (True, True)])
def test_stream_is_read_as_the_backend_reads_it(value, stream):
    p = prepare_inference(enc({"messages": [], "stream": value}), CHAT, NO_LIMITS)
    assert p.stream is stream and p.strip_usage is stream


def test_completions_get_the_default_even_with_max_completion_tokens():
    """/v1/completions reads only max_tokens (the backend ignores max_completion_tokens there)."""
    p = prepare_inference(enc({"prompt": "hi", "max_completion_tokens": 5}), "/v1/completions",
                          RequestLimits(max_tokens_default=7, max_tokens_limit=10))
    assert json.loads(p.body)["max_tokens"] == 7
