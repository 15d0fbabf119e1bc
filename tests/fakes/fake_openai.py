"""A local OpenAI-compatible fake server with settable latencies, for tests and benchmarks.

Self-contained: it needs only aiohttp and the standard library (it never imports packager), so it can run
in a thread of the test process or as its own process (`python tests/fakes/fake_openai.py --port 0`).

What it serves (loopback only; over HTTPS when given a certificate, see below):

    GET  /health, /ready            200 "ok"
    GET  /v1/models                 {"data": [{"id": <model>, ...}]}
    POST /v1/chat/completions       stream or not; usage in the final chunk when
                                    stream_options.include_usage is true (as vLLM does)
    POST /v1/completions            the same for a plain prompt
    GET  /metrics                   Prometheus text with vLLM-like names (vllm:num_requests_running,
                                    vllm:prompt_tokens_total, vllm:generation_tokens_total,
                                    vllm:time_to_first_token_seconds, vllm:e2e_request_latency_seconds, ...)
    POST /_fake/config              change any setting below at run time (JSON object)
    GET  /_fake/stats               {"requests_total", "in_flight", "max_in_flight_seen", "requests_unauthorized",
                                     "headers_seen", ...}
    POST /_fake/reset               zero the counters

Access checks (off by default; /health, /ready, /readyz and /_fake/* are always exempt):
  * require_api_key: when non-empty, every other route answers 401 {"error": {"message", "type":
    "AuthenticationError"}} unless the request carries `Authorization: Bearer <require_api_key>`;
  * require_header ("Name: value"): when set, those routes answer 400 unless that header has that value.
  Requests refused by these checks are counted in stats' requests_unauthorized (not in requests_total).
  stats' headers_seen: the lower-cased header names (sorted) of the last request to /v1/chat/completions or
  /v1/completions (refused or not), to check what a client sends.

Connections:
  * keepalive_timeout_s (default 75, aiohttp's): the server closes an idle keep-alive connection after this
    long, without telling the client beforehand (no `Connection: close`). It applies only when the server
    starts (changing it through /_fake/config has no effect on a running server).
  * drop_reused_connections: a request that arrives on a connection that already carried one is not answered:
    the server closes that connection (counted in stats' connections_dropped, not in requests_total). To the
    client this is the race of a pooled keep-alive connection that the server closed as the request went out:
    no answer byte ever arrives.
  * HTTPS: FakeOpenAIServer(ssl_context=...) in thread mode, FakeOpenAIServer(certfile=..., keyfile=...) in
    either mode, or `--certfile/--keyfile` on the command line; base_url then starts with https://. The
    helpers configure()/stats()/reset() do not verify the certificate (control calls only). See tls.py for a
    throwaway CA and certificate.

Timing model (all settable):
  * ttft_ms: from the request's arrival to the first content token (plus prefill_ms_per_input_token
    times the prompt length, plus any wait for a free slot when max_concurrent_streams is set);
  * itl_ms: between consecutive content tokens (itl_jitter_ms adds uniform noise in [-j, +j]);
  * output_tokens: tokens generated when the request does not ask for a length. A request's `max_tokens`
    (or `max_completion_tokens`) caps it; `ignore_eos: true` makes it generate exactly max_tokens;
    `min_tokens` raises it (vLLM's semantics);
  * max_concurrent_streams (0 = unlimited): at most this many requests generate at once, the rest queue
    (so latency rises with load, like a real server at capacity);
  * fail_every_n (0 = never): every n-th request is answered with HTTP fail_status (default 500);
  * refuse_above_in_flight (0 = never): a request arriving while this many are in flight (or queued) gets 429
    at once, like a server with a hard concurrency limit: closed-loop load above it misses any SLO, below it
    never sees a refusal, whatever the machine's speed.

Tokenizer: one token per whitespace-separated word of every message's content (prompt_tokens in usage).
Each streamed chunk carries exactly one token (" tok"), like vLLM with its default stream interval.
The first chat chunk carries only the assistant role and empty content, sent at once (like vLLM), so a
client that measures time to first *content* token sees ttft_ms, not the time to the first byte.

Usage from Python:

    from fakes.fake_openai import FakeOpenAIServer   # tests/ is on sys.path under pytest
    with FakeOpenAIServer(ttft_ms=50, itl_ms=10, output_tokens=8) as srv:   # a thread of this process
        httpx.get(srv.base_url + "/v1/models")
    with FakeOpenAIServer(ttft_ms=0, itl_ms=0, mode="process") as srv:      # its own process (own core)
        srv.configure(itl_ms=5)
        srv.stats()["requests_total"]
    tls = make_tls_files(tmp_path)                                          # from fakes.tls
    with FakeOpenAIServer(ssl_context=tls.server_context(), require_api_key="sk-test") as srv:
        httpx.get(srv.base_url + "/v1/models", headers={"Authorization": "Bearer sk-test"}, verify=...)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Any

DEFAULT_MODEL = "fake-model"
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


@dataclass
class FakeSettings:
    model: str = DEFAULT_MODEL
    ttft_ms: float = 20.0
    itl_ms: float = 5.0
    itl_jitter_ms: float = 0.0
    prefill_ms_per_input_token: float = 0.0
    output_tokens: int = 16
    max_concurrent_streams: int = 0
    fail_every_n: int = 0
    fail_status: int = 500
    refuse_above_in_flight: int = 0  # 0 = never; else a request arriving with this many in flight gets 429
    seed: int = 0
    require_api_key: str = ""
    require_header: str = ""  # "Name: value"
    keepalive_timeout_s: float = 75.0  # applies only at start
    drop_reused_connections: bool = False  # close a keep-alive connection when its next request arrives

    def update(self, data: dict[str, Any]) -> None:
        known = {f.name: f.type for f in fields(self)}
        for k in data:
            if k not in known:
                raise ValueError(f"unknown setting {k!r}; known: {', '.join(sorted(known))}")
        new = {k: type(getattr(self, k))(v) for k, v in data.items()}
        header = new.get("require_header", "")
        if header and (":" not in header or not header.split(":", 1)[0].strip()):
            raise ValueError(f"require_header must look like 'Name: value', got {header!r}")
        for k, v in new.items():
            setattr(self, k, v)

    def required_header(self) -> tuple[str, str] | None:
        if not self.require_header:
            return None
        name, value = self.require_header.split(":", 1)
        return name.strip(), value.strip()


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.total += 1
        self.sum += v
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1

    def render(self, name: str, labels: str) -> list[str]:
        out = [f"# TYPE {name} histogram"]
        for b, c in zip(self.buckets, self.counts):
            out.append(f'{name}_bucket{{{labels},le="{b}"}} {c}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.total}')
        out.append(f"{name}_count{{{labels}}} {self.total}")
        out.append(f"{name}_sum{{{labels}}} {self.sum}")
        return out


class _State:
    def __init__(self, settings: FakeSettings):
        self.s = settings
        self.rng = random.Random(settings.seed)
        self.reset()
        self._slots: asyncio.Semaphore | None = None
        self._slots_n = 0

    def reset(self) -> None:
        self.requests_total = 0
        self.requests_by_path: dict[str, int] = {}
        self.requests_unauthorized = 0
        self.connections_dropped = 0
        # by id(), each transport held here: a freed transport's id could be reused by the next connection, which
        # would then be taken for a reused one and dropped
        self.connections_seen: dict[int, object] = {}
        self.headers_seen: list[str] = []
        self.failed_total = 0
        self.in_flight = 0
        self.waiting = 0
        self.max_in_flight_seen = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.success_total = 0
        self.h_ttft = _Histogram(_TTFT_BUCKETS)
        self.h_e2e = _Histogram(_E2E_BUCKETS)
        self.h_itl = _Histogram(_ITL_BUCKETS)
        self.h_queue = _Histogram(_TTFT_BUCKETS)

    def slots(self) -> asyncio.Semaphore | None:
        n = self.s.max_concurrent_streams
        if n <= 0:
            return None
        if self._slots is None or self._slots_n != n:
            self._slots, self._slots_n = asyncio.Semaphore(n), n
        return self._slots


def _count_words(x: Any) -> int:
    if isinstance(x, str):
        return len(x.split())
    if isinstance(x, list):
        n = 0
        for part in x:
            if isinstance(part, dict):
                n += _count_words(part.get("text", ""))
            else:
                n += _count_words(part)
        return n
    return 0


def _output_len(s: FakeSettings, body: dict[str, Any]) -> int:
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    n = s.output_tokens
    if max_tokens is not None:
        max_tokens = int(max_tokens)
        n = max_tokens if body.get("ignore_eos") else min(n, max_tokens)
    min_tokens = body.get("min_tokens")
    if min_tokens:
        n = max(n, int(min_tokens) if max_tokens is None else min(int(min_tokens), max_tokens))
    return max(0, n)


def build_app(settings: FakeSettings | None = None):
    """The aiohttp application. `settings` may be changed later through POST /_fake/config."""
    from aiohttp import web

    st = _State(settings or FakeSettings())

    @web.middleware
    async def access_checks(request, handler):
        path = request.path
        if path in ("/health", "/ready", "/readyz") or path.startswith("/_fake/"):
            return await handler(request)
        if path in ("/v1/chat/completions", "/v1/completions"):
            st.headers_seen = sorted({k.lower() for k in request.headers.keys()})
        key = st.s.require_api_key
        if key:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or token.strip() != key:
                st.requests_unauthorized += 1
                return _error(401, "Incorrect or missing API key (expected 'Authorization: Bearer <key>').",
                              "AuthenticationError")
        required = st.s.required_header()
        if required is not None and request.headers.get(required[0]) != required[1]:
            st.requests_unauthorized += 1
            return _error(400, f"the header {required[0]!r} is missing or has the wrong value")
        return await handler(request)

    app = web.Application(middlewares=[access_checks])

    def _count(request) -> None:
        st.requests_total += 1
        st.requests_by_path[request.path] = st.requests_by_path.get(request.path, 0) + 1

    async def health(request):
        return web.Response(text="ok")

    async def models(request):
        _count(request)
        return web.json_response({"object": "list", "data": [
            {"id": st.s.model, "object": "model", "created": 0, "owned_by": "fake", "max_model_len": 4096}]})

    def _error(status: int, message: str, etype: str = "BadRequestError"):
        return web.json_response({"error": {"message": message, "type": etype, "code": status}}, status=status)

    async def generate(request, chat: bool):
        tr = request.transport
        if st.s.drop_reused_connections and tr is not None:
            if id(tr) in st.connections_seen:  # a second request on this connection: close it, answer nothing
                st.connections_dropped += 1
                tr.close()
                raise asyncio.CancelledError
            st.connections_seen[id(tr)] = tr
        _count(request)
        t_arrive = time.perf_counter()
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "request body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        if body.get("model") not in (None, st.s.model):
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if st.s.fail_every_n and st.requests_by_path[request.path] % st.s.fail_every_n == 0:
            st.failed_total += 1
            return _error(st.s.fail_status, "injected failure", "InternalServerError")
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                return _error(400, "'messages' must be a non-empty list")
            prompt_tokens = sum(_count_words(m.get("content", "")) for m in msgs if isinstance(m, dict))
        else:
            if "prompt" not in body:
                return _error(400, "'prompt' is required")
            prompt_tokens = _count_words(body["prompt"])
        n_out = _output_len(st.s, body)
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
        created = int(time.time())
        model = st.s.model
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n_out, "total_tokens": prompt_tokens + n_out}
        finish = "length" if body.get("max_tokens") is not None and n_out >= int(body["max_tokens"]) else "stop"

        def chunk(delta_text: str | None, finish_reason: str | None = None, role: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {}
                if role:
                    delta["role"] = "assistant"
                if delta_text is not None:
                    delta["content"] = delta_text
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [choice]}
            else:
                choice = {"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": finish_reason}
                obj = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

        def itl_s() -> float:
            j = st.s.itl_jitter_ms
            v = st.s.itl_ms + (st.rng.uniform(-j, j) if j else 0.0)
            return max(0.0, v) / 1000.0

        if st.s.refuse_above_in_flight and st.in_flight + st.waiting >= st.s.refuse_above_in_flight:
            st.failed_total += 1
            return _error(429, "too many requests in flight", "RateLimitError")
        sem = st.slots()
        st.waiting += 1
        resp = None
        try:
            if sem is not None:
                await sem.acquire()
        finally:
            st.waiting -= 1
        st.in_flight += 1
        st.max_in_flight_seen = max(st.max_in_flight_seen, st.in_flight)
        st.h_queue.observe(time.perf_counter() - t_arrive)
        try:
            if stream:
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                await resp.prepare(request)
                if chat:
                    await resp.write(chunk("", role=True))
            ttft_s = (st.s.ttft_ms + st.s.prefill_ms_per_input_token * prompt_tokens) / 1000.0
            # Sleep until arrival + ttft (so a queue wait counts towards it, as on a real server).
            await asyncio.sleep(max(0.0, t_arrive + ttft_s - time.perf_counter()))
            t_first = time.perf_counter()
            st.h_ttft.observe(t_first - t_arrive)
            t_prev = t_first
            for i in range(n_out):
                if i > 0:
                    await asyncio.sleep(itl_s())
                    now = time.perf_counter()
                    st.h_itl.observe(now - t_prev)
                    t_prev = now
                if stream:
                    await resp.write(chunk(" tok"))
            st.prompt_tokens_total += prompt_tokens
            st.generation_tokens_total += n_out
            st.success_total += 1
            st.h_e2e.observe(time.perf_counter() - t_arrive)
            if stream:
                await resp.write(chunk("", finish))
                if include_usage:
                    obj = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                           "created": created, "model": model, "choices": [], "usage": usage}
                    await resp.write(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")
                await resp.write(b"data: [DONE]\n\n")
                await resp.write_eof()
                return resp
            text = " tok" * n_out
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                          "finish_reason": finish}
                obj = {"id": rid, "object": "chat.completion", "created": created, "model": model,
                       "choices": [choice], "usage": usage}
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                obj = {"id": rid, "object": "text_completion", "created": created, "model": model,
                       "choices": [choice], "usage": usage}
            return web.json_response(obj)
        finally:
            st.in_flight -= 1
            if sem is not None:
                sem.release()

    async def chat_completions(request):
        return await generate(request, chat=True)

    async def completions(request):
        return await generate(request, chat=False)

    async def metrics(request):
        labels = f'model_name="{st.s.model}"'
        lines = [
            "# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{{{labels}}} {st.in_flight}",
            "# TYPE vllm:num_requests_waiting gauge", f"vllm:num_requests_waiting{{{labels}}} {st.waiting}",
            "# TYPE vllm:prompt_tokens_total counter", f"vllm:prompt_tokens_total{{{labels}}} {st.prompt_tokens_total}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{labels}}} {st.generation_tokens_total}",
            "# TYPE vllm:request_success_total counter", f"vllm:request_success_total{{{labels}}} {st.success_total}",
            "# TYPE fake:requests_failed_total counter", f"fake:requests_failed_total{{{labels}}} {st.failed_total}",
        ]
        lines += st.h_ttft.render("vllm:time_to_first_token_seconds", labels)
        lines += st.h_itl.render("vllm:inter_token_latency_seconds", labels)
        lines += st.h_e2e.render("vllm:e2e_request_latency_seconds", labels)
        lines += st.h_queue.render("vllm:request_queue_time_seconds", labels)
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def fake_config(request):
        try:
            data = await request.json()
            st.s.update(data)
        except (ValueError, TypeError) as e:
            return _error(400, str(e))
        return web.json_response(asdict(st.s))

    async def fake_stats(request):
        return web.json_response({
            "requests_total": st.requests_total, "requests_by_path": st.requests_by_path,
            "failed_total": st.failed_total, "in_flight": st.in_flight, "waiting": st.waiting,
            "max_in_flight_seen": st.max_in_flight_seen, "prompt_tokens_total": st.prompt_tokens_total,
            "generation_tokens_total": st.generation_tokens_total,
            "requests_unauthorized": st.requests_unauthorized, "headers_seen": st.headers_seen,
            "connections_dropped": st.connections_dropped, "settings": asdict(st.s)})

    async def fake_reset(request):
        st.reset()
        return web.json_response({"ok": True})

    app.router.add_get("/health", health)
    app.router.add_get("/ready", health)
    app.router.add_get("/readyz", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/_fake/config", fake_config)
    app.router.add_get("/_fake/stats", fake_stats)
    app.router.add_post("/_fake/reset", fake_reset)
    return app


async def _serve(settings: FakeSettings, host: str, port: int, started: "threading.Event | None" = None,
                 box: dict | None = None, stop: "asyncio.Event | None" = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
    from aiohttp import web

    runner = web.AppRunner(build_app(settings), access_log=None, handle_signals=False,
                           keepalive_timeout=settings.keepalive_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, ssl_context=ssl_context)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if box is not None:
        box["port"] = bound
    if started is not None:
        started.set()
    else:
        print(json.dumps({"fake_openai_ready": True, "port": bound, "pid": os.getpid()}), flush=True)
    try:
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
    finally:
        await runner.cleanup()


class FakeOpenAIServer:
    """Start the fake on a free loopback port, in a thread (default) or its own process.

    `mode="process"` gives the server its own interpreter (and core), which is what a benchmark of the
    load generator needs; `mode="thread"` starts in a few milliseconds and suits unit tests.
    HTTPS: `ssl_context` (thread mode only) or `certfile`/`keyfile` (PEM paths, either mode).
    """

    def __init__(self, mode: str = "thread", host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None,
                 certfile: str | os.PathLike | None = None, keyfile: str | os.PathLike | None = None,
                 **settings: Any):
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', got {mode!r}")
        if ssl_context is not None and certfile is not None:
            raise ValueError("give either ssl_context or certfile/keyfile, not both")
        if ssl_context is not None and mode == "process":
            raise ValueError("an SSLContext cannot cross into a process: use certfile/keyfile in process mode")
        if keyfile is not None and certfile is None:
            raise ValueError("keyfile needs certfile")
        self.mode = mode
        self.host = host
        self.ssl_context = ssl_context
        self.certfile = os.fspath(certfile) if certfile is not None else None
        self.keyfile = os.fspath(keyfile) if keyfile is not None else None
        self.settings = FakeSettings()
        self.settings.update(settings)
        self.port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path: str | None = None  # process mode: the server's stderr

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None or self.certfile is not None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the fake server is not started")
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else os.getpid()

    def start(self) -> "FakeOpenAIServer":
        if self.mode == "thread":
            started = threading.Event()
            box: dict[str, Any] = {}
            ctx = self.ssl_context
            if ctx is None and self.certfile is not None:
                ctx = _server_ssl_context(self.certfile, self.keyfile)

            def run() -> None:
                loop = asyncio.new_event_loop()
                self._loop = loop
                asyncio.set_event_loop(loop)
                self._stop = asyncio.Event()
                try:
                    loop.run_until_complete(_serve(self.settings, self.host, 0, started, box, self._stop, ctx))
                except BaseException as e:  # surfaced by start() below
                    box["error"] = e
                    started.set()
                finally:
                    loop.close()

            self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
            self._thread.start()
            if not started.wait(15):
                raise RuntimeError("the fake OpenAI server did not start within 15 s")
            if "error" in box:
                raise RuntimeError(f"the fake OpenAI server failed to start: {box['error']!r}")
            self.port = box["port"]
            return self
        args = [sys.executable, os.path.abspath(__file__), "--host", self.host, "--port", "0"]
        for k, v in asdict(self.settings).items():
            args.append(f"--{k.replace('_', '-')}={v}")  # one argument: a value may be empty or start with '-'
        if self.certfile is not None:
            args.append(f"--certfile={self.certfile}")
        if self.keyfile is not None:
            args.append(f"--keyfile={self.keyfile}")
        import tempfile

        fd, self.log_path = tempfile.mkstemp(prefix="fake-openai-", suffix=".log")
        with os.fdopen(fd, "w") as log:  # stderr to a file: a pipe nobody reads could fill and block the server
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        try:
            info = json.loads(line)
            self.port = int(info["port"])
        except (ValueError, KeyError, TypeError):
            with open(self.log_path) as f:
                err = f.read()
            self.stop()
            raise RuntimeError(f"the fake OpenAI server process did not start: {line!r} {err[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass
            if self._thread is not None:
                self._thread.join(10)
            self._loop = self._stop = self._thread = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings of the running server (e.g. configure(itl_ms=20))."""
        return self._http("POST", "/_fake/config", settings)

    def stats(self) -> dict[str, Any]:
        return self._http("GET", "/_fake/stats")

    def reset(self) -> None:
        self._http("POST", "/_fake/reset", {})

    def _http(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        # Control calls only: the test's own client is the one that verifies the certificate.
        ctx = ssl._create_unverified_context() if self.tls else None
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return json.loads(r.read())

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _server_ssl_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="OpenAI-compatible fake server with settable latencies.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = a free port; the bound port is printed as JSON")
    defaults = FakeSettings()
    for f in fields(FakeSettings):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name))
    p.add_argument("--certfile", help="serve HTTPS with this certificate (PEM; may hold the key too)")
    p.add_argument("--keyfile", help="the certificate's private key (PEM)")
    a = p.parse_args(argv)
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        p.error(f"--host must be a loopback address, got {a.host!r}")
    if a.keyfile and not a.certfile:
        p.error("--keyfile needs --certfile")
    s = FakeSettings()
    s.update({f.name: getattr(a, f.name) for f in fields(FakeSettings)})
    ctx = _server_ssl_context(a.certfile, a.keyfile) if a.certfile else None
    try:
        asyncio.run(_serve(s, a.host, a.port, ssl_context=ctx))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
