"""A keyed bento reached at a non-loopback address: load-tested, evaluated, monitored and canaried there.

The address lives in a network namespace this test creates and removes (tests/fakes/netns.py): a veth pair
and two relays carry each connection from the namespace address to the session's bento on loopback, so no
packet leaves this machine's loopback, the veth pair or the namespace. packager sees a remote host and sends
the key from a file or an environment variable, plus an extra header.
"""
from __future__ import annotations

import json

import pytest
from conftest import run_cli

from fakes.netns import NetnsForward, netns_available

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def remote_bento(bento_server):
    why = netns_available()
    if why is not None:
        pytest.skip(f"no network namespace for a remote address: {why}")
    port = int(bento_server.base_url.rsplit(":", 1)[1])
    with NetnsForward(port) as fwd:
        assert not fwd.address.startswith("127.")
        yield bento_server, fwd


def _env_with_key(key: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "PACKAGER_API_KEY"}
    env["STAGING_KEY"] = key
    return env


def test_loadtest_evaluate_monitor_and_canary_through_a_remote_address(remote_bento, tmp_path):
    bento, fwd = remote_bento
    url = fwd.base_url
    env = _env_with_key(bento.api_key)
    key_file = tmp_path / "key"
    key_file.write_text(bento.api_key + "\n")

    out = tmp_path / "lt"
    p = run_cli("loadtest", "--target", url, "--api-key-file", str(key_file), "--header", "X-Team: ml-platform",
                "--profile", "concurrency", "--users", "2", "--duration", "3", "--warmup", "1", "--input-tokens", "16",
                "--output-tokens", "8", "--usd-per-hour", "1", "--out", str(out), env=env, timeout_s=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"Load goes to {url} on REMOTE host {fwd.address}, plain http, with an API key, headers X-Team" in p.stderr
    res = json.loads((out / "loadtest.json").read_text())
    ph = res["phases"][0]
    assert res["target_url"] == url and ph["requests_sent"] > 0 and ph["requests_failed"] == 0
    assert ph["requests_warmup_excluded"] > 0
    for f in out.iterdir():
        if f.is_file():
            assert bento.api_key not in f.read_text(errors="replace"), f.name

    p = run_cli("loadtest", "--target", url, "--users", "1", "--duration", "1", "--out", str(tmp_path / "nokey"),
                env=_env_with_key("unused"), timeout_s=120)
    assert p.returncode != 0 and "401" in p.stderr and "--api-key-env" in p.stderr
    assert not (tmp_path / "nokey").exists()

    ev = tmp_path / "ev"
    p = run_cli("evaluate", url, "--api-key-env", "STAGING_KEY", "--max-items", "4", "--no-perplexity",
                "--fidelity-corpus", "suite", "--out", str(ev), env=env, timeout_s=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"Requests go to {url} on REMOTE host {fwd.address}" in p.stderr
    s = json.loads((ev / "summary.json").read_text())
    assert s["url"] == url and s["n_items"] == 4 and s["n_errors"] == 0 and s["prompt_format"] == "chat"

    p = run_cli("monitor", url, "--once", "--json", "--interval-s", "1", "--api-key-env", "STAGING_KEY", env=env,
                timeout_s=120)
    assert p.returncode == 0, p.stdout + p.stderr
    snap = json.loads(p.stdout)
    assert snap["source"] == "packager"  # the bento's own series, read through the remote address

    p = run_cli("canary", url, "--iterations", "1", "--port", "0", "--host", "127.0.0.1", "--max-items", "2",
                "--api-key-env", "STAGING_KEY", "--json", env=env, timeout_s=300)
    assert p.returncode == 0, p.stdout + p.stderr
    run = json.loads(p.stdout.strip().splitlines()[-1])
    assert run["n_error"] == 0 and len(run["items"]) == 2
