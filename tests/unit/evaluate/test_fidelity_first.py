"""A variant's fidelity read before its suite (eval.skip_suite_above_kl, set by a release's gate.fail_fast): the
suite is not scored when the KL settles above the limit, and is scored as before otherwise. The endpoint is a
fake client (unit test); the reading is packager's own."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from packager.config import RunConfig
from packager.evaluate import runner as R
from packager.evaluate.fidelity import ItemResult
from packager.evaluate.suite import load_suite

TOP = {"1": math.log(0.7), "2": math.log(0.2), "3": math.log(0.1)}
FAR = {"1": math.log(0.3), "2": math.log(0.5), "3": math.log(0.2)}  # KL about 0.26 a position


class FakeClient:
    """An OpenAI-compatible endpoint that answers every chat completion with the same text."""
    posts: list[str] = []

    def __init__(self, url, timeout_s=120.0):
        pass

    def model_id(self):
        return "m"

    def post(self, path, body):
        FakeClient.posts.append(path)
        return {"choices": [{"message": {"content": "42"}, "token_ids": [1], "finish_reason": "stop"}],
                "prompt_token_ids": [5]}

    def close(self):
        pass


@pytest.fixture
def baseline(tmp_path):
    items = [ItemResult(id=f"p{i}", tags=[], scorer="none", output="", score=0.0, latency_s=0.0,
                        prompt_token_ids=[5, 6], output_token_ids=[1] * 10, topk_logprobs=[TOP] * 10)
             for i in range(200)]
    path = tmp_path / "fidelity_items.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in items))
    return R.EvalSummary(name="baseline", served_model="m", suite="default", suite_sha256="x", n_items=3,
                         n_errors=0, score=0.5, score_by_tag={}, score_by_category={}, wall_time_s=1.0,
                         fidelity_items_path=str(path), fidelity_source="corpus:default")


def _run(monkeypatch, baseline, q, skip=True):
    FakeClient.posts = []
    monkeypatch.setattr(R, "OpenAIClient", FakeClient)
    cfg = RunConfig.model_validate({"eval": {"perplexity": False, "prompt_format": "chat", "max_items": 3,
                                             "fidelity_stop_kl": 0.0066, "skip_suite_above_kl": skip}})
    reads = []

    def topk(prompt_ids, output_ids, k, n):
        reads.append(1)
        return [q] * n
    s = R.evaluate_model(None, cfg, url="http://127.0.0.1:9", baseline=baseline, name="v",
                         suite=load_suite("default"), show_progress=False, topk_fn=topk)
    return s, reads


def test_a_variant_whose_kl_settles_above_the_limit_gets_no_suite(monkeypatch, baseline):
    s, reads = _run(monkeypatch, baseline, FAR)
    assert FakeClient.posts == []  # not one suite request
    assert s.score is None and s.recovery is None and s.n_items == 0 and s.stats is None
    assert s.suite_skipped is not None and "lies above the limit 0.0066 (read 100 of 200 answers" in s.suite_skipped
    assert s.fidelity_settled == "above" and s.fidelity_prompts == 100 and len(reads) == 100
    assert s.fidelity_mean_kl is not None and s.fidelity_mean_kl > 0.0066


def test_a_variant_within_the_limit_is_scored_after_its_reading(monkeypatch, baseline):
    s, reads = _run(monkeypatch, baseline, TOP)
    assert FakeClient.posts == ["/v1/chat/completions"] * 3
    assert s.score is not None and s.n_items == 3 and s.suite_skipped is None and s.recovery is not None
    assert s.fidelity_settled == "below" and s.fidelity_mean_kl == pytest.approx(0.0, abs=1e-9)


def test_a_reading_that_ends_above_the_limit_unsettled_skips_the_suite_too(monkeypatch, baseline):
    """Every answer read (too few for a look): the mean KL is exact, the gate's figure, and above the limit."""
    path = Path(baseline.fidelity_items_path)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:40]))
    s, reads = _run(monkeypatch, baseline, FAR)
    assert FakeClient.posts == [] and s.score is None and s.fidelity_settled is None and len(reads) == 40
    assert s.suite_skipped is not None and "(all 40 answers read)" in s.suite_skipped


def test_without_failing_fast_the_suite_is_scored_whatever_the_kl(monkeypatch, baseline):
    s, reads = _run(monkeypatch, baseline, FAR, skip=False)
    assert FakeClient.posts == ["/v1/chat/completions"] * 3 and s.score is not None and s.suite_skipped is None
    assert s.fidelity_settled == "above"  # still read with its stop, after the suite


@pytest.mark.parametrize("engine, ev, expected", [
    ({}, {}, 32),  # the default: 32 at a time (max_num_seqs 64)
    ({"max_num_seqs": 4}, {}, 8),  # no more than the engine batches, no fewer than the suite's eval.concurrency
    ({"max_num_seqs": 16}, {}, 16),
    ({}, {"reference_concurrency": 1, "concurrency": 1}, 1),  # one at a time (an engine evaluated reproducibly)
])
def test_the_baseline_answers_the_corpus_as_many_at_a_time_as_its_engine_batches(monkeypatch, engine, ev, expected):
    import packager.evaluate.fidelity_corpus as FC

    got = []

    def fake_reference(client, model, corpus, **kw):
        got.append(kw["concurrency"])
        return FC.ReferenceRun(items=[])
    monkeypatch.setattr(FC, "reference_outputs", fake_reference)
    cfg = RunConfig.model_validate({"engine": engine, "eval": ev})
    summary = R.EvalSummary(name="b", served_model="m", suite="default", suite_sha256="x", n_items=0, n_errors=0,
                            score=0.5, score_by_tag={}, score_by_category={}, wall_time_s=1.0)
    R._corpus_reference(FakeClient("u"), "m", cfg, summary, False)
    assert got == [expected]
