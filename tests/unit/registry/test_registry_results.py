"""Reading the few numbers the registry shows and gates on out of results documents of other areas."""
import pytest

from packager.errors import ConfigError
from packager.registry.results import digest, flatten_numbers, results_document, summarize, to_jsonable


def test_summary_of_an_evaluate_summary_and_behaviour():
    # the shape packager.evaluate writes (EvalSummary): score, score_by_tag, behaviour{refusal_rate, consistency}
    ev = {"score": 0.72, "score_by_tag": {"arithmetic": 0.9, "facts": 0.5}, "recovery": None,
          "behaviour": {"refusal_rate": 0.8, "consistency": 0.75}, "n_items": 40}
    s = summarize(results_document(eval=ev), root_score=0.8, root_label="root m version 1")
    assert s.task_score == 0.72 and s.tag_scores == {"arithmetic": 0.9, "facts": 0.5}
    assert s.refusal == 0.8 and s.consistency == 0.75
    assert s.recovery == pytest.approx(0.9) and s.recovery_source == "root m version 1" and s.baseline_score == 0.8


def test_behaviour_results_win_over_eval_and_accept_per_tag_objects():
    doc = results_document(eval={"score": 0.5, "behaviour": {"refusal_rate": 0.1}},
                           behaviour={"per_tag": {"refusal": {"score": 0.95}, "consistency": {"pass_rate": 0.6}}})
    s = summarize(doc)
    assert (s.refusal, s.consistency) == (0.95, 0.6)


def test_recovery_sources_in_order():
    assert summarize(results_document(eval={"score": 0.7, "recovery": 0.93}), root_score=0.5).recovery == 0.93
    assert summarize(results_document(eval={"summary": {"score": 0.7, "recovery_pct": 91.0}})).recovery == pytest.approx(0.91)
    s = summarize(results_document(eval={"score": 0.6, "baseline_score": 0.8}), root_score=0.5)
    assert s.recovery == pytest.approx(0.75) and s.recovery_source == "eval.baseline_score"
    assert summarize(results_document(eval={"score": 0.6})).recovery is None
    assert summarize(results_document()).task_score is None


def test_serving_numbers_found_nested_in_loadtest_and_cost():
    doc = results_document(loadtest={"stages": {"c32": {"output_tokens_per_s": 410.5, "ttft_ms_p95": 180.0}},
                                     "goodput_rps": 3.5},
                           cost={"summary": {"usd_per_million_output_tokens": 0.084}})
    s = summarize(doc)
    assert (s.output_tokens_per_s, s.ttft_ms_p95, s.goodput_rps, s.usd_per_million_output_tokens) == (410.5, 180.0, 3.5, 0.084)


def test_digest_ignores_key_order_but_not_values():
    a = results_document(eval={"score": 0.5, "n": 1})
    b = results_document(eval={"n": 1, "score": 0.5})
    assert digest(a) == digest(b)
    assert digest(a) != digest(results_document(eval={"score": 0.51, "n": 1}))


def test_non_json_results_are_refused_with_what_to_do():
    with pytest.raises(ConfigError, match="eval results must be JSON-able.*object"):
        results_document(eval={"x": object()})

    class Dumpable:
        def model_dump(self, mode="python"):
            return {"score": 1.0}

    assert to_jsonable(Dumpable(), "x") == {"score": 1.0}
    from pathlib import Path

    from pydantic import BaseModel

    class Stage(BaseModel):
        kind: str
        bits: int

    assert to_jsonable([Stage(kind="gptq", bits=4), {"dir": Path("/m")}], "recipe") == [
        {"kind": "gptq", "bits": 4}, {"dir": "/m"}]


def test_flatten_numbers_keeps_numeric_leaves_only():
    flat = flatten_numbers({"a": 1, "b": {"c": 2.5, "d": "text", "e": [1, 2]}, "f": True}, "eval")
    assert flat == {"eval.a": 1.0, "eval.b.c": 2.5}
