"""OpenAIClient.tokenize: an endpoint without /tokenize is asked once, not once per prompt."""
from __future__ import annotations

import httpx

from packager.evaluate.client import OpenAIClient


def _client(status: int, calls: list[str]) -> OpenAIClient:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if status == 200:
            return httpx.Response(200, json={"tokens": [1, 2, 3], "count": 3})
        return httpx.Response(status, json={"detail": "x"})

    c = OpenAIClient("http://127.0.0.1:9/v1")
    c.http.close()
    c.http = httpx.Client(transport=httpx.MockTransport(handler))
    return c


def test_a_missing_route_is_remembered():
    for status in (404, 405):
        calls: list[str] = []
        c = _client(status, calls)
        assert c.tokenize("m", prompt="a b") is None
        assert c.tokenize("m", messages=[{"role": "user", "content": "hi"}]) is None
        assert calls == ["/tokenize"], status  # asked once
        assert c.has_tokenize is False


def test_a_server_error_is_not_taken_for_a_missing_route():
    calls: list[str] = []
    c = _client(500, calls)
    assert c.tokenize("m", prompt="a") is None and c.tokenize("m", prompt="b") is None
    assert calls == ["/tokenize", "/tokenize"] and c.has_tokenize is True


def test_a_route_that_answers_is_asked_every_time():
    calls: list[str] = []
    c = _client(200, calls)
    assert c.tokenize("m", prompt="a") == [1, 2, 3] and c.tokenize("m", prompt="b") == [1, 2, 3]
    assert len(calls) == 2
