"""A bento safe to expose, checked against the real one (session fixture `bento_server`: `packager build` +
`bentoml serve` + vLLM CPU): API keys, one gate for every route, bounded requests, bounded metrics.

The file sorts after every test module that starts a bento in packager's default BentoML store (the GGUF one):
`bentoml serve` empties the store's Prometheus multiprocess folder when it starts, which freezes the metrics of a
bento already running from the same store (the session bento's packager_* series stopped moving in CI when this
file ran first and started the session bento early).

Figures (status codes seen, /metrics size before and after 10,000 random paths, the work counted for `n` and
prompt lists, the time to refuse a slow body) go to benchmarks/results/reliability.json, section "security", when
benchmarks/bench_reliability.py runs it (conftest.record_reliability).
"""
from __future__ import annotations

import json
import random
import socket
import string
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import metric_value, record_reliability

pytestmark = pytest.mark.slow

CHAT, COMPLETIONS, MODELS = "/v1/chat/completions", "/v1/completions", "/v1/models"
_seen: dict[str, Any] = {}


def _chat(model: str, **over: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, **over}


def _err(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert isinstance(body.get("error"), dict) and body["error"].get("message"), r.text[:300]
    return body["error"]


def test_every_route_but_the_probes_needs_the_key(bento_server):
    base, model = bento_server.base_url, bento_server.model
    codes: dict[str, int] = {}
    for name, headers in (("no key", {}), ("wrong key", {"Authorization": "Bearer " + "x" * 43}),
                          ("not bearer", {"Authorization": "Basic " + bento_server.api_key})):
        for method, path, body in (("POST", CHAT, _chat(model)), ("POST", COMPLETIONS, {"model": model,
                                   "prompt": "hi", "max_tokens": 2}), ("GET", MODELS, None)):
            r = httpx.request(method, base + path, json=body, headers=headers, timeout=30)
            codes[f"{method} {path} ({name})"] = r.status_code
            assert r.status_code == 401, (name, path, r.status_code, r.text[:300])
            assert r.headers["www-authenticate"] == "Bearer"
            err = _err(r)
            assert err["type"] == "authentication_error" and "Authorization: Bearer" in err["message"]
    # the key itself is never echoed back
    r = httpx.post(base + CHAT, json=_chat(model), headers={"Authorization": "Bearer " + "y" * 43}, timeout=30)
    assert "y" * 43 not in r.text
    # the probes and the metrics page stay open (no PACKAGER_METRICS_TOKEN on this bento)
    for path in ("/livez", "/readyz", "/metrics"):
        r = httpx.get(base + path, timeout=30)
        codes[f"GET {path} (no key)"] = r.status_code
        assert r.status_code == 200, (path, r.text[:300])
    # and the right key works on every route
    r = httpx.post(base + CHAT, json=_chat(model), headers=bento_server.headers, timeout=120)
    codes[f"POST {CHAT} (key)"] = r.status_code
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    r = httpx.get(base + MODELS, headers=bento_server.headers, timeout=30)
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == [model]
    _seen["auth_codes"] = codes


def test_only_the_served_routes_reach_the_backend(bento_server):
    """Everything but chat completions, completions and models is answered by the bento itself (404 or 405),
    never proxied to vLLM, which serves all of these."""
    base, h = bento_server.base_url, bento_server.headers
    codes: dict[str, int] = {}
    for method, path in (("POST", "/v1/responses"), ("POST", "/invocations"), ("POST", "/tokenize"),
                         ("POST", "/detokenize"), ("POST", "/v1/embeddings"), ("GET", "/version"),
                         ("GET", "/docs"), ("GET", "/"), ("GET", "/openapi.json"), ("GET", "/metrics/x"),
                         ("POST", "/v1/completions/render"), ("GET", "/v1/models/" + bento_server.model)):
        r = httpx.request(method, base + path, headers=h, json={"model": bento_server.model, "prompt": "hi"},
                          timeout=30)
        codes[f"{method} {path}"] = r.status_code
        assert r.status_code == 404, (method, path, r.status_code, r.text[:300])
        assert _err(r)["type"] == "not_found_error"
    for method, path in (("GET", CHAT), ("PUT", COMPLETIONS), ("DELETE", MODELS)):
        r = httpx.request(method, base + path, headers=h, timeout=30)
        codes[f"{method} {path}"] = r.status_code
        assert r.status_code == 405 and r.headers["allow"], (method, path, r.status_code)
    _seen["route_codes"] = codes


def _page_size(base: str) -> tuple[int, int]:
    text = httpx.get(base + "/metrics", timeout=30).text
    return len(text.encode()), text.count("\n")


def test_random_paths_do_not_grow_the_metrics_page(bento_server):
    base = bento_server.base_url
    labels = {"model": bento_server.model, "registry_version": bento_server.registry_version, "backend": "vllm",
              "hardware": bento_server.hardware}
    before_text = httpx.get(base + "/metrics", timeout=30).text
    size0, lines0 = _page_size(base)
    rng = random.Random(16)
    statuses: dict[int, int] = {}
    t0 = time.perf_counter()
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(10_000):
            path = "/" + "/".join("".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(3, 12)))
                                  for _ in range(rng.randint(1, 3)))
            if i % 2:
                path = "/v1" + path
            r = client.get(path, headers=bento_server.headers if i % 4 < 2 else {})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    wall_s = time.perf_counter() - t0
    size1, lines1 = _page_size(base)
    after_text = httpx.get(base + "/metrics", timeout=30).text
    assert set(statuses) == {401, 404}, statuses
    # no new series: the page may differ only by the values of series that already existed
    assert lines1 - lines0 <= 20, (lines0, lines1)
    assert size1 - size0 < 4096, (size0, size1)
    refused = {r: metric_value(after_text, "packager_refused_requests_total", reason=r, **labels)
               - metric_value(before_text, "packager_refused_requests_total", reason=r, **labels)
               for r in ("unauthorized", "not_found")}
    assert refused == {"unauthorized": statuses[401], "not_found": statuses[404]}, (refused, statuses)
    _seen["metrics_cardinality"] = {"random_paths": 10_000, "statuses": {str(k): v for k, v in statuses.items()},
                                    "metrics_bytes_before": size0, "metrics_bytes_after": size1,
                                    "metrics_lines_before": lines0, "metrics_lines_after": lines1,
                                    "wall_time_s": round(wall_s, 1)}


