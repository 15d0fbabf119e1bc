"""AWQ W4A16 as a method of the gptq stage: its settings are checked before any work, GPTQModel is asked for the
AWQ GEMM format (with its torch packer on a CPU), and the checkpoint is the AWQ format with zero points."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from packager.compress.gptq import GPTQArgs, quantize_backend_kwargs, quantize_config_kwargs
from packager.compress.recipe import parse_recipe
from packager.errors import ConfigError


def _build_tiny_llama(*args, **kw):
    """tests/conftest.py's builder, loaded by path (several directories have a conftest.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_packager_root_conftest",
                                                  Path(__file__).resolve().parents[2] / "conftest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_tiny_llama(*args, **kw)


def _awq(**kw) -> GPTQArgs:
    return GPTQArgs.model_validate({"kind": "gptq", "method": "awq", **kw})


def test_gptq_stays_the_default_method_and_keeps_its_symmetric_default():
    a = GPTQArgs.model_validate({"kind": "gptq"})
    assert a.method == "gptq" and a.sym is True


def test_awq_defaults_to_zero_points():
    assert _awq().sym is False
    assert _awq(sym=False).sym is False


@pytest.mark.parametrize("kw, match", [
    ({"bits": 8}, "4-bit weights only"),
    ({"desc_act": True}, "no act-order"),
    ({"sym": True}, "asymmetric"),
])
def test_awq_settings_it_cannot_write_are_refused_in_the_recipe(kw, match):
    with pytest.raises(ConfigError, match=match):
        parse_recipe({"name": "x", "stages": [{"kind": "gptq", "method": "awq", **kw}]}, "r.yaml")


def test_unknown_method_is_refused():
    with pytest.raises(ConfigError, match="method"):
        parse_recipe({"name": "x", "stages": [{"kind": "gptq", "method": "rtn"}]}, "r.yaml")


def test_awq_quantize_config_is_the_gemm_format_without_gptq_only_fields():
    kw = quantize_config_kwargs(_awq(group_size=64), {})
    assert kw == {"bits": 4, "group_size": 64, "sym": False, "offload_to_disk": False, "method": "awq",
                  "format": "gemm"}
    # mixed precision's skip rules go to GPTQModel's AWQ as they go to its GPTQ
    assert quantize_config_kwargs(_awq(group_size=64), {"-:^x$": {}})["dynamic"] == {"-:^x$": {}}


def test_awq_accepts_mixed_precision():
    a = _awq(mixed_precision={"target_kl": 0.05, "max_float_share": 0.25})
    assert a.mixed_precision is not None and a.mixed_precision.target_kl == 0.05


def _awq_checkpoint(d: Path, float_modules: list[str], packed_modules: list[str]) -> None:
    import torch
    from safetensors.torch import save_file

    t = {f"{m}.weight": torch.zeros(8, 8, dtype=torch.bfloat16) for m in float_modules}
    for m in packed_modules:
        t |= {f"{m}.qweight": torch.zeros(8, 1, dtype=torch.int32), f"{m}.qzeros": torch.zeros(1, 1, dtype=torch.int32),
              f"{m}.scales": torch.zeros(1, 8, dtype=torch.float16)}
    save_file(t, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {
        "quant_method": "awq", "bits": 4, "modules_to_not_convert": ["lm_head"]}}))


def test_awq_mixed_precision_lists_the_float_units_for_vllm(tmp_path):
    from packager.compress.gptq import mark_awq_float_modules

    kept = ["model.layers.1.mlp.down_proj", "model.layers.0.self_attn.q_proj"]
    _awq_checkpoint(tmp_path, kept, ["model.layers.0.mlp.down_proj"])
    mark_awq_float_modules(tmp_path, kept)
    q = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert q["modules_to_not_convert"] == ["lm_head", "model.layers.0.self_attn.q_proj",
                                           "model.layers.1.mlp.down_proj"]
    assert q["quant_method"] == "awq" and q["bits"] == 4


