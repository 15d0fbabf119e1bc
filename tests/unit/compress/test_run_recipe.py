"""run_recipe on the tiny random Llama: complete stage records, resume, nothing half-written."""
from __future__ import annotations

import json

import pytest

from packager.compress.base import METHODS
from packager.compress.recipe import RESULT_NAME, StageRecord, parse_recipe, run_recipe, summary_markdown
from packager.config import EngineConfig
from packager.errors import ConfigError
from packager.fsutil import MANIFEST_NAME, sha256_file, verify_manifest
from packager.core.sources import ResolvedModel

W8A8 = {"name": "t-w8a8", "stages": [{"kind": "w8a8_int8"}]}


@pytest.fixture
def tiny(tiny_llama_dir):
    return ResolvedModel(tiny_llama_dir, "tiny", str(tiny_llama_dir))


def _run(tiny, out, recipe=W8A8, **kw):
    return run_recipe(tiny, parse_recipe(recipe, "test"), out, engine=EngineConfig(), progress=False, **kw)


def test_w8a8_stage_record_is_complete(tiny, tmp_path):
    calls = []

    def fake_eval(stage_dir, label):
        calls.append((stage_dir, label))
        return {"score": 0.75, "recovery": 0.9, "perplexity": 12.5}

    res = _run(tiny, tmp_path / "run", evaluate=fake_eval, evaluation_key="k1")
    stage_dir = tmp_path / "run" / "01-w8a8_int8"
    assert calls == [(stage_dir, "01-w8a8_int8")]
    assert res.final_dir == str(stage_dir)
    rec = StageRecord.model_validate_json((stage_dir / "stage.json").read_text())
    assert rec == res.stages[0]
    assert rec.method == "w8a8_int8" and rec.arguments["kind"] == "w8a8_int8"
    assert rec.arguments == {"kind": "w8a8_int8", "smoothquant_alpha": None, "ignore": ["lm_head"],
                             "dtype": "bfloat16", "n_samples": 64, "seq_len": 512,
                             "alpha_candidates": [0.3, 0.45, 0.6, 0.75, 0.9], "mixed_precision": None,
                             "search_samples": 8, "search_seq_len": 128, "weight_rounding": "nearest",
                             "gptq_damp": 0.01, "activations": "symmetric", "down_rotation_block": None,
                             "rotation_seed": 0}
    assert rec.calibration_source is None and rec.calibration_sha256 is None  # RTN needs no data
    # every model file hashed, hashes right, size = sum of files
    files = sorted(p.name for p in stage_dir.iterdir() if p.name not in ("stage.json", MANIFEST_NAME))
    assert sorted(rec.files) == files
    for name, digest in rec.files.items():
        assert sha256_file(stage_dir / name) == digest
    assert rec.size_bytes == sum((stage_dir / n).stat().st_size for n in files)
    # parameters: the tiny Llama (vocab 49152 x 64 tied embedding + 4 layers); quantization keeps the count
    assert rec.parameter_count == res.source.parameter_count
    assert 3_000_000 < rec.parameter_count < 3_500_000
    assert rec.size_bytes < 0.75 * res.source.size_bytes
    assert rec.wall_time_s > 0 and rec.peak_rss_mb > 50
    assert rec.input_digest == res.source.digest and len(rec.digest) == 64
    assert rec.report["quantized_linear_layers"] == 28
    assert rec.evaluation == {"score": 0.75, "recovery": 0.9, "perplexity": 12.5}
    assert rec.versions.get("torch")
    verify_manifest(stage_dir)  # the manifest covers stage.json too
    result = json.loads((tmp_path / "run" / RESULT_NAME).read_text())
    assert result["stages"][0]["label"] == "01-w8a8_int8"
    md = summary_markdown(res)
    assert "| 01-w8a8_int8 | w8a8_int8 |" in md and "0.750" in md and "90.0%" in md


