"""GPTQ W4A16 with mixed precision: the most sensitive units stay in float through GPTQ `dynamic` skip rules that
GPTQModel applies and vLLM's fused projection names also match; dynamic act-order is refused before any work."""
from __future__ import annotations

import json
import re

import pytest
import torch

from packager.compress.gptq import GPTQArgs, skip_rules
from packager.compress.int8_search import group_round_trip
from packager.errors import ConfigError


def test_skip_rules_match_the_separate_and_the_fused_names_of_that_layer_only():
    rules = skip_rules(["model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.k_proj",
                        "model.layers.3.self_attn.v_proj", "model.layers.12.mlp.down_proj",
                        "model.layers.5.mlp.gate_proj", "model.layers.5.mlp.up_proj"])
    assert all(k.startswith("-:") and v == {} for k, v in rules.items())

    def skipped(name: str) -> bool:
        return any(re.match(k.removeprefix("-:"), name) for k in rules)

    for name in ("model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.qkv_proj",
                 "model.layers.12.mlp.down_proj", "model.layers.5.mlp.gate_up_proj", "model.layers.5.mlp.up_proj"):
        assert skipped(name), name
    for name in ("model.layers.13.self_attn.qkv_proj", "model.layers.3.self_attn.o_proj", "model.layers.1.mlp.down_proj",
                 "model.layers.12.mlp.down_proj_extra", "model.layers.5.mlp.down_proj", "xmodel.layers.3.self_attn.q_proj"):
        assert not skipped(name), name


@pytest.mark.parametrize("bits", [4, 8])
def test_group_round_trip_is_on_the_grid_and_finer_with_more_bits(bits):
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    rt = group_round_trip(bits, 32)(w)
    assert rt.shape == w.shape
    qmax = 2 ** (bits - 1) - 1
    for g in range(2):
        blk = w[:, g * 32:(g + 1) * 32]
        s = blk.abs().amax(dim=1, keepdim=True) / qmax
        q = rt[:, g * 32:(g + 1) * 32] / s
        assert torch.allclose(q, q.round(), atol=1e-4) and q.abs().max() <= qmax + 1 + 1e-4
    err = (rt - w).abs().mean()
    assert 0 < err < (0.2 if bits == 4 else 0.01)
    whole_row = group_round_trip(bits, -1)(w)
    assert (whole_row - w).abs().mean() >= err * 0.999  # one scale per row is never finer than groups of 32


def test_dynamic_act_order_with_groups_is_refused_before_any_work(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                                                      "intermediate_size": 128}))
    with pytest.raises(ConfigError, match="desc_act: true .* refused by vLLM"):
        GPTQArgs.model_validate({"kind": "gptq", "group_size": 32, "desc_act": True}).validate_for(tmp_path)
    GPTQArgs.model_validate({"kind": "gptq", "group_size": -1, "desc_act": True}).validate_for(tmp_path)


def test_gptq_keeps_the_most_sensitive_units_in_float(tiny_llama_dir, tmp_path):
    """Real GPTQModel on a tiny random Llama: with a KL target out of reach, units are kept in float up to the
    share; the checkpoint holds them as plain float weights and every other Linear as GPTQ tensors."""
    from packager.compress.base import StageContext
    from packager.compress.checkpoint import tensor_shapes
    from packager.compress.gptq import apply_gptq

    texts = ["The quick brown fox jumps over the lazy dog. " * 20, "def f(x):\n    return x * 2\n" * 20] * 8
    args = GPTQArgs.model_validate({"kind": "gptq", "bits": 4, "group_size": 32, "n_samples": 16, "seq_len": 128,
                                    "mixed_precision": {"target_kl": 1e-9, "max_float_share": 0.3},
                                    "search_samples": 4})
    out = tmp_path / "out"
    out.mkdir()
    rec = apply_gptq(args, StageContext(input_dir=tiny_llama_dir, output_dir=out, calibration_texts=texts,
                                        show_progress=False, log=lambda _m: None))
    mp = rec["search"]["mixed_precision"]
    kept = rec["search"]["kept_modules"]
    assert mp["met"] is False and 0 < mp["weight_share_float"] <= 0.3 and kept
    assert len(mp["sensitivity"]) == 4 * 4  # 4 layers x (q/k/v, o, gate/up, down)
    # whole units only: q, k and v (and gate and up) are kept together, as vLLM fuses them
    for m in kept:
        if m.endswith(("q_proj", "k_proj", "v_proj")):
            assert {m.rsplit(".", 1)[0] + f".{p}_proj" for p in "qkv"} <= set(kept)
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "gptq" and q["bits"] == 4 and q["desc_act"] is False
    assert set(q["dynamic"]) == set(skip_rules(kept))
    keys = set(tensor_shapes(out))
    linears = {k.rsplit(".", 1)[0] for k in keys if k.endswith((".qweight", "_proj.weight"))}
    assert len(linears) == 4 * 7
    for m in linears:
        if m in kept:
            assert f"{m}.weight" in keys and f"{m}.qweight" not in keys, m
        else:
            assert f"{m}.qweight" in keys and f"{m}.weight" not in keys, m
    assert rec["quantized_modules"] == 4 * 7 - len(kept)
