"""Structured pruning on tiny random Llamas (tests/conftest.py: 4 layers, hidden 64, 4 heads, 2 KV heads,
intermediate 128, the bundled model's tokenizer)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from packager.compress.base import METHODS, StageContext
from packager.compress.prune import (
    PLAN_FILE,
    PruneArgs,
    apply_prune,
    boundary_distances,
    calibration_chunks,
    choose_layers_to_remove,
    mlp_keep_count,
)
from packager.errors import ConfigError

SMALL = {"n_samples": 6, "seq_len": 64, "batch_size": 3}


def build_tiny_llama(*args, **kw):
    """tests/conftest.py's builder, loaded by path: several directories have a conftest.py, so the module name
    `conftest` is ambiguous."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "conftest.py"
    spec = importlib.util.spec_from_file_location("_packager_root_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_tiny_llama(*args, **kw)


@pytest.fixture(scope="module")
def texts():
    from packager.evaluate.corpus import split_corpus

    return split_corpus()[0][:12]


def _load(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _ids(model_dir: Path, texts, n=2, seq_len=48):
    from transformers import AutoTokenizer

    return calibration_chunks(AutoTokenizer.from_pretrained(str(model_dir)), texts[::-1], seq_len, n)


def _prune(src: Path, out: Path, texts, **kw):
    out.mkdir(parents=True, exist_ok=True)
    args = PruneArgs(**{**SMALL, **kw})
    return apply_prune(args, StageContext(src, out, calibration_texts=list(texts), show_progress=False,
                                          log=lambda m: None))


def _with_identity_layers(src: Path, dst: Path, layers: list[int]) -> Path:
    """A copy of src whose given layers are exact identities (o_proj and down_proj zeroed)."""
    import torch

    model = _load(src)
    with torch.no_grad():
        for i in layers:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    model.save_pretrained(str(dst), safe_serialization=True)
    for p in src.iterdir():
        if p.name.startswith("tokenizer") or p.name.endswith(".jinja"):
            shutil.copy(p, dst / p.name)
    return dst


# ----------------------------------------------------------------------------------------------------- depth
def test_depth_prune_4_to_3_removes_least_important_layer(tiny_llama_dir, tmp_path, texts):
    from safetensors import safe_open

    out = tmp_path / "out"
    report = _prune(tiny_llama_dir, out, texts, target_layers=3)
    scores = [e["angular_distance"] for e in report["depth"]["layer_importance"]]
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)
    # first and last layers are protected; the removed one is the least important of layers 1..2
    expected = min((1, 2), key=lambda i: scores[i])
    assert report["depth"]["removed_layers"] == [expected]
    assert report["depth"]["kept_layers"] == [i for i in range(4) if i != expected]
    assert report["depth"]["importance_ranking"] == sorted(range(4), key=lambda i: (scores[i], i))

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3 and cfg["tie_word_embeddings"] is True
    model = _load(out)
    assert len(model.model.layers) == 3
    assert report["params_after"] < report["params_before"]
    assert report["params_after"] == sum(p.numel() for p in model.parameters())
    assert report["weights_bytes_after"] < report["weights_bytes_before"]
    # tied embeddings stay tied: no separate lm_head tensor on disk, one shared tensor in memory
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys
    assert {k.split(".")[2] for k in keys if k.startswith("model.layers.")} == {"0", "1", "2"}
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # the tokenizer travels with the model, and the plan is written beside it
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    assert json.loads((out / PLAN_FILE).read_text())["depth"]["removed_layers"] == [expected]
    assert 0.0 <= report["fidelity_on_calibration"]["top1_agreement_with_input"] <= 1.0


def test_explicit_layers_to_remove_is_honoured(tiny_llama_dir, tmp_path, texts):
    import torch

    out = tmp_path / "out"
    report = _prune(tiny_llama_dir, out, texts, layers_to_remove=[2])
    assert report["depth"]["removed_layers"] == [2]
    assert report["depth"]["strategy"] == "explicit"
    assert report["depth"]["kept_layers"] == [0, 1, 3]
    src, pruned = _load(tiny_llama_dir), _load(out)
    # new layer 2 is the old layer 3, weights unchanged; re-indexed attention
    assert torch.equal(pruned.model.layers[2].mlp.down_proj.weight, src.model.layers[3].mlp.down_proj.weight)
    assert torch.equal(pruned.model.layers[1].self_attn.q_proj.weight, src.model.layers[1].self_attn.q_proj.weight)
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]


