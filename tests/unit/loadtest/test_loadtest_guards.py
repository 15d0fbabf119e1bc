"""Target URLs (any http(s) host, malformed ones refused), nothing written on a refused run, no locust in the
packager process, and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from packager.config import PricingConfig, SLOConfig
from packager.errors import ConfigError
from packager.loadtest.config import LoadTestConfig
from packager.loadtest.runner import normalize_target, run_loadtest


@pytest.mark.parametrize("url,base", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://127.3.4.5:8000/", "http://127.3.4.5:8000"),
    ("http://localhost:8000/v1", "http://localhost:8000"),
    ("http://LOCALHOST:8000/v1/", "http://LOCALHOST:8000"),
    ("http://[::1]:8000", "http://[::1]:8000"),
    ("https://127.0.0.1:8443/prefix", "https://127.0.0.1:8443/prefix"),
    ("http://10.0.0.5:8000", "http://10.0.0.5:8000"),
    ("https://llm.staging.example.com/v1", "https://llm.staging.example.com"),
    ("https://api.example.com/team-a/v1/", "https://api.example.com/team-a"),
])
def test_any_http_target_is_accepted_and_normalized(url, base):
    assert normalize_target(url) == base


@pytest.mark.parametrize("url", [
    "ftp://127.0.0.1/", "127.0.0.1:8000", "http://", "http://host:notaport", "http://host:99999",
    "https://example.com/v1?key=abc", "https://example.com/#x", "", "file:///etc/passwd",
])
def test_malformed_targets_are_refused(url):
    with pytest.raises(ConfigError):
        normalize_target(url)


def test_refused_run_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="not an http"):
        run_loadtest("ftp://10.1.2.3:8000", LoadTestConfig(), SLOConfig(), PricingConfig(), out)
    with pytest.raises(ConfigError, match="Unknown instance"):
        run_loadtest("http://127.0.0.1:9", LoadTestConfig(), SLOConfig(), PricingConfig(instance="nope"), out,
                     model="m")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_packager_never_imports_locust_or_gevent():
    code = ("import sys, packager.cli, packager.loadtest.runner, packager.cli.loadtest, packager.loadtest.render;"
            "print(sorted(m for m in ('locust', 'gevent', 'torch', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_runs_refuses_and_prices(fake_server, tmp_path):
    from packager.cli import app

    runner = CliRunner()
    url = fake_server.base_url
    r = runner.invoke(app, ["loadtest", "--target", "192.0.2.1:8000"])
    assert r.exit_code == 2 and "not an http(s) URL" in r.output
    r = runner.invoke(app, ["loadtest", "--target", url, "--api-key-env", "PACKAGER_TEST_UNSET_VARIABLE"])
    assert r.exit_code == 2 and "PACKAGER_TEST_UNSET_VARIABLE" in r.output and "not set" in r.output
    r = runner.invoke(app, ["loadtest", "--target", url, "--header", "no colon here"])
    assert r.exit_code == 2 and "is not 'Name: value'" in r.output
    r = runner.invoke(app, ["loadtest", "--target", url, "--usd-per-hour", "-1", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "usd_per_hour" in r.output and not (tmp_path / "a").exists()
    r = runner.invoke(app, ["loadtest", "--target", url, "--instance", "c7i.xlarj", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "Close names: c7i.xlarge" in r.output and not (tmp_path / "b").exists()
    fake_server.configure(ttft_ms=10, itl_ms=2, output_tokens=5)
    r = runner.invoke(app, ["loadtest", "--target", url, "--profile", "rate", "--rate", "10", "--duration", "1",
                            "--set", "arrival=constant", "--input-tokens", "4", "--output-tokens", "5",
                            "--usd-per-hour", "3.6", "--out", str(tmp_path / "c"), "--json"])
    assert r.exit_code == 0, r.output
    assert f"Load goes to {url} on this machine (loopback), plain http, " in r.output
    assert "at most 10000 requests over at most 1 s of dispatch (10 requests/s offered" in r.output
    res = json.loads((tmp_path / "c" / "loadtest.json").read_text())
    ph = res["phases"][0]
    assert ph["requests_sent"] == 10 and ph["output_tokens_total"] == 50
    cost = res["cost"]["at_measured_throughput"]
    assert cost["usd_per_million_output_tokens"] == pytest.approx(3.6 / (cost["output_tokens_per_s"] * 3600) * 1e6)
    assert res["cost"]["instance"] is None and res["cost"]["utilisation_fraction"] == 1.0
    r = runner.invoke(app, ["loadtest-analyse", str(tmp_path / "c"), "--slo-ttft-ms", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "c" / "loadtest.json").read_text())
    assert res["slo"]["ttft_ms"] == 1 and res["phases"][0]["goodput_requests_per_s"] == 0


def test_locustfile_itself_refuses_a_plan_without_an_http_target(tmp_path):
    """Defence in depth: a plan edited by hand to a non-http(s) target is refused by the locust process too."""
    import os

    from packager.loadtest.runner import locustfile_path

    plan = {"plan_version": 1, "target_url": "file:///etc/passwd", "endpoint": "/v1/chat/completions", "model": "m",
            "requests": [{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}],
            "phases": [{"index": 0, "kind": "closed", "users": 1, "duration_s": 1, "label": "x", "load": {"users": 1}}],
            "max_requests": 1, "drain_timeout_s": 1, "request_timeout_s": 1, "seed": 0, "shares": 1}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = dict(os.environ, PACKAGER_LOADTEST_PLAN=str(tmp_path / "plan.json"),
               PACKAGER_LOADTEST_RECORDS=str(tmp_path / "records.jsonl"))
    p = subprocess.run([sys.executable, "-m", "locust", "-f", str(locustfile_path()), "--headless", "-u", "1", "-r", "1",
                        "--run-time", "20s", "--only-summary"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "is not an http(s) URL; refused" in p.stderr + p.stdout
    assert not (tmp_path / "records.jsonl").exists() or (tmp_path / "records.jsonl").read_text() == ""
