"""The release's noise-floor step: once per baseline (cached), skipped for variants, a note when it cannot run,
and the gate's KL limit derived from it."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import packager.evaluate.noise_floor as nf_mod
from packager.config import RunConfig
from packager.errors import ServerError
from packager.evaluate.noise_floor import NoiseFloor, reference_dtype
from packager.release import steps
from packager.release.cache import StepCache
from packager.release.context import RunContext, Variant, VariantContext
from packager.report.quality_gate import quality_gate
from packager.report.model import VariantResult


def ctx_for(tmp_path: Path, recipe: str | None = None, **cfg) -> VariantContext:
    run = RunContext(cfg=RunConfig.model_validate(cfg), lt_cfg=None, log=lambda m: None)
    run.suite = SimpleNamespace(sha256="suite")
    run.baseline_items = {"i1": object()}
    name = recipe or "baseline"
    v = Variant(name, recipe, tmp_path / name, model_dir=tmp_path / "model", digest="d1")
    vr = VariantResult(name=name, recipe=recipe, is_baseline=recipe is None, engine="vllm", dtype="float32")
    return VariantContext(run, v, vr, StepCache(tmp_path / name))


@pytest.fixture
def measured(monkeypatch):
    calls = []

    def fake(model_dir, cfg, served, items, log_path=None, max_items=None, show_progress=False):
        calls.append(served)
        assert max_items == cfg.gate.noise_floor_items == 48
        return NoiseFloor(served_dtype=served, reference_dtype=reference_dtype(served), mean_kl=0.0004,
                          p95_kl=0.002, top1_agreement=0.98, positions=240, items=len(items))

    monkeypatch.setattr(nf_mod, "measure_noise_floor", fake)
    return calls


def test_measured_once_for_the_baseline_and_cached(tmp_path, measured):
    ctx = ctx_for(tmp_path)
    (tmp_path / "baseline").mkdir()
    steps.noise_floor(ctx)
    assert measured == ["float32"] and ctx.run.noise_floor is not None
    assert ctx.run.noise_floor["reference_dtype"] == "bfloat16" and ctx.run.noise_floor["mean_kl"] == 0.0004
    again = ctx_for(tmp_path)
    steps.noise_floor(again)  # a rerun: from the step cache
    assert measured == ["float32"] and again.run.noise_floor == ctx.run.noise_floor
    gate = quality_gate(ctx.cfg, ctx.run.noise_floor)
    assert gate.max_kl == pytest.approx(15 * 0.0004) and gate.noise_floor_kl == 0.0004 and gate.use_lower_bound


def test_skipped_for_variants_and_when_switched_off(tmp_path, measured):
    steps.noise_floor(ctx_for(tmp_path, recipe="w8a8-int8"))
    steps.noise_floor(ctx_for(tmp_path, gate={"noise_floor": False}))
    steps.noise_floor(ctx_for(tmp_path, gate={"max_kl_vs_noise": None}))
    assert measured == []
    assert quality_gate(RunConfig(), None).max_kl is None  # no floor: no KL test


def test_a_failure_is_a_note_and_no_kl_test(tmp_path, monkeypatch):
    def broken(*a, **kw):
        raise ServerError("the engine did not start")

    monkeypatch.setattr(nf_mod, "measure_noise_floor", broken)
    ctx = ctx_for(tmp_path)
    steps.noise_floor(ctx)
    assert ctx.run.noise_floor is None
    assert ctx.run.notes == ["noise floor not measured (the engine did not start); no KL test"]


def test_an_engine_without_prompt_logprobs_has_no_floor(tmp_path, measured):
    ctx = ctx_for(tmp_path)
    ctx.vr.engine = "llamacpp"
    steps.noise_floor(ctx)
    assert measured == [] and "no KL test" in ctx.run.notes[0]


def test_reference_dtype_is_the_other_precision():
    assert reference_dtype("float32") == "bfloat16"
    assert reference_dtype("bfloat16") == "float32" and reference_dtype("float16") == "float32"


def test_the_noise_floor_engine_runs_eager_in_the_other_dtype(monkeypatch, tmp_path):
    """A few dozen teacher-forced reads: the reference engine skips vLLM's compilation; the rest of the serving
    settings are the baseline's."""
    import packager.engines.select as sel
    from packager.evaluate.fidelity import ItemResult

    started = []

    class Stop(Exception):
        pass

    def fake_server(model_dir, engine, **kw):
        started.append(engine)
        raise Stop

    monkeypatch.setattr(sel, "select_engine", lambda model_dir, engine: SimpleNamespace(backend="vllm"))
    monkeypatch.setattr(sel, "server_for_model", fake_server)
    cfg = RunConfig.model_validate({"engine": {"max_num_seqs": 12}})
    item = ItemResult(id="a", tags=[], scorer="fidelity", output="x", score=0.0, latency_s=0.1,
                      prompt_token_ids=[1], output_token_ids=[2], topk_logprobs=[{"2": -0.1}])
    with pytest.raises(Stop):
        nf_mod.measure_noise_floor(tmp_path, cfg, "bfloat16", {"a": item})
    (engine,) = started
    assert (engine.dtype, engine.enforce_eager, engine.max_num_seqs) == ("float32", True, 12)
    assert cfg.engine.enforce_eager is False  # the run's own engine settings untouched
