"""GPTQ int4 and W8A8 int8 checkpoints of the bundled model LOAD AND ANSWER in a real vLLM server.

One compression per variant (module-scoped), one vLLM server per variant, each stopped before the next.
The baseline (bf16) answers "Paris" to the capital-of-France question (checked when this test was
written, and asserted here through the shared session server), so each variant must too.
"""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from conftest import test_engine

from packager.compress.recipe import parse_recipe, run_recipe
from packager.config import EngineConfig
from packager.engines.vllm import EngineServer
from packager.errors import HardwareError
from packager.fsutil import verify_manifest
from packager.hardware import preflight

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France? Answer in one word."
# Smaller calibration than the shipped recipe (256 x 512) keeps this test to a couple of minutes. The GPTQ variant
# keeps its most sensitive units in float (out-of-reach KL target, 10% share): vLLM must load GPTQ `dynamic` skip
# rules on its fused qkv_proj / gate_up_proj.
VARIANTS = {
    "gptq-w4a16": {"kind": "gptq", "bits": 4, "group_size": 64, "n_samples": 32, "seq_len": 256,
                   "mixed_precision": {"target_kl": 1e-9, "max_float_share": 0.1}, "search_samples": 2,
                   "search_seq_len": 64},
    "w8a8-int8": {"kind": "w8a8_int8"},
    # asymmetric per-token activations and down_proj's input rotated (the built-in recipe's): vLLM quantizes the
    # activations with a zero point and applies the Hadamard transform at run time
    "w8a8-int8-asym": {"kind": "w8a8_int8", "activations": "asymmetric", "down_rotation_block": 128},
}
# What this machine's vLLM CPU build can serve (vLLM's AVX2 library has no GPTQ kernel): those are compressed and
# served; the others must be refused before any work.
SERVABLE = {name: stage for name, stage in VARIANTS.items() if not preflight(stage["kind"], "cpu")}


def ask(base_url: str, model: str, question: str = QUESTION, max_tokens: int = 24) -> str:
    r = httpx.post(f"{base_url}/v1/chat/completions", timeout=120, json={
        "model": model, "messages": [{"role": "user", "content": question}],
        "temperature": 0.0, "max_tokens": max_tokens})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def weights_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in Path(d).glob("*.safetensors"))