@pytest.mark.parametrize("kept", [["model.layers.0.mlp.down_proj"], ["model.layers.9.mlp.down_proj"]])
def test_awq_mixed_precision_refuses_a_kept_unit_that_is_packed_or_missing(tmp_path, kept):
    from packager.compress.gptq import mark_awq_float_modules

    _awq_checkpoint(tmp_path, ["model.layers.1.mlp.down_proj"], ["model.layers.0.mlp.down_proj"])
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(RuntimeError, match="did not keep"):
        mark_awq_float_modules(tmp_path, kept)
    assert (tmp_path / "config.json").read_text() == before


def test_gptq_quantize_config_keeps_act_order_damping_and_skip_rules():
    kw = quantize_config_kwargs(GPTQArgs.model_validate({"kind": "gptq", "damp_percent": 0.1}), {"-:^x$": {}})
    assert kw["desc_act"] is False and kw["damp_percent"] == 0.1 and kw["dynamic"] == {"-:^x$": {}}
    assert "method" not in kw and "format" not in kw
    assert quantize_config_kwargs(GPTQArgs.model_validate({"kind": "gptq"}), {})["dynamic"] is None


def test_awq_on_a_cpu_packs_with_the_torch_kernel_and_nothing_else_changes_the_backend():
    from gptqmodel.utils.backend import BACKEND

    assert quantize_backend_kwargs(_awq(), "cpu") == {"backend": BACKEND.AWQ_TORCH}
    assert quantize_backend_kwargs(_awq(), "cuda:0") == {}
    assert quantize_backend_kwargs(GPTQArgs.model_validate({"kind": "gptq"}), "cpu") == {}


def _fake_gptqmodel(monkeypatch, calls: dict) -> None:
    """A stand-in for gptqmodel.GPTQModel / QuantizeConfig that records what it was asked and writes an AWQ config."""

    class FakeModel:
        def quantize(self, examples, batch_size, **kw):
            calls["quantize"] = {"n": len(examples), "batch_size": batch_size, **kw}

        def save(self, out):
            cfg = {"model_type": "llama", "quantization_config": {"quant_method": "awq", "format": "gemm",
                                                                  "bits": 4, "group_size": 32, "zero_point": True}}
            Path(out, "config.json").write_text(json.dumps(cfg))
            Path(out, "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")

    class FakeGPTQModel:
        @staticmethod
        def load(path, qcfg, device):
            calls["load"] = {"qcfg": qcfg, "device": device}
            return FakeModel()

    mod = types.ModuleType("gptqmodel")
    mod.GPTQModel = FakeGPTQModel  # type: ignore[attr-defined]
    mod.QuantizeConfig = lambda **kw: kw  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gptqmodel", mod)


def test_apply_awq_asks_gptqmodel_for_awq_and_records_the_method(monkeypatch, tiny_llama_dir, tmp_path):
    from packager.compress import gptq as gptq_mod
    from packager.compress.base import StageContext

    calls: dict = {}
    _fake_gptqmodel(monkeypatch, calls)
    monkeypatch.setattr(gptq_mod, "quantize_backend_kwargs", lambda a, d: {"backend": f"{a.method}@{d}"})
    out = tmp_path / "out"
    out.mkdir()
    texts = ["The quick brown fox jumps over the lazy dog. " * 10] * 6
    rec = gptq_mod.apply_gptq(_awq(group_size=32, n_samples=4, seq_len=64),
                              StageContext(input_dir=tiny_llama_dir, output_dir=out, calibration_texts=texts,
                                           show_progress=False, log=lambda _m: None))
    assert calls["load"]["device"] == "cpu"
    assert calls["load"]["qcfg"]["method"] == "awq" and calls["load"]["qcfg"]["format"] == "gemm"
    assert calls["load"]["qcfg"]["sym"] is False and "dynamic" not in calls["load"]["qcfg"]
    assert calls["quantize"] == {"n": 4, "batch_size": 4, "backend": "awq@cpu"}
    assert rec["method"] == "awq" and rec["scheme"] == "W4A16" and rec["format"] == "gemm"
    assert rec["calibration_samples"] == 4
    assert (out / "tokenizer.json").exists() or (out / "tokenizer_config.json").exists()