def test_resume_reuses_a_completed_stage(tiny, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = _run(tiny, out)
    mtime = (out / "01-w8a8_int8" / "model.safetensors").stat().st_mtime_ns

    def boom(args, ctx):
        raise AssertionError("the completed stage must not run again")

    monkeypatch.setitem(METHODS._items, "w8a8_int8", boom)
    again = _run(tiny, out)
    assert again.reused_stages == ["01-w8a8_int8"]
    assert again.stages[0].digest == first.stages[0].digest
    assert (out / "01-w8a8_int8" / "model.safetensors").stat().st_mtime_ns == mtime


def test_changed_arguments_rerun_the_stage(tiny, tmp_path):
    out = tmp_path / "run"
    _run(tiny, out)
    res = _run(tiny, out, recipe={"name": "t", "stages": [{"kind": "w8a8_int8", "dtype": "float16"}]})
    assert res.reused_stages == []
    assert res.stages[0].arguments["dtype"] == "float16"


def test_tampered_stage_is_not_reused(tiny, tmp_path):
    out = tmp_path / "run"
    _run(tiny, out)
    (out / "01-w8a8_int8" / "tokenizer_config.json").write_text("{}")
    res = _run(tiny, out)
    assert res.reused_stages == []
    assert json.loads((out / "01-w8a8_int8" / "tokenizer_config.json").read_text()) != {}


def test_evaluation_is_reused_only_with_the_same_key(tiny, tmp_path):
    out = tmp_path / "run"
    n = []

    def ev(d, label):
        n.append(label)
        return {"score": float(len(n))}

    _run(tiny, out, evaluate=ev, evaluation_key="a")
    r2 = _run(tiny, out, evaluate=ev, evaluation_key="a")
    assert n == ["01-w8a8_int8"] and r2.stages[0].evaluation == {"score": 1.0}
    r3 = _run(tiny, out, evaluate=ev, evaluation_key="b")
    assert n == ["01-w8a8_int8", "01-w8a8_int8"] and r3.stages[0].evaluation == {"score": 2.0}


def test_interrupted_stage_leaves_no_stage_dir(tiny, tmp_path, monkeypatch):
    real = METHODS.get("w8a8_int8")

    def half_then_fail(args, ctx):
        real(args, ctx)  # writes a full model into the temporary dir...
        raise KeyboardInterrupt  # ...and is interrupted before the stage completes

    monkeypatch.setitem(METHODS._items, "w8a8_int8", half_then_fail)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _run(tiny, out)
    left = [p.name for p in out.iterdir()]
    assert "01-w8a8_int8" not in left
    assert not any(name.endswith(".partial") for name in left)


def test_quantized_source_is_refused(tiny, tmp_path):
    first = _run(tiny, tmp_path / "a")
    quantized = ResolvedModel(tmp_path / "a" / "01-w8a8_int8", "q", "q")
    with pytest.raises(ConfigError, match="already quantized"):
        _run(quantized, tmp_path / "b")
    assert first.stages


def test_pickled_source_is_refused(tiny_llama_dir, tmp_path):
    import shutil

    from packager.errors import IntegrityError

    src = tmp_path / "pickled"
    shutil.copytree(tiny_llama_dir, src)
    (src / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(IntegrityError, match="pickled weight files"):
        _run(ResolvedModel(src, "p", "p"), tmp_path / "out")


@pytest.fixture
def avx512_cpu(monkeypatch):
    """GPTQ compression runs on any CPU; serving it on a CPU needs vLLM's AVX512 library, which the hardware
    preflight checks (tests/unit/compress/test_hardware.py). These tests are about the compression."""
    from packager import hardware

    cpu = hardware.CPUInfo(model="AVX512 test CPU", arch="x86_64", logical_cores=2, usable_cores=2,
                           flags=["avx2", "avx512f", "avx512_vnni"])
    monkeypatch.setattr(hardware, "detect_cpu", lambda *a, **k: cpu)


def test_gptq_on_tiny_model_with_calibration_record(tiny, tmp_path, avx512_cpu):
    recipe = {"name": "t-gptq", "stages": [{"kind": "gptq", "bits": 4, "group_size": 32, "n_samples": 8,
                                             "seq_len": 64}]}
    res = _run(tiny, tmp_path / "run", recipe=recipe)
    rec = res.stages[0]
    d = tmp_path / "run" / "01-gptq"
    cfg = json.loads((d / "config.json").read_text())
    q = cfg["quantization_config"]
    assert q["quant_method"] == "gptq" and q["bits"] == 4 and q["group_size"] == 32 and q["sym"] is True
    assert (d / "tokenizer.json").is_file()
    assert [p.name for p in d.glob("*.safetensors")] == ["model.safetensors"]
    assert not list(d.glob("*.bin"))
    assert rec.calibration_source.startswith("default: mix:bundled calibration mix") and len(rec.calibration_sha256) == 64
    assert rec.calibration_samples == 8
    assert rec.report["quantized_modules"] == 28 and rec.report["calibration_samples"] == 8
    assert rec.parameter_count == res.source.parameter_count
    assert rec.size_bytes < 0.7 * res.source.size_bytes


def test_gptq_bad_group_size_refused_before_work(tiny, tmp_path, avx512_cpu):
    recipe = {"name": "bad", "stages": [{"kind": "gptq", "group_size": 128}]}
    with pytest.raises(ConfigError, match="stage 01-gptq \\(gptq\\): group_size 128 does not divide hidden_size 64"):
        _run(tiny, tmp_path / "run", recipe=recipe)
    assert not (tmp_path / "run" / "01-gptq").exists()
