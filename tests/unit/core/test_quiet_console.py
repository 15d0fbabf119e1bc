"""The real `packager` command is quiet by default: `packager evaluate URL` against the local fake endpoint
prints no httpx request lines (httpx logs one INFO line per request); with `--verbose` it does."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fakes.fake_openai import FakeOpenAIServer


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer(output_tokens=4) as srv:
        yield srv


def evaluate(fake, tmp_path, *root_options: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "PACKAGER_OUTPUT_DIR": str(tmp_path / "runs" / "latest")}
    env.pop("MLFLOW_CONFIGURE_LOGGING", None)
    return subprocess.run([sys.executable, "-m", "packager.cli", *root_options, "evaluate", fake.base_url,
                           "--max-items", "2", "--no-perplexity", "--out", str(tmp_path / "eval")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_evaluate_prints_no_http_request_lines(fake, tmp_path):
    cp = evaluate(fake, tmp_path)
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert "items / errors" in cp.stdout  # the summary table is there
    assert "HTTP Request:" not in cp.stdout + cp.stderr, cp.stderr[-3000:]
    assert "INFO" not in cp.stderr


@pytest.mark.parametrize("flag", ["--verbose", "-v"])
def test_verbose_shows_them(fake, tmp_path, flag):
    cp = evaluate(fake, tmp_path, flag)
    assert cp.returncode == 0, cp.stderr[-3000:]
    lines = [ln for ln in cp.stderr.splitlines() if "HTTP Request:" in ln]
    assert any("POST" in ln and "/v1/chat/completions" in ln for ln in lines), cp.stderr[-3000:]
    assert "HTTP Request:" not in cp.stdout  # logs go to stderr; stdout holds the results
