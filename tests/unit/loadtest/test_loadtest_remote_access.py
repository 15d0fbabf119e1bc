"""Load tests and evaluations of a target that wants a key, a header and TLS, and one that closes idle
connections: the real CLI and the real locustfile against the local fake (loopback only)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fakes.fake_openai import FakeOpenAIServer
from fakes.tls import make_tls_files

KEY = "sk-remote-test-0123456789"
LT = ["--profile", "rate", "--rate", "4", "--duration", "1", "--set", "arrival=constant", "--input-tokens", "4",
      "--output-tokens", "3", "--max-duration", "30"]


@pytest.fixture
def tls_fake(tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    with FakeOpenAIServer(ttft_ms=5, itl_ms=1, output_tokens=3, ssl_context=tls.server_context(),
                          require_api_key=KEY, require_header="X-Team: ml-platform") as srv:
        yield srv, tls


def _invoke(*args: str):
    from packager.cli import app

    return CliRunner().invoke(app, list(args))


def test_https_target_with_a_key_file_a_header_and_a_ca_bundle(tls_fake, tmp_path, monkeypatch):
    srv, tls = tls_fake
    assert srv.base_url.startswith("https://127.0.0.1:")
    key_file = tmp_path / "key"
    key_file.write_text(f"# staging key\n{KEY}\n")
    monkeypatch.delenv("PACKAGER_API_KEY", raising=False)
    out = tmp_path / "lt"
    r = _invoke("loadtest", "--target", srv.base_url, *LT, "--api-key-file", str(key_file),
                "--header", "X-Team: ml-platform", "--ca-bundle", str(tls.ca), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "on this machine (loopback), TLS, with an API key, headers X-Team" in r.output
    res = json.loads((out / "loadtest.json").read_text())
    ph = res["phases"][0]
    assert ph["requests_sent"] == 4 and ph["requests_ok"] == 4 and ph["requests_failed"] == 0
    st = srv.stats()
    assert st["requests_unauthorized"] == 0 and "x-team" in st["headers_seen"]
    for f in out.iterdir():  # the key and the header value are never written
        if f.is_file():
            text = f.read_text(errors="replace")
            assert KEY not in text and "ml-platform" not in text, f.name
    import os

    assert "PACKAGER_CLIENT_HEADERS" not in os.environ and "PACKAGER_CA_BUNDLE" not in os.environ  # scope undone

    ev = tmp_path / "ev"
    monkeypatch.setenv("TEAM_KEY", KEY)
    r = _invoke("evaluate", srv.base_url, "--max-items", "3", "--no-perplexity", "--fidelity-corpus", "suite",
                "--api-key-env", "TEAM_KEY", "--header", "X-Team: ml-platform", "--ca-bundle", str(tls.ca),
                "--out", str(ev))
    assert r.exit_code == 0, r.output
    assert "Requests go to https://127.0.0.1:" in r.output and "TLS, with an API key, headers X-Team" in r.output
    s = json.loads((ev / "summary.json").read_text())
    assert s["n_items"] == 3 and s["n_errors"] == 0 and s["prompt_format"] == "chat"

    r = _invoke("monitor", srv.base_url, "--once", "--json", "--interval-s", "0.2", "--api-key-env", "TEAM_KEY",
                "--header", "X-Team: ml-platform", "--ca-bundle", str(tls.ca))
    assert r.exit_code == 0, r.output
    assert srv.stats()["requests_unauthorized"] == 0


def test_tls_and_key_failures_are_clear_and_send_no_load(tls_fake, tmp_path, monkeypatch):
    srv, tls = tls_fake
    monkeypatch.setenv("TEAM_KEY", KEY)
    common = ["--header", "X-Team: ml-platform", *LT]
    r = _invoke("loadtest", "--target", srv.base_url, "--api-key-env", "TEAM_KEY", *common, "--out",
                str(tmp_path / "a"))
    assert r.exit_code != 0 and "CERTIFICATE_VERIFY_FAILED" in r.output and not (tmp_path / "a").exists()
    r = _invoke("loadtest", "--target", srv.base_url, "--ca-bundle", str(tls.ca), *common, "--out",
                str(tmp_path / "b"))
    assert r.exit_code != 0 and "401" in r.output and "--api-key-env" in r.output and not (tmp_path / "b").exists()
    assert srv.stats()["requests_total"] == 0
    r = _invoke("loadtest", "--target", srv.base_url, "--api-key-env", "TEAM_KEY", "--insecure", *common, "--out",
                str(tmp_path / "c"))
    assert r.exit_code == 0, r.output
    assert "--insecure: the target's TLS certificate is not verified" in r.output and "TLS, not verified" in r.output
    assert json.loads((tmp_path / "c" / "loadtest.json").read_text())["phases"][0]["requests_ok"] == 4


def test_connections_the_server_closed_while_idle_are_retried_not_failed(tmp_path, run_lt):
    """The fake closes a keep-alive connection when its next request arrives, answering nothing: the race of a
    pooled connection the server closed as the request went out. Each such request is sent again once on a fresh
    connection and counted as a retry, not as a failure."""
    with FakeOpenAIServer(ttft_ms=1, itl_ms=1, output_tokens=2, drop_reused_connections=True) as srv:
        res = run_lt(srv.base_url, tmp_path / "lt", prompt_format="chat",
                     profile={"kind": "rate", "requests_per_s": 4, "duration_s": 2, "arrival": "constant",
                              "max_in_flight": 1})
        st = srv.stats()
    ph = res.phases[0]
    assert ph.requests_sent == 8 and ph.requests_failed == 0 and ph.requests_ok == 8
    assert st["requests_by_path"]["/v1/chat/completions"] == 8  # each request was answered once
    recs = [json.loads(line) for line in (tmp_path / "lt" / "records.jsonl").read_text().splitlines()]
    retried = [r for r in recs if r.get("type") == "request" and r.get("retried")]
    assert st["connections_dropped"] >= 1 and ph.requests_retried == len(retried) == st["connections_dropped"]
    assert all(r["ok"] and "closed" in r["retry_error"] for r in retried)


def test_warmup_is_sent_and_left_out(fake_server, tmp_path, run_lt):
    res = run_lt(fake_server.base_url, tmp_path / "lt", prompt_format="chat", warmup_s=1.0,
                 profile={"kind": "rate", "requests_per_s": 4, "duration_s": 2, "arrival": "constant"})
    ph = res.phases[0]
    assert ph.requests_warmup_excluded == 4 and ph.requests_sent == 4
    assert fake_server.stats()["requests_by_path"]["/v1/chat/completions"] == 8