def test_parameter_count_reads_awq_qweight_as_packed(tmp_path):
    import torch
    from safetensors.torch import save_file

    from packager.compress.checkpoint import parameter_count_from_headers

    # AWQ GEMM packs 8 int4 along the output dimension: qweight [in, out/8] int32 holds in*out weights
    save_file({"model.layers.0.mlp.down_proj.qweight": torch.zeros(64, 4, dtype=torch.int32),
               "model.layers.0.mlp.down_proj.qzeros": torch.zeros(2, 4, dtype=torch.int32),
               "model.layers.0.mlp.down_proj.scales": torch.zeros(2, 32, dtype=torch.float16),
               "model.norm.weight": torch.zeros(32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq", "bits": 4}}))
    assert parameter_count_from_headers(tmp_path) == 64 * 32 + 32


def test_awq_refuses_output_sizes_its_clip_search_cannot_batch_before_any_work(tiny_llama_dir):
    # the shared tiny Llama: hidden 64, 4 heads, 2 KV heads -> k/v_proj write 32 outputs
    with pytest.raises(ConfigError, match=r"k/v_proj .* is 32"):
        _awq(group_size=32).validate_for(tiny_llama_dir)
    GPTQArgs.model_validate({"kind": "gptq", "group_size": 32}).validate_for(tiny_llama_dir)  # GPTQ has no such limit


def test_awq_reads_each_projection_weights_output_size_not_only_the_config(tmp_path):
    """A pruned model: its config says 256 (a multiple of 64), one MLP weight writes 96 outputs. Refused, by name."""
    import torch
    from safetensors.torch import save_file

    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64, "intermediate_size": 256}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file({"model.layers.0.mlp.up_proj.weight": torch.zeros(96, 128),
               "model.layers.0.mlp.down_proj.weight": torch.zeros(128, 96),
               "model.layers.0.self_attn.q_proj.weight": torch.zeros(128, 128)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.mlp\.up_proj\.weight is 96"):
        _awq(group_size=32).validate_for(tmp_path)
    save_file({"model.layers.0.mlp.up_proj.weight": torch.zeros(256, 128)}, str(tmp_path / "model.safetensors"))
    _awq(group_size=32).validate_for(tmp_path)  # every size a multiple of 64: accepted


def test_awq_on_a_tiny_llama_writes_the_awq_gemm_checkpoint(tmp_path, default_model):
    """Real GPTQModel on a tiny random Llama, on the CPU: every decoder Linear becomes AWQ qweight/qzeros/scales."""
    from packager.compress.base import StageContext
    from packager.compress.checkpoint import tensor_shapes
    from packager.compress.gptq import apply_gptq

    # output sizes that are multiples of 64, as AWQ's clip search needs (head_dim 64)
    tiny_llama_dir = _build_tiny_llama(tmp_path / "tiny", default_model.path, hidden=128, heads=2, kv_heads=1)
    _awq(group_size=32).validate_for(tiny_llama_dir)

    texts = ["The quick brown fox jumps over the lazy dog. " * 20, "def f(x):\n    return x * 2\n" * 20] * 8
    out = tmp_path / "out"
    out.mkdir()
    rec = apply_gptq(_awq(group_size=32, n_samples=8, seq_len=64),
                     StageContext(input_dir=tiny_llama_dir, output_dir=out, calibration_texts=texts,
                                  show_progress=False, log=lambda _m: None))
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "awq" and q["bits"] == 4 and q["group_size"] == 32 and q["zero_point"] is True
    assert rec["method"] == "awq" and rec["format"] == "gemm"
    keys = set(tensor_shapes(out))
    linears = {k.rsplit(".", 1)[0] for k in keys if k.endswith((".qweight", "_proj.weight"))}
    assert len(linears) == 4 * 7
    for m in linears:
        assert {f"{m}.qweight", f"{m}.qzeros", f"{m}.scales"} <= keys and f"{m}.weight" not in keys, m
