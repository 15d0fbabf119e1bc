"""`packager monitor` and `packager canary` end to end against the local fake (real HTTP, no vLLM)."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from fakes.fake_openai import FakeOpenAIServer
from typer.testing import CliRunner

from packager.cli import app
from packager.monitor.live import render_snapshot, take_snapshot

runner = CliRunner()


def flat(text: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer(ttft_ms=30, itl_ms=5, output_tokens=10) as srv:
        yield srv


class Traffic:
    """Chat requests one after another in a thread until stopped; counts what the server answered."""

    def __init__(self, base_url: str):
        self.base_url, self.stop_flag, self.requests, self.tokens = base_url, threading.Event(), 0, 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        with httpx.Client() as c:
            while not self.stop_flag.is_set():
                r = c.post(self.base_url + "/v1/chat/completions", timeout=10,
                           json={"model": "fake-model", "messages": [{"role": "user", "content": "one two three"}]})
                self.requests += 1
                self.tokens += r.json()["usage"]["completion_tokens"]

    def __enter__(self):
        self.thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(10)


def test_monitor_once_json(fake, monkeypatch):
    from packager.monitor import live
    from packager.monitor.scrape import histogram_buckets_increase, histogram_quantile

    scrapes = []  # the two scrapes the command takes, to recompute its figures from the same data
    real_fetch = live.fetch_metrics

    def recording_fetch(*args, **kwargs):
        scrapes.append(real_fetch(*args, **kwargs))
        return scrapes[-1]

    monkeypatch.setattr(live, "fetch_metrics", recording_fetch)
    with Traffic(fake.base_url) as t:
        res = runner.invoke(app, ["monitor", fake.base_url, "--once", "--json", "--interval-s", "1", "--usd-per-hour", "0.36"])
    assert res.exit_code == 0, res.output
    snap = json.loads(res.stdout)
    assert snap["source"] == "vllm" and snap["metrics_url"] == fake.base_url + "/metrics"
    w = snap["window"]
    # one stream, each request of 10 tokens sleeps >= 30 ms TTFT + 9 x 5 ms ITL in the fake: at most ~150
    # tokens/s whatever the machine (a slower one only lowers it), so the upper bound only catches a gross bug
    assert 0 < w["output_tokens_per_s"] < 400
    # the fake adds a request's 10 output and 3 prompt tokens and its success in one step: exact ratios
    assert w["request_rate_per_s"] == pytest.approx(w["output_tokens_per_s"] / 10)
    assert w["input_tokens_per_s"] == pytest.approx(w["request_rate_per_s"] * 3)
    # TTFT: the window's p50 is Prometheus's histogram_quantile over the increase of the fake's TTFT buckets
    # between the two scrapes; the fake's TTFT is >= 30 ms, so nothing lands at or below 20 ms, and the p50 is
    # at least the 20 ms bound of the bucket above (how far above depends on the machine's load)
    assert len(scrapes) == 2
    buckets = histogram_buckets_increase(*(s.series("vllm:time_to_first_token_seconds_bucket") for s in scrapes))
    assert w["ttft"]["observations"] == buckets[-1][1] > 0 and dict(buckets)[0.02] == 0
    assert w["ttft"]["p50_ms"] == pytest.approx(histogram_quantile(0.5, buckets) * 1000)
    assert w["ttft"]["p50_ms"] >= 20
    assert snap["usd_per_million_output_tokens"] == pytest.approx(0.36 / (w["output_tokens_per_s"] * 3600) * 1e6)
    assert snap["usd_per_hour_from"] == "flag"
    assert snap["lifetime"]["output_tokens_total"] <= t.tokens + 10
    # the SLO verdict is the window's TTFT p95 against the default 2000 ms limit (its value depends on load)
    assert snap["slo"]["ttft_ms_p95_limit"] == 2000
    assert snap["slo"]["ttft_ok"] is (w["ttft"]["p95_ms"] <= 2000)


def test_monitor_json_lines_and_rich_view(fake):
    with Traffic(fake.base_url):
        res = runner.invoke(app, ["monitor", fake.base_url, "--json", "--interval-s", "0.5", "--iterations", "2"])
        assert res.exit_code == 0, res.output
        lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
        assert len(lines) == 2 and lines[1]["scraped_at_s"] > lines[0]["scraped_at_s"]
        # a 0.5 s window may see no request finish on a stalled machine; across both windows some did
        assert all(x["window"]["output_tokens_per_s"] >= 0 for x in lines)
        assert any(x["window"]["output_tokens_per_s"] > 0 for x in lines)
        res = runner.invoke(app, ["monitor", fake.base_url, "--once", "--interval-s", "0.5", "--usd-per-hour", "1"])
    assert res.exit_code == 0, res.output
    for text in ("packager monitor", "requests/s", "output tokens/s", "USD / 1M output tokens", "TTFT (window)",
                 "TPOT (window)", "E2E  (window)", "source vllm", "model_name=fake-model"):
        assert text in res.stdout, text


def test_render_snapshot_without_traffic_or_price(fake):
    fake.reset()
    snap = take_snapshot(fake.base_url, 0.2)
    assert snap.window.ttft.observations == 0 and snap.usd_per_million_output_tokens is None
    from rich.console import Console

    con = Console(width=140, record=True)
    con.print(render_snapshot(snap, error="boom"))
    out = con.export_text()
    assert "no request finished in this window" in out
    assert "no price: pass --usd-per-hour" in out
    assert "last scrape failed: boom" in out


def test_monitor_errors_are_for_people():
    res = runner.invoke(app, ["monitor", "http://127.0.0.1:1", "--once", "--json", "--interval-s", "0.1"])
    assert res.exit_code == 2
    assert "Could not read http://127.0.0.1:1/metrics" in flat(res.output) and "Traceback" not in res.output
    res = runner.invoke(app, ["monitor", "http://127.0.0.1:1", "--once", "--interval-s", "0"])
    assert res.exit_code == 2 and "--interval-s must be > 0 seconds, got 0.0" in flat(res.output)
    res = runner.invoke(app, ["monitor", "http://127.0.0.1:1", "--once", "--usd-per-hour", "-2"])
    assert res.exit_code == 2 and "--usd-per-hour must be >= 0, got -2.0" in flat(res.output)
    res = runner.invoke(app, ["monitor", "http://127.0.0.1:1", "--once", "--timeout-s", "0"])
    assert res.exit_code == 2 and "--timeout-s must be > 0 seconds, got 0.0" in flat(res.output)


def test_monitor_gives_up_on_a_silent_endpoint_after_its_timeout():
    import socket

    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        res = runner.invoke(app, ["monitor", url, "--once", "--json", "--interval-s", "0.1", "--timeout-s", "1"])
        took = time.monotonic() - t0
    assert res.exit_code == 2 and f"Could not read {url}/metrics: ReadTimeout" in flat(res.output), res.output
    # a hang guard, generous for a loaded machine: the 1 s timeout was used, not the default 10 s (which would
    # make it take 10 s or more)
    assert took < 9


def test_canary_cli_one_run(fake, tmp_path):
    suite = tmp_path / "golden.jsonl"
    suite.write_text("\n".join(json.dumps(x) for x in [
        {"id": "t1", "prompt": "Say tok.", "reference": "tok", "scorer": "contains", "tags": ["a"], "max_tokens": 2},
        {"id": "t2", "prompt": "Capital of France?", "reference": "Paris", "scorer": "contains", "tags": ["b"], "max_tokens": 2},
    ]) + "\n")
    res = runner.invoke(app, ["canary", fake.base_url, "--suite", str(suite), "--iterations", "1", "--port", "0",
                              "--host", "127.0.0.1", "--json", "--interval-s", "1"])
    assert res.exit_code == 0, res.output
    result = json.loads(next(x for x in res.stdout.splitlines() if x.startswith("{")))
    assert result["n_pass"] == 1 and result["n_fail"] == 1 and result["pass_ratio"] == 0.5
    assert result["model"] == "fake-model"
    assert "pass 50%" in res.output


def test_canary_cli_bad_suite(tmp_path):
    res = runner.invoke(app, ["canary", "http://127.0.0.1:1", "--suite", str(tmp_path / "nope.jsonl"), "--port", "0"])
    assert res.exit_code == 2 and "nope.jsonl does not exist" in flat(res.output)


def test_monitor_live_modes_fail_when_every_scrape_fails():
    for extra in ([], ["--json"]):
        res = runner.invoke(app, ["monitor", "http://127.0.0.1:1", "--iterations", "2", "--interval-s", "0.1", *extra])
        assert res.exit_code == 2, res.output
        out = flat(res.output)
        assert "Could not read http://127.0.0.1:1/metrics" in out
        assert "No snapshot of http://127.0.0.1:1 in 2 intervals: every scrape failed" in out
