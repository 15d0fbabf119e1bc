"""A variant the quality gate already rejects gets its sweep but no capacity search (knee.only_passing): the
gate's verdict comes from the evaluation that precedes the load test in the same served session."""
from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

import pytest

import packager.loadtest.runner as lt_runner
from packager.config import RunConfig
from packager.evaluate.runner import EvalSummary
from packager.loadtest.config import parse_loadtest_config
from packager.release import steps
from packager.release.estimate import default_loadtest
from packager.report.quality_gate import quality_gate


def _summary(recovery: float, kl: float | None) -> dict:
    return EvalSummary(name="v", served_model="v", suite="s", suite_sha256="0", n_items=400, n_errors=0,
                       score=0.5 * recovery, score_by_tag={}, score_by_category={}, baseline_name="baseline",
                       baseline_score=0.5, recovery=recovery, fidelity_mean_kl=kl, wall_time_s=1.0).model_dump(mode="json")


def _ctx(tmp_path, *, recipe="w8a8-int8", summary=None, only_passing=True):
    raw = default_loadtest()
    raw["knee"]["only_passing"] = only_passing
    cfg = RunConfig.model_validate({"model": "default", "quality_floor": 0.97, "gate": {"max_kl_vs_noise": 10}})
    logs: list[str] = []
    run = SimpleNamespace(lt_cfg=parse_loadtest_config(raw, "loadtest"), log=logs.append, notes=[],
                          timed=lambda name: nullcontext(), noise_floor={"mean_kl": 0.001},
                          gate=quality_gate(cfg, {"mean_kl": 0.001}))
    ctx = SimpleNamespace(run=run, cfg=cfg, v=SimpleNamespace(name="v", recipe=recipe, root=tmp_path),
                          summary_d=summary, cache=SimpleNamespace(put=lambda *a: None), lt_key="k")
    return ctx, logs


@pytest.fixture
def sent(monkeypatch):
    """The load-test configurations the step hands to run_loadtest (which returns at once)."""
    got = []

    def fake_run(url, cfg, slo, pricing, out, log):
        got.append(cfg)
        return SimpleNamespace(model_dump=lambda mode: {"knee": cfg.knee.enabled})

    monkeypatch.setattr(lt_runner, "run_loadtest", fake_run)
    return got


@pytest.mark.parametrize("recovery, kl, why", [(0.80, 0.002, "floor"), (1.0, 0.05, "KL"), (1.0, 0.002, None)])
def test_the_gate_verdict_comes_from_the_evaluation(tmp_path, recovery, kl, why):
    ctx, _ = _ctx(tmp_path, summary=_summary(recovery, kl))
    verdict = steps.rejected_by_gate(ctx)
    if why is None:
        assert verdict is None
    else:
        assert verdict is not None and why in verdict


def test_the_baseline_and_an_unevaluated_variant_are_never_rejected(tmp_path):
    assert steps.rejected_by_gate(_ctx(tmp_path, recipe=None, summary=_summary(0.5, 1.0))[0]) is None
    assert steps.rejected_by_gate(_ctx(tmp_path, summary=None)[0]) is None


def test_a_rejected_variant_is_swept_without_a_search(tmp_path, sent):
    ctx, logs = _ctx(tmp_path)
    steps.load_test(ctx, "http://127.0.0.1:1", rejected="recovers 80% < floor 97%")
    assert len(sent) == 1 and not sent[0].knee.enabled
    assert sent[0].profile == ctx.run.lt_cfg.profile and ctx.run.lt_cfg.knee.enabled  # the run's own config kept
    assert ctx.lt_d == {"knee": False}
    assert any("no capacity search" in m and "80% < floor" in m for m in logs)
    assert len(ctx.run.notes) == 1 and "not searched" in ctx.run.notes[0]


def test_a_passing_variant_and_only_passing_off_keep_the_search(tmp_path, sent):
    steps.load_test(_ctx(tmp_path)[0], "http://127.0.0.1:1", rejected=None)
    steps.load_test(_ctx(tmp_path, only_passing=False)[0], "http://127.0.0.1:1", rejected="recovers 80%")
    assert [c.knee.enabled for c in sent] == [True, True]


def _skipped_summary() -> dict:
    return EvalSummary(name="v", served_model="v", suite="s", suite_sha256="0", n_items=0, n_errors=0, score=None,
                       suite_skipped="not scored: its fidelity reading settled above the KL limit (...)",
                       score_by_tag={}, score_by_category={}, baseline_name="baseline", baseline_score=0.5,
                       fidelity_mean_kl=0.05, fidelity_settled="above", wall_time_s=1.0).model_dump(mode="json")


@pytest.mark.parametrize("skipped", [True, False])
def test_a_variant_whose_suite_was_skipped_gets_no_load_test(tmp_path, sent, monkeypatch, skipped):
    """gate.fail_fast: the evaluation read the KL first and skipped the suite; the served session then runs no
    load test (a variant scored in full, rejected on its KL, still gets its sweep)."""
    ctx, _ = _ctx(tmp_path)
    ctx.cache = SimpleNamespace(put=lambda *a: None, get=lambda *a: None)
    ctx.v.bento_tag, ctx.vr, ctx.search_deferred, ctx.lt_d = None, SimpleNamespace(bento_tag=None), False, None
    monkeypatch.setattr(steps, "serve", lambda c: nullcontext("http://127.0.0.1:1"))
    monkeypatch.setattr(steps, "evaluate", lambda c, url: setattr(
        c, "summary_d", _skipped_summary() if skipped else _summary(1.0, 0.05)))
    steps.measure(ctx)
    assert steps.rejected_by_gate(ctx) is not None and "mean KL" in steps.rejected_by_gate(ctx)
    assert (steps.suite_skipped(ctx) is not None) == skipped
    assert len(sent) == (0 if skipped else 1) and (ctx.lt_d is None) == skipped