def test_explicit_layers_need_no_calibration_text(tiny_llama_dir, tmp_path):
    out = tmp_path / "out"
    report = _prune(tiny_llama_dir, out, [], layers_to_remove=[0, 3])
    assert report["depth"]["removed_layers"] == [0, 3]
    assert report["depth"]["layer_importance"] is None
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2


def test_identity_layer_is_least_important_and_removing_it_is_exact(tiny_llama_dir, tmp_path, texts, default_model):
    import torch

    src = _with_identity_layers(tiny_llama_dir, tmp_path / "src", [2])
    out = tmp_path / "out"
    report = _prune(src, out, texts, remove_layers=1)
    scores = [e["angular_distance"] for e in report["depth"]["layer_importance"]]
    assert scores[2] < 1e-3
    assert scores[2] == min(scores)
    assert report["depth"]["removed_layers"] == [2]
    ids = _ids(src, texts)
    torch.testing.assert_close(_logits(_load(out), ids), _logits(_load(src), ids), rtol=1e-5, atol=1e-5)
    assert report["fidelity_on_calibration"]["kl_to_input_mean_nats"] < 1e-6
    assert report["fidelity_on_calibration"]["top1_agreement_with_input"] == 1.0


def test_block_strategy_removes_the_contiguous_identity_block(tmp_path, texts, default_model):
    import torch

    base = build_tiny_llama(tmp_path / "six", default_model.path, layers=6, seed=3)
    src = _with_identity_layers(base, tmp_path / "src", [3, 4])
    out = tmp_path / "out"
    report = _prune(src, out, texts, remove_layers=2, depth_strategy="block")
    blocks = report["depth"]["block_importance"]
    assert [b["start"] for b in blocks] == list(range(5))
    assert blocks[3]["angular_distance"] < 1e-3
    assert blocks[3]["angular_distance"] == min(b["angular_distance"] for b in blocks)
    assert report["depth"]["removed_layers"] == [3, 4]
    ids = _ids(src, texts)
    torch.testing.assert_close(_logits(_load(out), ids), _logits(_load(src), ids), rtol=1e-5, atol=1e-5)


def test_importance_scoring_is_deterministic(tiny_llama_dir, texts):
    from transformers import AutoTokenizer

    model = _load(tiny_llama_dir)
    chunks = calibration_chunks(AutoTokenizer.from_pretrained(str(tiny_llama_dir)), texts, 64, 4)
    a, _ = boundary_distances(model, chunks, batch_size=2)
    b, _ = boundary_distances(model, chunks, batch_size=4)  # batching does not change the scores
    assert len(a) == 4
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    c, _ = boundary_distances(model, chunks, batch_size=2)
    assert a == c


def test_choose_layers_to_remove_respects_protected_layers_and_blocks():
    scores = [0.01, 0.5, 0.2, 0.3, 0.1, 0.02]
    assert choose_layers_to_remove(scores, 2, 1, 1) == [2, 4]
    assert choose_layers_to_remove(scores, 2, 0, 0) == [0, 5]
    assert choose_layers_to_remove(scores, 1, 0, 1) == [0]
    blocks = [0.9, 0.8, 0.3, 0.4, 0.05]  # block of 2 starting at 0..4 in a 6-layer model
    assert choose_layers_to_remove(scores, 2, 1, 1, "block", blocks) == [2, 3]
    assert choose_layers_to_remove(scores, 2, 1, 0, "block", blocks) == [4, 5]
    with pytest.raises(ConfigError, match="only 4 are removable"):
        choose_layers_to_remove(scores, 5, 1, 1)