def test_an_oversized_body_is_413_before_it_is_read(bento_server):
    base, h = bento_server.base_url, bento_server.headers
    big = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"a" * (5 << 20) + b'"}]}'
    t0 = time.perf_counter()
    r = httpx.post(base + CHAT, content=big, headers={**h, "content-type": "application/json"}, timeout=60)
    declared_ms = (time.perf_counter() - t0) * 1000
    assert r.status_code == 413, r.text[:300]
    assert "larger than this bento's limit of 4194304 bytes" in _err(r)["message"]

    def chunks():  # no Content-Length: counted while reading
        for _ in range(6):
            yield b"a" * (1 << 20)

    t0 = time.perf_counter()
    r = httpx.post(base + CHAT, content=chunks(), headers={**h, "content-type": "application/json"}, timeout=60)
    chunked_ms = (time.perf_counter() - t0) * 1000
    assert r.status_code == 413, r.text[:300]
    # still serving
    assert httpx.post(base + CHAT, json=_chat(bento_server.model), headers=h, timeout=120).status_code == 200
    _seen["body_limit"] = {"limit_bytes": 4 << 20, "declared_5mib_status": 413, "declared_ms": round(declared_ms, 1),
                           "chunked_6mib_status": 413, "chunked_ms": round(chunked_ms, 1)}


