"""Recipe stage `gguf`: a float stage exported to a llama.cpp GGUF inside a recipe run (real llama.cpp)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from packager.compress.recipe import Recipe, run_recipe
from packager.errors import ConfigError, PackagerError
from packager.core.sources import resolve_model

needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed (make install)")


def test_unknown_quant_and_a_stage_after_gguf_are_refused():
    with pytest.raises(Exception, match="Unknown GGUF quantization type 'q3_xx'"):
        Recipe.model_validate({"name": "x", "stages": [{"kind": "gguf", "quant": "q3_xx"}]})
    with pytest.raises(Exception, match=r"stages\[0\] \(gguf\) writes a quantized checkpoint"):
        Recipe.model_validate({"name": "x", "stages": [{"kind": "gguf"}, {"kind": "prune", "target_layers": 1}]})


@needs_llama_cpp
def test_prune_then_gguf_writes_a_servable_artifact_with_its_lineage(tiny_llama_dir, tmp_path):
    from packager.gguf.artifact import is_gguf_artifact, read_export_record

    rec = Recipe.model_validate({"name": "prune-gguf", "stages": [
        {"kind": "prune", "target_layers": 2}, {"kind": "gguf", "quant": "q8_0"}]})
    res = run_recipe(resolve_model(str(tiny_llama_dir)), rec, tmp_path / "out", progress=False, log=lambda _m: None)
    final = tmp_path / "out" / "02-gguf"
    assert res.final_dir == str(final) and is_gguf_artifact(final)
    stage = json.loads((final / "stage.json").read_text())
    assert stage["method"] == "gguf" and stage["arguments"] == {"kind": "gguf", "quant": "q8_0", "imatrix": None,
                                                                "n_samples": 128, "seq_len": 512}
    assert "model.gguf" in stage["files"] and stage["report"]["quant"] == "q8_0"
    assert stage["report"]["imatrix"] is None and stage["calibration_sha256"] is None  # 8 bits: no matrix
    assert stage["report"]["gguf_sha256"] == stage["files"]["model.gguf"]
    # the pruned model's parameters (counted from config.json, as for every stage)
    assert stage["parameter_count"] == json.loads((tmp_path / "out" / "01-prune" / "stage.json").read_text())[
        "parameter_count"]
    export = read_export_record(final)
    assert [s["method"] for s in export["lineage"]] == ["prune"]  # the export knows where its input came from
    assert not (tmp_path / "out" / ".work").exists()
    # a rerun reuses the completed stages
    res2 = run_recipe(resolve_model(str(tiny_llama_dir)), rec, tmp_path / "out", progress=False, log=lambda _m: None)
    assert res2.reused_stages == ["01-prune", "02-gguf"]


@needs_llama_cpp
def test_gguf_after_a_quantized_stage_is_refused_before_work(tiny_llama_dir, tmp_path):
    rec = Recipe.model_validate({"name": "bad", "stages": [{"kind": "w8a8_int8"}]})
    run_recipe(resolve_model(str(tiny_llama_dir)), rec, tmp_path / "q", progress=False, log=lambda _m: None)
    bad = Recipe.model_validate({"name": "bad2", "stages": [{"kind": "gguf"}]})
    with pytest.raises((ConfigError, PackagerError), match="quantized"):
        run_recipe(resolve_model(str(tmp_path / "q" / "01-w8a8_int8")), bad, tmp_path / "g", progress=False,
                   log=lambda _m: None)
    assert not (tmp_path / "g" / "01-gguf").exists()


@needs_llama_cpp
def test_a_4_bit_gguf_stage_is_quantized_with_an_importance_matrix_from_the_calibration(tiny_llama_dir, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(f"Paragraph {i}: the numbers {i}, {i * 7} and {i * 13} add up to {i * 21}."
                                   for i in range(40)))
    rec = Recipe.model_validate({"name": "q4", "stages": [{"kind": "gguf", "quant": "q4_0", "n_samples": 16,
                                                            "seq_len": 64}]})
    run_recipe(resolve_model(str(tiny_llama_dir)), rec, tmp_path / "out", calibration=str(calib), progress=False,
               log=lambda _m: None)
    stage = json.loads((tmp_path / "out" / "01-gguf" / "stage.json").read_text())
    im = stage["report"]["imatrix"]
    assert im["tensors"] == 28 and im["skipped"] == [] and im["samples"] == stage["calibration_samples"] <= 16
    assert im["calibration_sha256"] and stage["calibration_sha256"]
    plain = Recipe.model_validate({"name": "q4p", "stages": [{"kind": "gguf", "quant": "q4_0", "imatrix": False}]})
    run_recipe(resolve_model(str(tiny_llama_dir)), plain, tmp_path / "plain", calibration=str(calib),
               progress=False, log=lambda _m: None)
    plain_stage = json.loads((tmp_path / "plain" / "01-gguf" / "stage.json").read_text())
    assert plain_stage["report"]["imatrix"] is None and plain_stage["calibration_sha256"] is None
    assert plain_stage["report"]["gguf_sha256"] != stage["report"]["gguf_sha256"]
