"""Evaluation through a real vLLM server on the bundled model: scores, perplexity, fidelity, the CLI."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from packager.config import load_config
from packager.evaluate.runner import evaluate_model, load_items

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def baseline_run(vllm_default_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-base")
    # the whole suite; 6 perplexity chunks of 256 tokens (the default 24 add minutes on 2 cores, not coverage)
    cfg = load_config(None, {"eval": {"suite": "default", "concurrency": 8, "perplexity_max_chunks": 6}})
    s = evaluate_model(None, cfg, url=vllm_default_server.base_url, out_dir=out, name="baseline", show_progress=False)
    return s, out


def test_default_suite_scores_between_zero_and_one(baseline_run):
    s, out = baseline_run
    assert s.n_items >= 150 and s.n_errors == 0
    # a score is a fraction; how high the bundled model scores is a measurement, recorded, not asserted here
    assert 0.0 <= s.score <= 1.0, s.score
    assert set(s.score_by_category) == {"extraction", "classification", "factual_qa", "arithmetic", "summarization"}
    assert all(0.0 <= v <= 1.0 for v in s.score_by_category.values())
    assert s.perplexity is not None and 1.0 < s.perplexity < 1000 and math.isfinite(s.perplexity)
    assert s.perplexity_tokens > 1000
    saved = json.loads((out / "summary.json").read_text())
    assert saved["score"] == pytest.approx(s.score)
    items = load_items(out / "items.jsonl")
    assert len(items) == s.n_items
    assert sum(r.score for r in items.values()) / len(items) == pytest.approx(s.score)
    # the baseline stores teacher-forced top-k distributions for fidelity of later variants
    assert sum(1 for r in items.values() if r.topk_logprobs) > 0.9 * len(items)


def test_fidelity_of_the_same_engine_is_perfect(baseline_run, vllm_default_server):
    base, out = baseline_run
    cfg = load_config(None, {"eval": {"suite": "default", "max_items": 40, "perplexity": False, "concurrency": 1}})
    s = evaluate_model(None, cfg, url=vllm_default_server.base_url, baseline=base, name="again", show_progress=False)
    assert s.recovery is not None
    assert s.fidelity_kl_positions > 100
    # Same weights, same engine: teacher-forced distributions agree up to bf16 batch noise.
    assert s.fidelity_mean_kl < 0.05, s.fidelity_mean_kl
    assert s.fidelity_agreement >= 0.85


def test_cli_scores_the_bundled_model_and_prints_score_and_perplexity(vllm_default_server, tmp_path):
    """`packager evaluate URL` prints the task score and perplexity and writes results; a second identical run
    (greedy, one request at a time) gives the same scores item by item."""
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        cp = subprocess.run(
            [sys.executable, "-m", "packager.cli", "evaluate", vllm_default_server.base_url, "--max-items", "12",
             "--concurrency", "1", "--out", str(out), "--name", f"run{i}"],
            capture_output=True, text=True, timeout=600, env={**os.environ, "PACKAGER_EVAL__PERPLEXITY_MAX_CHUNKS": "2"},
        )
        assert cp.returncode == 0, cp.stderr[-2000:]
        assert "task score" in cp.stdout and "perplexity" in cp.stdout
        outs.append(load_items(out / "items.jsonl"))
    assert {k: v.output for k, v in outs[0].items()} == {k: v.output for k, v in outs[1].items()}
    assert [v.score for v in outs[0].values()] == [v.score for v in outs[1].values()]


def test_cli_bad_suite_line_is_reported_with_line_and_field(tmp_path, vllm_default_server):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "x", "reference": "y", "scorer": "exact"}\n{"id": "b", "prompt": "x", "scorer": "exact"}\n')
    cp = subprocess.run([sys.executable, "-m", "packager.cli", "evaluate", vllm_default_server.base_url,
                         "--suite", str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 2
    assert "line 2, field 'reference'" in cp.stderr
    assert not (tmp_path / "o").exists()
