"""A REAL Prometheus server (the Debian package's binary) scraping a REAL endpoint every second, with the
shipped rule files loaded: traffic must move the token counters and latency histograms by exactly what
was served, the cost expression must be a finite positive number, and `packager monitor --once --json`
must agree with Prometheus's own arithmetic on the same series.

Targets: the session's vLLM server (`vllm_default_server`, vllm:* series) and, where
tests/integration/conftest.py provides it, the packager bento (`bento_server`, packager_* series and the
recording rules of monitoring/rules/packager-recording.yml).
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import CliProcess, run_cli

from packager.engines.base import free_port, stop_process, tail, wait_ready

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules"
PROMETHEUS = shutil.which("prometheus")
USD_PER_HOUR = 0.1785  # c7i.xlarge list price (shared pricing table), used where the endpoint has no price gauge


@dataclass(frozen=True)
class Profile:
    """Which series one kind of endpoint exposes."""

    fixture: str
    source: str
    output_tokens: str
    input_tokens: str
    ttft_histogram: str
    cost_expr: str  # USD per 1M output tokens over the last minute


PROFILES = {
    "vllm": Profile(
        fixture="vllm_default_server", source="vllm",
        output_tokens="vllm:generation_tokens_total", input_tokens="vllm:prompt_tokens_total",
        ttft_histogram="vllm:time_to_first_token_seconds",
        cost_expr=f"{USD_PER_HOUR} / (sum(rate(vllm:generation_tokens_total[1m])) * 3600) * 1e6",
    ),
    "bento": Profile(
        fixture="bento_server", source="packager",
        output_tokens="packager_output_tokens_total", input_tokens="packager_input_tokens_total",
        ttft_histogram="packager_ttft_seconds",
        cost_expr="sum(packager_usd_per_hour) / (sum(rate(packager_output_tokens_total[1m])) * 3600) * 1e6",
    ),
}


class PrometheusServer:
    """prometheus on a free loopback port, data and config in a temp dir, scraping `target` every 1s and
    evaluating the shipped rule files every 1s."""

    def __init__(self, workdir: Path, target_hostport: str):
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        for f in RULES.glob("*.yml"):
            shutil.copy(f, workdir / f.name)
        cfg = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": sorted(f.name for f in RULES.glob("*.yml")),
            "scrape_configs": [{"job_name": "packager", "metrics_path": "/metrics",
                                "static_configs": [{"targets": [target_hostport]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PrometheusServer":
        logf = open(self.log, "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir)
        wait_ready(self.url, self.proc, self.log, 60, path="/-/ready", what="Prometheus server")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=10)
            self.proc = None

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}\n{tail(self.log)}"
        return body["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        """The single value of an instant vector (None when empty)."""
        res = self.query(expr)
        if not res:
            return None
        assert len(res) == 1, f"{expr} gave {len(res)} series: {res}"
        return float(res[0]["value"][1])

    def wait_for(self, expr: str, pred, timeout_s: float = 60.0, what: str = "") -> float | None:
        deadline = time.monotonic() + timeout_s
        v = None
        while time.monotonic() < deadline:
            v = self.scalar(expr)
            if pred(v):
                return v
            time.sleep(0.5)
        raise AssertionError(f"{what or expr}: last value {v} after {timeout_s:.0f}s\n{tail(self.log)}")


def _base_url(srv) -> str:
    for attr in ("base_url", "url"):
        if isinstance(getattr(srv, attr, None), str):
            return getattr(srv, attr).rstrip("/")
    if isinstance(srv, str):
        return srv.rstrip("/")
    raise TypeError(f"cannot find the base URL of {srv!r}")


# `Authorization` of the endpoint under test (set by the `endpoint` fixture)
AUTH: dict[str, str] = {}


def _served_model(base_url: str) -> str:
    return httpx.get(base_url + "/v1/models", timeout=30, headers=AUTH).json()["data"][0]["id"]


def _chat(client: httpx.Client, base_url: str, model: str, i: int) -> dict:
    """One streamed chat completion (the bento times TTFT/TPOT on streamed requests); returns its usage."""
    usage = None
    with client.stream("POST", base_url + "/v1/chat/completions", timeout=300, json={
            "model": model, "max_tokens": 16, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Write a short sentence about the number {i}."}]}) as r:
        assert r.status_code == 200, r.read().decode()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[len("data: "):])
                usage = chunk.get("usage") or usage
    assert usage and usage["completion_tokens"] > 0, usage
    return usage


def _monitor_json(base_url: str, interval_s: float) -> dict:
    r = run_cli("monitor", base_url, "--once", "--json", "--interval-s", str(interval_s),
                "--usd-per-hour", str(USD_PER_HOUR), timeout_s=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


@pytest.fixture(params=["vllm", "bento"])
def endpoint(request):
    profile = PROFILES[request.param]
    try:
        srv = request.getfixturevalue(profile.fixture)
    except pytest.FixtureLookupError:
        pytest.skip(f"fixture {profile.fixture!r} is not defined (tests/integration/conftest.py); "
                    f"the {request.param} endpoint is not tested here")
    base_url = _base_url(srv)
    AUTH.clear()
    AUTH.update(getattr(srv, "headers", None) or {})  # a bento's key; a bare vLLM server needs none
    model = getattr(srv, "model", None) or _served_model(base_url)
    return profile, base_url, model


@pytest.fixture
def prometheus(tmp_path, endpoint):
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed: apt-get install -y prometheus")
    _, base_url, _ = endpoint
    srv = PrometheusServer(tmp_path, base_url.split("://", 1)[1])
    srv.start()
    yield srv
    srv.stop()


def test_prometheus_scrapes_endpoint_and_monitor_agrees(endpoint, prometheus):
    profile, base_url, model = endpoint
    prom = prometheus

    # The target is up and the shipped rules loaded and evaluate without error.
    prom.wait_for('up{job="packager"}', lambda v: v == 1.0, what="target up")
    shipped = sum(len(g["rules"]) for f in RULES.glob("*.yml") for g in yaml.safe_load(f.read_text())["groups"])
    deadline = time.monotonic() + 30
    while True:
        groups = httpx.get(prom.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if {r["health"] for r in rules} == {"ok"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(rules) == shipped
    assert {r["health"] for r in rules} == {"ok"}, [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]

    out0 = prom.wait_for(f"sum({profile.output_tokens})", lambda v: v is not None, what="first scrape")
    in0 = prom.scalar(f"sum({profile.input_tokens})")
    n0 = prom.scalar(f"sum({profile.ttft_histogram}_count)")

    # Traffic: 6 requests of 16 tokens, two at a time.
    usages: list[dict] = []
    with httpx.Client(headers=AUTH) as client:
        def worker(k):
            for i in range(k, 6, 2):
                usages.append(_chat(client, base_url, model, i))
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(usages) == 6
    served_out = sum(u["completion_tokens"] for u in usages)
    served_in = sum(u["prompt_tokens"] for u in usages)
    assert served_out > 0

    # Counters and histograms moved by exactly what was served.
    out1 = prom.wait_for(f"sum({profile.output_tokens})", lambda v: v is not None and v >= out0 + served_out,
                         what="output tokens counter")
    assert out1 == out0 + served_out
    prom.wait_for(f"sum({profile.input_tokens})", lambda v: v == in0 + served_in, what="input tokens counter")
    prom.wait_for(f"sum({profile.ttft_histogram}_count)", lambda v: v == n0 + 6, what="TTFT histogram count")

    # Rates, percentiles and cost over the last minute are finite and positive.
    out_rate = prom.scalar(f"sum(rate({profile.output_tokens}[1m]))")
    assert out_rate is not None and 0 < out_rate < 10_000
    ttft_p95_s = prom.scalar(f"histogram_quantile(0.95, sum by (le) (rate({profile.ttft_histogram}_bucket[1m])))")
    assert ttft_p95_s is not None and 0 < ttft_p95_s < 120
    cost = prom.scalar(profile.cost_expr)
    assert cost is not None and math.isfinite(cost) and cost > 0
    if profile.source == "packager":  # the recording rules see the bento's series
        for rec in ("packager:usd_per_million_output_tokens:rate5m", "packager:ttft_seconds:p95_rate5m",
                    "packager:tpot_seconds:p95_rate5m", "packager:output_tokens:rate5m", "packager:requests:rate5m"):
            v = prom.wait_for(f"sum({rec})", lambda v: v is not None and math.isfinite(v) and v > 0, what=rec)
            assert v > 0

    # `packager monitor` on the same, now quiet, endpoint: its lifetime figures equal Prometheus's.
    snap = _monitor_json(base_url, 1.0)
    assert snap["source"] == profile.source
    life = snap["lifetime"]
    prom_total = prom.wait_for(f"sum({profile.output_tokens})", lambda v: v == life["output_tokens_total"],
                               timeout_s=10, what="Prometheus total equals the monitor's")
    assert life["output_tokens_total"] == prom_total >= out1
    assert life["ttft"]["observations"] == prom.scalar(f"sum({profile.ttft_histogram}_count)")
    for q, key in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
        want_s = prom.scalar(f"histogram_quantile({q}, sum by (le) ({profile.ttft_histogram}_bucket))")
        assert life["ttft"][key] == pytest.approx(want_s * 1000, rel=1e-9), (q, want_s)
    assert snap["window"]["output_tokens_per_s"] == 0  # nothing was served during its interval
    assert snap["usd_per_million_output_tokens"] is None

    # ... and a monitor left running (`packager monitor --json`, a line per interval) shows the traffic that
    # starts after its first, quiet, interval: live rates and a cost. It starts before the traffic, as an
    # operator's would (CI twice saw a `monitor --once` started under traffic print nothing for 120 s).
    mon = CliProcess("monitor", base_url, "--json", "--interval-s", "3", "--iterations", "4",
                     "--usd-per-hour", str(USD_PER_HOUR), cwd=ROOT)
    try:
        quiet = json.loads(mon.readline(120))
        assert quiet["window"]["output_tokens_per_s"] == 0 and quiet["usd_per_million_output_tokens"] is None
        stop = threading.Event()

        def traffic():
            with httpx.Client(headers=AUTH) as c:
                i = 0
                while not stop.is_set():
                    _chat(c, base_url, model, 100 + i)
                    i += 1

        th = threading.Thread(target=traffic)
        th.start()
        try:
            later = [json.loads(mon.readline(120)) for _ in range(3)]
        finally:
            stop.set()
            th.join(300)
        rc, _, err = mon.wait(60)
        assert rc == 0, err
    finally:
        mon.close()
    # Traffic flowed through the last three intervals; which of them saw requests end (a bento counts a request
    # when it ends) depends on the speed, so the busiest one is checked.
    live = max(later, key=lambda snap: snap["window"]["output_tokens_per_s"])
    w = live["window"]
    assert w["output_tokens_per_s"] > 0 and w["request_rate_per_s"] > 0
    assert w["ttft"]["observations"] >= 1 and 0 < w["ttft"]["p50_ms"] < 120_000
    assert live["usd_per_million_output_tokens"] == pytest.approx(USD_PER_HOUR / (w["output_tokens_per_s"] * 3600) * 1e6)
    assert later[-1]["lifetime"]["output_tokens_total"] > life["output_tokens_total"]
