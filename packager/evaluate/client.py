"""A small synchronous client for OpenAI-compatible endpoints (vLLM, the bento, llama.cpp), with retries."""
from __future__ import annotations

import time
from typing import Any

import httpx

from packager.core.access import http_options, unauthorized_hint
from packager.errors import ServerError


class OpenAIClient:
    def __init__(self, base_url: str, timeout_s: float = 120.0, retries: int = 2):
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        self.retries = retries
        self.has_tokenize = True  # False once the endpoint said it has no /tokenize route (a bento, llama.cpp)
        self.http = httpx.Client(timeout=timeout_s, **http_options(),
                                 limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    def close(self) -> None:
        self.http.close()

    def model_id(self) -> str:
        try:
            r = self.http.get(f"{self.base_url}/v1/models")
            r.raise_for_status()
            data = r.json()["data"]
        except httpx.HTTPStatusError as e:
            raise ServerError(f"{self.base_url}/v1/models answered HTTP {e.response.status_code}."
                              + (unauthorized_hint(e.response.status_code)
                                 or " Is this an OpenAI-compatible endpoint?")) from None
        except (httpx.HTTPError, KeyError, ValueError) as e:
            raise ServerError(f"{self.base_url}/v1/models did not answer with a model list ({e}); "
                              "is this an OpenAI-compatible endpoint?") from None
        if not data:
            raise ServerError(f"{self.base_url}/v1/models lists no model.")
        return data[0]["id"]

    def max_model_len(self) -> int | None:
        """The served model's context length from /v1/models (vLLM gives max_model_len); None when not said."""
        try:
            r = self.http.get(f"{self.base_url}/v1/models")
            data = r.json().get("data") or []
            n = data[0].get("max_model_len") if data else None
            return int(n) if n else None
        except (httpx.HTTPError, ValueError, TypeError, AttributeError, IndexError):
            return None

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                r = self.http.post(f"{self.base_url}{path}", json=body)
                if r.status_code in (429, 502, 503, 504) and attempt < self.retries:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                if r.status_code >= 400:
                    raise ServerError(f"POST {path} answered HTTP {r.status_code}: {r.text[:300]}")
                return r.json()
            except httpx.TransportError as e:
                last = e
                time.sleep(0.5 * (attempt + 1))
        raise ServerError(f"POST {self.base_url}{path} failed after {self.retries + 1} tries: {last}")

    def tokenize(self, model: str, *, messages: list[dict] | None = None, prompt: str | None = None,
                 add_special_tokens: bool = True) -> list[int] | None:
        """Token ids through vLLM's /tokenize; None where the endpoint has no such route (asked once: a 404 or 405
        is remembered, so hundreds of corpus prompts do not each ask again)."""
        if not self.has_tokenize:
            return None
        body: dict[str, Any] = {"model": model}
        if messages is not None:
            body.update(messages=messages, add_generation_prompt=True)
        else:
            body.update(prompt=prompt, add_special_tokens=add_special_tokens)
        try:
            r = self.http.post(f"{self.base_url}/tokenize", json=body)
        except httpx.HTTPError:
            return None
        if r.status_code in (404, 405):
            self.has_tokenize = False
        if r.status_code != 200:
            return None
        return r.json().get("tokens")
