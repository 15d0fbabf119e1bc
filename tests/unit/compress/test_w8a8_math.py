"""W8A8 int8 / FP8 weight maths, the compressed-tensors config, the written checkpoint and SmoothQuant."""
from __future__ import annotations

import json

import torch
from safetensors import safe_open

from packager.compress.base import StageContext
from packager.compress.ct_format import (
    dequantize,
    is_ignored,
    quantization_config,
    quantize_fp8_per_channel,
    quantize_int8_per_channel,
)
from packager.compress.fp8 import FP8Args, apply_fp8
from packager.compress.int8 import W8A8Int8Args, apply_factors, apply_w8a8_int8, smoothquant_factors


def test_int8_per_channel_scales_and_error():
    torch.manual_seed(0)
    w = torch.randn(48, 96) * torch.linspace(0.01, 3.0, 48).unsqueeze(1)  # very different row ranges
    q, s = quantize_int8_per_channel(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert s.dtype == torch.float32 and s.shape == (48, 1)
    assert torch.allclose(s.squeeze(1), w.abs().amax(dim=1) / 127)
    assert int(q.abs().max()) == 127  # each row's largest weight maps to +-127
    deq = dequantize(q, s)
    # round-to-nearest: every weight within half a step of its row
    assert torch.all((deq - w).abs() <= s / 2 + 1e-6)
    rel = (deq - w).norm() / w.norm()
    assert rel < 0.01


def test_int8_matches_compressed_tensors_dequantize():
    from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_dequantize

    w = torch.randn(16, 32)
    q, s = quantize_int8_per_channel(w)
    assert torch.allclose(ct_dequantize(x_q=q, scale=s), dequantize(q, s), atol=1e-6)


def test_int8_zero_row_is_safe():
    w = torch.zeros(4, 8)
    w[1] = 1.0
    q, s = quantize_int8_per_channel(w)
    assert torch.isfinite(s).all() and (q[0] == 0).all() and (q[1] == 127).all()


def test_fp8_per_channel():
    torch.manual_seed(1)
    w = torch.randn(32, 64) * 0.05
    q, s = quantize_fp8_per_channel(w)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (32, 1)
    assert torch.allclose(q.float().abs().amax(dim=1), torch.full((32,), 448.0))
    rel = (dequantize(q, s) - w).norm() / w.norm()
    assert rel < 0.05  # e4m3 keeps 3 mantissa bits: ~2-3% relative error


def test_compressed_tensors_config_int8():
    c = quantization_config("int8", ["lm_head"])
    assert c["quant_method"] == "compressed-tensors"
    assert c["format"] == "int-quantized"
    assert c["quantization_status"] == "compressed"
    assert c["ignore"] == ["lm_head"]
    g = c["config_groups"]["group_0"]
    assert g["targets"] == ["Linear"]
    w, a = g["weights"], g["input_activations"]
    assert (w["num_bits"], w["type"], w["symmetric"], w["strategy"], w["dynamic"]) == (8, "int", True, "channel", False)
    assert (a["num_bits"], a["type"], a["symmetric"], a["strategy"], a["dynamic"]) == (8, "int", True, "token", True)
    json.dumps(c)  # JSON-able as written into config.json


def test_compressed_tensors_config_fp8():
    c = quantization_config("fp8", ["lm_head"])
    assert c["format"] == "float-quantized"
    g = c["config_groups"]["group_0"]
    assert g["weights"]["type"] == "float" and g["weights"]["strategy"] == "channel"
    assert g["input_activations"]["type"] == "float" and g["input_activations"]["dynamic"] is True


def test_ignore_patterns():
    assert is_ignored("lm_head", ["lm_head"])
    assert is_ignored("model.layers.0.mlp.down_proj", ["down_proj"])
    assert not is_ignored("model.layers.0.mlp.down_proj", ["up_proj"])
    assert is_ignored("model.layers.3.self_attn.q_proj", [r"re:model\.layers\.3\..*"])


def _tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_w8a8_checkpoint_on_tiny_model(tiny_llama_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    report = apply_w8a8_int8(W8A8Int8Args(), StageContext(tiny_llama_dir, out))
    src = _tensors(tiny_llama_dir / "model.safetensors")
    dst = _tensors(out / "model.safetensors")
    linear = [k for k in src if k.endswith("_proj.weight")]
    assert len(linear) == 4 * 7 == report["quantized_linear_layers"]
    for k in linear:
        assert dst[k].dtype == torch.int8
        scale = dst[k[: -len("weight")] + "weight_scale"]
        assert scale.shape == (src[k].shape[0], 1) and scale.dtype == torch.float32
        rel = (dequantize(dst[k], scale) - src[k]).norm() / src[k].norm()
        assert rel < 0.01
    # everything else stays float, in bfloat16
    assert dst["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert dst["model.norm.weight"].dtype == torch.bfloat16
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["format"] == "int-quantized" and cfg["dtype"] == "bfloat16"
    assert (out / "tokenizer.json").is_file()
    assert not any(p.suffix in (".bin", ".pt") for p in out.iterdir())
    assert report["weight_relative_error_max"] < 0.01


def test_smoothquant_keeps_the_float_model_equivalent(tiny_llama_dir):
    """Dividing norms (and up_proj's rows) by s and multiplying the readers' input columns by s changes no
    float output."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    texts = ["The quick brown fox jumps over the lazy dog. " * 4, "def f(x):\n    return x * 2\n"]
    factors = smoothquant_factors(tiny_llama_dir, texts, alpha=0.5, seq_len=64, show_progress=False)
    assert any("div" in ops for ops in factors.values()) and any("mul" in ops for ops in factors.values())
    # up_proj takes both: its columns for gate/up smoothing, its rows for down_proj smoothing
    assert set(factors["model.layers.0.mlp.up_proj.weight"]) == {"div", "mul"}
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    ids = tok(texts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    pre = apply_factors(factors)
    sd = {k: pre(k, v) for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert torch.allclose(ref, got, atol=1e-4, rtol=1e-4)
    # and the smoothed weights really changed
    name = next(k for k, ops in factors.items() if "mul" in ops)
    assert not torch.allclose(sd[name], dict(AutoModelForCausalLM.from_pretrained(
        str(tiny_llama_dir), dtype=torch.float32).state_dict())[name])


def test_smoothquant_needs_calibration_flag():
    assert W8A8Int8Args().needs_calibration() is False
    assert W8A8Int8Args(smoothquant_alpha=0.5).needs_calibration() is True


def test_fp8_conversion_math_with_test_bypass(tiny_llama_dir, tmp_path):
    out = tmp_path / "fp8"
    out.mkdir()
    rep = apply_fp8(FP8Args(unsafe_skip_preflight=True), StageContext(tiny_llama_dir, out))
    dst = _tensors(out / "model.safetensors")
    w = dst["model.layers.0.mlp.up_proj.weight"]
    assert w.dtype == torch.float8_e4m3fn
    assert dst["model.layers.0.mlp.up_proj.weight_scale"].shape == (w.shape[0], 1)
    assert rep["weight_relative_error_max"] < 0.05
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["format"] == "float-quantized"


def test_compressed_tensors_reads_our_int8_checkpoint_back(tiny_llama_dir, tmp_path):
    """The compressed-tensors library (through transformers) decompresses the checkpoint we wrote into a float
    model whose outputs stay close to the original's: the format is the one the library defines."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    out = tmp_path / "w8a8"
    out.mkdir()
    apply_w8a8_int8(W8A8Int8Args(dtype="float32"), StageContext(tiny_llama_dir, out))
    deq = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32,
                                               quantization_config=CompressedTensorsConfig(run_compressed=False)).eval()
    ref = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    src = _tensors(tiny_llama_dir / "model.safetensors")
    w = deq.model.layers[1].mlp.down_proj.weight.detach()
    assert w.dtype == torch.float32
    rel = (w - src["model.layers.1.mlp.down_proj.weight"]).norm() / src["model.layers.1.mlp.down_proj.weight"].norm()
    assert 0 < rel < 0.01  # dequantized: close to, but not exactly, the original
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.no_grad():
        a, b = deq(input_ids=ids).logits, ref(input_ids=ids).logits
    assert (a - b).abs().max() < 0.05 * b.abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
