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
    # the whole suite; 6 perplexity chunks of 256 tokens (the default 24 add minutes on 2 cores, not coverage);
    # 40 prompts of the fidelity corpus, spread over it
    cfg = load_config(None, {"eval": {"suite": "default", "concurrency": 8, "perplexity_max_chunks": 6,
                                      "fidelity_max_prompts": 40}})
    s = evaluate_model(None, cfg, url=vllm_default_server.base_url, out_dir=out, name="baseline", show_progress=False)
    return s, out


def test_default_suite_scores_between_zero_and_one(baseline_run):
    s, out = baseline_run
    assert s.n_items >= 150 and s.n_errors == 0
    # a score is a fraction; how high the bundled model scores is a measurement, recorded, not asserted here
    assert 0.0 <= s.score <= 1.0, s.score
    from packager.evaluate.suite import load_suite

    assert set(s.score_by_category) == {it.category for it in load_suite("default").items}
    assert len(s.score_by_category) >= 8
    assert all(0.0 <= v <= 1.0 for v in s.score_by_category.values())
    assert s.perplexity is not None and 1.0 < s.perplexity < 1000 and math.isfinite(s.perplexity)
    assert s.perplexity_tokens > 1000
    saved = json.loads((out / "summary.json").read_text())
    assert saved["score"] == pytest.approx(s.score)
    items = load_items(out / "items.jsonl")
    assert len(items) == s.n_items
    assert sum(r.score for r in items.values()) / len(items) == pytest.approx(s.score)
    # the baseline stores its answers to the fidelity corpus with teacher-forced top-k distributions, for the
    # fidelity of later variants; its suite answers need none then
    assert s.fidelity_source == "corpus:default" and len(s.fidelity_corpus_sha256 or "") == 64
    assert s.fidelity_prompts + s.fidelity_prompts_skipped + s.fidelity_prompts_failed == 40
    assert s.fidelity_prompts >= 36 and s.fidelity_prompts_failed == 0
    ref = load_items(out / "fidelity_items.jsonl")
    assert s.fidelity_items_path == str((out / "fidelity_items.jsonl").resolve()) and len(ref) == s.fidelity_prompts
    for r in ref.values():
        assert r.output_token_ids and r.topk_logprobs and len(r.topk_logprobs) == len(r.output_token_ids) <= 32
        # the answer's own token is the most likely one at every position (it was decoded greedily)
        tops = [max(d, key=d.__getitem__) for d in r.topk_logprobs]
        assert sum(t == str(i) for t, i in zip(tops, r.output_token_ids)) >= 0.9 * len(tops), r.id
    assert not any(r.topk_logprobs for r in items.values())


def test_fidelity_of_the_same_engine_is_perfect(baseline_run, vllm_default_server):
    base, out = baseline_run
    cfg = load_config(None, {"eval": {"suite": "default", "max_items": 40, "perplexity": False, "concurrency": 1}})
    s = evaluate_model(None, cfg, url=vllm_default_server.base_url, baseline=base, name="again", show_progress=False)
    assert s.recovery is not None
    assert s.fidelity_source == "corpus:default" and s.fidelity_prompts == base.fidelity_prompts
    assert s.fidelity_kl_positions > 300
    # Same weights, same engine: teacher-forced distributions agree up to batch noise (the baseline answered at
    # concurrency 8, this run reads at 1, so the batches differ). Per position, the most likely token is the same
    # almost everywhere (serving in float32 instead of bfloat16, a larger change, keeps 98.7%). Whole greedy answers
    # are not asserted: one flip early in an answer changes the rest, and how often that happens depends on the
    # CPU's bf16 kernels (0.75 of the answers matched on an AMX machine, more elsewhere).
    assert s.fidelity_mean_kl < 0.05, s.fidelity_mean_kl
    assert s.fidelity_top1_agreement is not None and s.fidelity_top1_agreement >= 0.95, s.fidelity_top1_agreement
    assert s.fidelity_prefix_match_mean > 5, s.fidelity_prefix_match_mean


def test_fidelity_along_suite_answers_and_a_user_corpus_with_a_prompt_too_long(vllm_default_server, tmp_path):
    """Without a corpus, fidelity is measured along the baseline's suite answers; a user's corpus file is used as
    given, and a prompt longer than the context is skipped and counted, not failed."""
    cfg = load_config(None, {"eval": {"suite": "default", "max_items": 8, "perplexity": False,
                                      "fidelity_corpus": None}})
    base = evaluate_model(None, cfg, url=vllm_default_server.base_url, out_dir=tmp_path / "b", name="b",
                          show_progress=False)
    assert base.fidelity_source is None and base.fidelity_items_path is None
    assert sum(1 for r in load_items(tmp_path / "b" / "items.jsonl").values() if r.topk_logprobs) >= 7
    again = evaluate_model(None, cfg, url=vllm_default_server.base_url, baseline=base, name="a", show_progress=False)
    assert again.fidelity_source == "suite" and again.fidelity_kl_positions > 20
    assert again.fidelity_prefix_match_mean is not None

    corpus = tmp_path / "mine.jsonl"
    corpus.write_text("\n".join(json.dumps(x) for x in [
        {"id": "a", "prompt": "Name three colours."},
        {"id": "long", "prompt": "word " * 3000},
        {"id": "b", "messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
                                 {"role": "user", "content": "What can you do?"}]},
    ]) + "\n")
    cfg2 = load_config(None, {"eval": {"suite": "default", "max_items": 2, "perplexity": False,
                                       "fidelity_corpus": str(corpus), "fidelity_max_tokens": 8}})
    mine = evaluate_model(None, cfg2, url=vllm_default_server.base_url, out_dir=tmp_path / "m", name="m",
                          show_progress=False)
    assert mine.fidelity_source == "corpus:mine" and mine.fidelity_prompts == 2
    assert mine.fidelity_prompts_skipped == 1 and any("1 prompt(s) longer than" in n for n in mine.notes)
    ref = load_items(tmp_path / "m" / "fidelity_items.jsonl")
    assert set(ref) == {"a", "b"} and all(1 <= len(r.output_token_ids or []) <= 8 for r in ref.values())


def test_cli_scores_the_bundled_model_and_prints_score_and_perplexity(vllm_default_server, tmp_path):
    """`packager evaluate URL` prints the task score and perplexity and writes results; a second identical run
    (greedy, one request at a time) gives the same scores item by item."""
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        cp = subprocess.run(
            [sys.executable, "-m", "packager.cli", "evaluate", vllm_default_server.base_url, "--max-items", "12",
             "--fidelity-prompts", "4", "--concurrency", "1", "--out", str(out), "--name", f"run{i}"],
            capture_output=True, text=True, timeout=600, env={**os.environ, "PACKAGER_EVAL__PERPLEXITY_MAX_CHUNKS": "2"},
        )
        assert cp.returncode == 0, cp.stderr[-2000:]
        assert "task score" in cp.stdout and "perplexity" in cp.stdout
        outs.append(load_items(out / "items.jsonl"))
        summary = json.loads((out / "summary.json").read_text())
        assert summary["fidelity_source"] == "corpus:default"
        assert summary["fidelity_prompts"] + summary["fidelity_prompts_skipped"] + summary["fidelity_prompts_failed"] == 4
        assert len(load_items(out / "fidelity_items.jsonl")) == summary["fidelity_prompts"]
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