@pytest.fixture(scope="module")
def compressed(default_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("compress-vllm")
    out = {}
    for name, stage in SERVABLE.items():
        recipe = parse_recipe({"name": name, "stages": [stage]}, f"test recipe {name}")
        # The corpus alone as calibration: this smoke test asks one question of a 4-bit 135M model calibrated on
        # 32 samples, whose answer flips with the data (with the default mix, GPTQ's answered "London").
        res = run_recipe(default_model, recipe, root / name, calibration="corpus", engine=EngineConfig(),
                         device="cpu", progress=False)
        out[name] = (Path(res.final_dir), res)
    return out


def test_baseline_answers_paris(vllm_default_server):
    assert "Paris" in ask(vllm_default_server.base_url, "default")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_loads_and_answers_in_vllm(name, compressed, default_model, tmp_path):
    if name not in SERVABLE:  # this CPU's vLLM cannot serve it: refused before any compression, saying why
        recipe = parse_recipe({"name": name, "stages": [VARIANTS[name]]}, f"test recipe {name}")
        with pytest.raises(HardwareError, match=r"(?s)Refusing the recipe before starting.*no AVX512.*cpu_gemm_wna16"):
            run_recipe(default_model, recipe, tmp_path / name, engine=EngineConfig(), device="cpu", progress=False)
        assert not (tmp_path / name).exists() or not any((tmp_path / name).iterdir())
        return
    model_dir, res = compressed[name]
    verify_manifest(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    q = cfg["quantization_config"]
    if name.startswith("gptq"):
        assert q["quant_method"] == "gptq" and q["bits"] == 4 and q["group_size"] == 64
        kept = res.stages[-1].report["search"]["kept_modules"]
        mp = res.stages[-1].report["search"]["mixed_precision"]
        assert kept and 0 < mp["weight_share_float"] <= 0.1
        assert q["dynamic"] and all(k.startswith("-:") for k in q["dynamic"])
        from safetensors import safe_open

        names: set[str] = set()
        for f in model_dir.glob("*.safetensors"):
            with safe_open(str(f), "pt") as st:
                names |= set(st.keys())
        assert all(f"{m}.weight" in names and f"{m}.qweight" not in names for m in kept)
    else:
        assert q["quant_method"] == "compressed-tensors" and q["format"] == "int-quantized"
        acts = q["config_groups"]["group_0"]["input_activations"]
        assert acts["symmetric"] is (VARIANTS[name].get("activations", "symmetric") == "symmetric")
        block = VARIANTS[name].get("down_rotation_block")
        assert (q.get("transform_config") or {}).get("config_groups", {}).get("down_hadamard", {}).get(
            "head_dim") == block
    # smaller on disk than the float32 source, and than a bf16 copy of it would be
    src_bytes = weights_bytes(default_model.path)
    assert weights_bytes(model_dir) < 0.5 * src_bytes * (0.55 if name.startswith("gptq") else 0.75), \
        (weights_bytes(model_dir), src_bytes)
    assert not list(model_dir.glob("*.bin"))
    with EngineServer(model_dir, test_engine(), served_name=name) as srv:
        models = httpx.get(f"{srv.base_url}/v1/models", timeout=30).json()
        assert [m["id"] for m in models["data"]] == [name]
        answer = ask(srv.base_url, name)
        assert "Paris" in answer, answer
        arithmetic = ask(srv.base_url, name, "What is 2 + 3? Answer with the number only.", max_tokens=8)
        assert arithmetic.strip(), "empty answer"
        log = Path(srv.log_path).read_text(errors="replace")
    # vLLM really ran the quantized kernels (not a silent float fallback)
    if name.startswith("gptq"):
        assert "gptq" in log.lower()
    else:
        assert "compressed-tensors" in log.lower() or "compressed_tensors" in log.lower()


def test_cli_compress_scores_source_and_stage_through_vllm(default_model, tmp_path):
    """`packager compress --recipe FILE` (the built-in w8a8-int8's search, made small) with evaluation on: the
    source is scored once as the baseline, the stage against it; the table and both summaries carry score,
    recovery and perplexity. The KL target is out of reach, so mixed precision keeps units in float up to its
    share, and vLLM must serve a checkpoint whose fused q/k/v and gate/up units are partly left in float."""
    import subprocess
    import sys

    import yaml

    recipe = yaml.safe_load((Path(__file__).resolve().parents[2] / "packager/recipes/w8a8-int8.yaml").read_text())
    recipe["stages"][0].update(n_samples=6, seq_len=96, search_samples=2, search_seq_len=64,
                               alpha_candidates=[0.5, 0.75],
                               mixed_precision={"target_kl": 1e-9, "max_float_share": 0.08})
    rfile = tmp_path / "w8a8-int8.yaml"
    rfile.write_text(yaml.safe_dump(recipe))
    cfg = tmp_path / "run.yaml"
    cfg.write_text("eval:\n  max_items: 16\n  perplexity: true\n  perplexity_max_chunks: 4\n  fidelity_max_prompts: 16\n")
    out = tmp_path / "out"
    cp = subprocess.run([sys.executable, "-m", "packager.cli", "compress", "default", "--recipe", str(rfile),
                         "--out", str(out), "--config", str(cfg), "--device", "cpu"],
                        capture_output=True, text=True, timeout=1500)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]
    data = json.loads((out / "compress-summary.json").read_text())
    src, stage = data["rows"]
    assert src["stage"] == "00-source" and stage["stage"] == "01-w8a8_int8"
    assert 0.0 <= src["score"] <= 1.0 and src["perplexity"] > 1.0 and src["recovery"] is None
    assert 0.0 <= stage["score"] <= 1.0 and stage["perplexity"] > 1.0
    assert stage["recovery"] == pytest.approx(stage["score"] / src["score"])
    rec = json.loads((out / "01-w8a8_int8" / "stage.json").read_text())
    assert rec["evaluation"]["n_items"] == 16 and rec["evaluation"]["fidelity_agreement"] is not None
    mp = rec["report"]["mixed_precision"]
    assert mp["met"] is False and mp["kept_float"] and 0 < mp["weight_share_float"] <= 0.08
    # the built-in recipe's GPTQ rounding: every int8 weight written is the GPTQ one
    assert rec["report"]["weight_rounding"] == "gptq"
    assert rec["report"]["gptq_rounded_tensors"] == rec["report"]["quantized_tensors"] > 0
    assert 0 < rec["report"]["gptq"]["output_error_vs_nearest"] < 1
    ignore = json.loads((out / "01-w8a8_int8" / "config.json").read_text())["quantization_config"]["ignore"]
    assert set(rec["report"]["float_linear_layers"]) - {"lm_head"} <= set(ignore)
    assert (out / "eval" / "00-source" / "summary.json").is_file()
    assert "01-w8a8_int8" in cp.stdout and "recovery" in cp.stdout