# ----------------------------------------------------------------------------------------------------- width
def test_width_prune_reduces_mlp_and_kv_groups(tiny_llama_dir, tmp_path, texts):
    import torch

    out = tmp_path / "out"
    report = _prune(tiny_llama_dir, out, texts, mlp_keep_ratio=0.5, mlp_round_to=32, kv_groups_keep=1)
    cfg = json.loads((out / "config.json").read_text())
    shape = (cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"])
    assert shape == (64, 2, 1, 16)
    assert cfg["num_hidden_layers"] == 4
    w = report["width"]
    assert (w["intermediate_size_before"], w["intermediate_size_after"]) == (128, 64)
    assert (w["num_key_value_heads_before"], w["num_key_value_heads_after"]) == (2, 1)
    src, pruned = _load(tiny_llama_dir), _load(out)
    plan = json.loads((out / PLAN_FILE).read_text())["width"]
    for i, (a, b) in enumerate(zip(src.model.layers, pruned.model.layers)):
        entry = plan[i]
        assert len(entry["kept_kv_groups"]) == 1 and len(entry["kept_query_heads"]) == 2
        g = entry["kept_kv_groups"][0]
        # the kept KV head with both of its query heads (group size 2), head_dim 16 intact
        assert entry["kept_query_heads"] == [2 * g, 2 * g + 1]
        assert b.self_attn.q_proj.weight.shape == (32, 64) and b.self_attn.k_proj.weight.shape == (16, 64)
        torch.testing.assert_close(b.self_attn.k_proj.weight, a.self_attn.k_proj.weight[16 * g: 16 * (g + 1)])
        torch.testing.assert_close(b.self_attn.q_proj.weight, a.self_attn.q_proj.weight[32 * g: 32 * (g + 1)])
        torch.testing.assert_close(b.self_attn.o_proj.weight, a.self_attn.o_proj.weight[:, 32 * g: 32 * (g + 1)])
        kept = entry["kept_mlp_channels"]
        assert len(kept) == 64 and kept == sorted(kept)
        torch.testing.assert_close(b.mlp.down_proj.weight, a.mlp.down_proj.weight[:, kept])
        torch.testing.assert_close(b.mlp.gate_proj.weight, a.mlp.gate_proj.weight[kept])
        assert 0.5 <= report["width"]["per_layer"][i]["mlp_importance_kept_fraction"] <= 1.0
    ids = _ids(tiny_llama_dir, texts)
    logits = _logits(pruned, ids)
    assert logits.shape == (2, 48, 49152) and torch.isfinite(logits).all()
    assert report["params_after"] < report["params_before"]
    assert report["fidelity_on_calibration"]["kl_to_input_mean_nats"] > 0


def test_width_prune_keeps_the_channels_that_matter(tiny_llama_dir, tmp_path, texts):
    """MLP channels whose down_proj columns are zero contribute nothing: they are the ones removed, and the
    logits do not change."""
    import torch

    model = _load(tiny_llama_dir)
    # half of each layer's channels (even ones in even layers, odd ones in odd layers)
    dead = {i: [c for c in range(128) if c % 2 == i % 2] for i in range(4)}
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            layer.mlp.down_proj.weight[:, dead[i]] = 0.0
    src = tmp_path / "src"
    model.save_pretrained(str(src), safe_serialization=True)
    for p in tiny_llama_dir.iterdir():
        if p.name.startswith("tokenizer"):
            shutil.copy(p, src / p.name)
    out = tmp_path / "out"
    _prune(src, out, texts, mlp_keep_ratio=0.5, mlp_round_to=64)
    plan = json.loads((out / PLAN_FILE).read_text())["width"]
    for i in range(4):
        assert set(plan[i]["kept_mlp_channels"]).isdisjoint(dead[i])
    ids = _ids(src, texts)
    torch.testing.assert_close(_logits(_load(out), ids), _logits(model, ids), rtol=1e-5, atol=1e-5)


def test_depth_and_width_with_bias_compensation_loads(tiny_llama_dir, tmp_path, texts):
    import torch

    out = tmp_path / "out"
    report = _prune(tiny_llama_dir, out, texts, target_layers=3, mlp_keep_ratio=0.5, mlp_round_to=16,
                    width_metric="flap", bias_compensation=True)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mlp_bias"] is True and cfg["intermediate_size"] == 64 and cfg["num_hidden_layers"] == 3
    pruned = _load(out)
    assert pruned.model.layers[0].mlp.down_proj.bias is not None
    assert torch.count_nonzero(pruned.model.layers[0].mlp.gate_proj.bias) == 0
    assert torch.isfinite(_logits(pruned, _ids(out, texts))).all()
    assert report["width"]["metric"] == "flap"


def test_mlp_keep_count_rounds_to_a_multiple():
    assert mlp_keep_count(1536, 0.75, 64) == 1152
    assert mlp_keep_count(1536, 0.7, 64) == 1088  # 1075.2 -> 17 x 64
    assert mlp_keep_count(128, 0.01, 64) == 64  # never below one multiple
    assert mlp_keep_count(100, 1.0, 64) == 100 or mlp_keep_count(100, 1.0, 64) <= 100
    assert mlp_keep_count(128, 0.5, 1) == 64


# ------------------------------------------------------------------------------------------------ validation
def test_args_validate_and_round_trip():
    a = PruneArgs(target_layers=22, mlp_keep_ratio=0.75)
    assert PruneArgs.model_validate(a.model_dump()) == a
    assert PruneArgs.requires_calibration_data is True
    assert METHODS.get("prune") is apply_prune
    for bad in ({}, {"target_layers": 3, "remove_layers": 1}, {"layers_to_remove": []},
                {"layers_to_remove": [1, 1]}, {"layers_to_remove": [-1]}, {"mlp_keep_ratio": 0.0},
                {"mlp_keep_ratio": 1.5}, {"remove_layers": 1, "unknown": 1}, {"kind": "gptq", "remove_layers": 1},
                {"bias_compensation": True, "remove_layers": 1}):
        with pytest.raises(ValidationError):
            PruneArgs(**bad)


@pytest.mark.parametrize("kw, msg", [
    ({"target_layers": 4}, "between 1 and 3"),
    ({"remove_layers": 4}, "would leave no layer"),
    ({"layers_to_remove": [7]}, "beyond the model's 4 layers"),
    ({"kv_groups_keep": 3}, "exceeds the model's 2 KV heads"),
    ({"remove_layers": 3}, "only 2 are removable"),
])
def test_bad_targets_raise_config_errors(tiny_llama_dir, tmp_path, texts, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        _prune(tiny_llama_dir, tmp_path / "out", texts, **kw)


def test_importance_without_calibration_text_is_refused(tiny_llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="calibration texts"):
        _prune(tiny_llama_dir, tmp_path / "out", [], remove_layers=1)


def test_quantized_input_is_refused(tiny_llama_dir, tmp_path, texts):
    src = tmp_path / "q"
    shutil.copytree(tiny_llama_dir, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="already quantized"):
        _prune(src, tmp_path / "out", texts, remove_layers=1)


def test_import_is_cheap():
    code = ("import sys, packager.compress.prune, packager.compress.distill; "
            "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_validate_for_checks_the_config_without_loading_weights(tiny_llama_dir, tmp_path):
    cfg_only = tmp_path / "cfg"
    cfg_only.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", cfg_only / "config.json")  # no weights at all
    PruneArgs(target_layers=3, kv_groups_keep=1).validate_for(cfg_only)
    with pytest.raises(ConfigError, match="between 1 and 3"):
        PruneArgs(target_layers=8).validate_for(cfg_only)
    assert PruneArgs.changes_architecture is True