def _raw_slow_post(base: str, key: str, sent: int, declared: int, wait_s: float) -> tuple[bytes, float]:
    """POST with a Content-Length of `declared` bytes, send `sent` of them, then wait for the answer."""
    u = urlsplit(base)
    t0 = time.perf_counter()
    with socket.create_connection((u.hostname, u.port), timeout=wait_s) as s:
        s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {key}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n".encode() + b"{" * sent)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
    return data, time.perf_counter() - t0


def test_a_slow_body_is_refused_and_holds_no_slot(bento_server):
    """The body is read under a time limit (body_timeout_s, 15 s) before any slot is taken: meanwhile the
    bento serves others; then the slow client gets 408."""
    import threading

    result: dict[str, Any] = {}

    def slow():
        result["data"], result["s"] = _raw_slow_post(bento_server.base_url, bento_server.api_key, 10, 1000, 120)

    th = threading.Thread(target=slow)
    th.start()
    try:
        time.sleep(1.0)  # the slow request is in (no timing is asserted: it only has to have started)
        r = httpx.post(bento_server.base_url + CHAT, json=_chat(bento_server.model), headers=bento_server.headers,
                       timeout=120)
        assert r.status_code == 200
    finally:
        th.join(150)
    assert not th.is_alive()
    status_line = result["data"].split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 408"), result["data"][:300]
    _seen["slow_body"] = {"declared_bytes": 1000, "sent_bytes": 10, "status": 408, "body_timeout_s": 15.0,
                          "time_to_refuse_s": round(result["s"], 2)}


def test_work_is_counted_as_n_times_prompts(bento_server):
    base, h, model = bento_server.base_url, bento_server.headers, bento_server.model
    info = httpx.get(base + MODELS, headers=h, timeout=30)
    assert info.status_code == 200
    # n within the limit: that many choices
    r = httpx.post(base + CHAT, json=_chat(model, n=3, temperature=1.0, seed=1), headers=h, timeout=120)
    assert r.status_code == 200 and len(r.json()["choices"]) == 3
    # far beyond any replica's limit: refused with 400 that says why, before the backend works on it
    cases = {"chat n=1000": (CHAT, _chat(model, n=1000), 1000),
             "completions 300 prompts": (COMPLETIONS, {"model": model, "prompt": ["hi"] * 300, "max_tokens": 2}, 300),
             "completions 100 prompts x n=5": (COMPLETIONS, {"model": model, "prompt": ["hi"] * 100, "n": 5,
                                                              "max_tokens": 2}, 500)}
    seen = {}
    for name, (path, body, units) in cases.items():
        t0 = time.perf_counter()
        r = httpx.post(base + path, json=body, headers=h, timeout=120)
        seen[name] = {"status": r.status_code, "units": units, "ms": round((time.perf_counter() - t0) * 1000, 1)}
        assert r.status_code == 400, (name, r.text[:300])
        msg = _err(r)["message"]
        assert f"asks for {units} completions at once" in msg and "Split it" in msg, msg
    _seen["work_accounting"] = seen


def test_max_tokens_has_a_ceiling(bento_server):
    base, h, model = bento_server.base_url, bento_server.headers, bento_server.model
    for key in ("max_tokens", "max_completion_tokens"):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], key: 4096}
        r = httpx.post(base + CHAT, json=body, headers=h, timeout=60)
        assert r.status_code == 400, r.text[:300]
        assert f"{key}=4096 is above this bento's limit of 2048" in _err(r)["message"]
    r = httpx.post(base + COMPLETIONS, json={"model": model, "prompt": "hi", "max_tokens": 2049}, headers=h, timeout=60)
    assert r.status_code == 400
    _seen["max_tokens_limit"] = 2048


def test_security_summary(bento_server):
    """Writes the figures of the tests above (file order) to benchmarks/results/reliability.json."""
    if not _seen:
        pytest.skip("no security test ran in this session")
    record_reliability("security", json.loads(json.dumps(_seen)))
