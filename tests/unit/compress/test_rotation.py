"""The run-time Hadamard rotation of down_proj's inputs (packager.compress.rotation): its matrix, that the float
model is unchanged by it, what the W8A8 stage writes with it, and the engine side (launcher and CPU patch)."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from packager.compress.base import StageContext
from packager.compress.int8 import W8A8Int8Args, apply_w8a8_int8
from packager.compress.rotation import (
    SCHEME,
    BlockHadamard,
    block_for,
    down_linears,
    install_checked,
    sylvester,
)
from packager.errors import ConfigError

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 6, "def f(x):\n    return x * 2\n" * 4,
         "Invoice 4411: 3 items at $12.50, total $37.50. Paid on 2024-03-01." * 3]


def test_sylvester_is_a_hadamard_matrix_and_other_sizes_are_refused():
    for n in (1, 2, 8, 64):
        h = sylvester(n)
        assert set(h.unique().tolist()) <= {-1.0, 1.0}
        assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64))
    for bad in (0, 3, 96):
        with pytest.raises(ConfigError, match="power of 2"):
            sylvester(bad)


def test_the_rotation_is_orthogonal_seeded_and_leaves_a_linear_unchanged():
    rot = BlockHadamard(16, seed=3, targets=("m.down_proj",))
    m = rot.matrix()
    assert torch.allclose(m @ m.T, torch.eye(16, dtype=torch.float64), atol=1e-12)
    assert torch.equal(rot.stored(), BlockHadamard(16, 3, ()).stored())  # the seed fixes the signs
    assert not torch.equal(rot.stored(), BlockHadamard(16, 4, ()).stored())
    assert set(rot.stored().abs().unique().tolist()) == {1.0}  # stored unnormalized, as compressed-tensors does
    x, w = torch.randn(5, 48, dtype=torch.float64), torch.randn(7, 48, dtype=torch.float64)
    assert torch.allclose(rot.rotate(x) @ rot.rotate(w).T, x @ w.T, atol=1e-10)
    # block-diagonal: channel block 1 of the output depends on channel block 1 of the input only
    x2 = x.clone()
    x2[:, 16:32] += 1.0
    assert torch.equal(rot.rotate(x2)[:, :16], rot.rotate(x)[:, :16])
    assert not torch.equal(rot.rotate(x2)[:, 16:32], rot.rotate(x)[:, 16:32])
    with pytest.raises(ConfigError, match="does not divide"):
        rot.check_width("m.down_proj", 40)


def test_an_outlier_channel_is_spread_over_its_block():
    """What the rotation is for: a token whose range one channel dominates gets a far smaller range."""
    rot = BlockHadamard(64, seed=0, targets=())
    x = torch.randn(1, 128) * 0.1
    x[0, 5] = 50.0
    assert rot.rotate(x).abs().max() < x.abs().max() / 6  # 50 / sqrt(64) plus the rest


def test_config_is_the_compressed_tensors_transform_vllm_reads():
    from compressed_tensors.transform import TransformConfig
    from compressed_tensors.utils import is_match

    rot = BlockHadamard(128, seed=0, targets=("model.layers.0.mlp.down_proj",))
    cfg = TransformConfig.model_validate(rot.config())
    scheme = cfg.config_groups[SCHEME]
    assert scheme.type == "random-hadamard" and scheme.head_dim == 128
    (args,) = scheme.apply
    assert args.location == "input" and args.is_online() and not args.inverse
    lin = torch.nn.Linear(4, 4)
    assert is_match("model.layers.0.mlp.down_proj", lin, args.targets)
    for other in ("model.layers.0.mlp.up_proj", "model.layers.0.mlp.experts.3.down_proj",
                  "model.layers.0.mlp.shared_expert.down_proj"):  # the engine's target is exactly what was rotated
        assert not is_match(other, lin, args.targets)
        assert down_linears([other]) == []
    extra = rot.extra_tensors("model.layers.0.mlp.down_proj.weight", torch.bfloat16)
    assert list(extra) == [f"model.layers.0.mlp.down_proj.{SCHEME}_input.weight"]
    assert extra[f"model.layers.0.mlp.down_proj.{SCHEME}_input.weight"].dtype == torch.bfloat16
    assert rot.extra_tensors("model.layers.0.mlp.up_proj.weight", torch.bfloat16) == {}
    assert down_linears(["a.mlp.up_proj", "a.mlp.down_proj", "lm_head"]) == ["a.mlp.down_proj"]


def test_the_block_is_the_largest_power_of_2_that_divides_every_width():
    assert block_for([1536], 128) == 128
    assert block_for([1536, 1536], 1024) == 512
    assert block_for([1376], 128) == 32  # 1376 = 32 * 43
    assert block_for([1536, 1000], 128) == 8
    assert block_for([999], 128) == 1


class _Bypass(torch.nn.Module):
    """A model that reads down_proj's weight without calling the module: rotating its weight changes it."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 32)
        self.mlp = torch.nn.Module()
        self.mlp.down_proj = torch.nn.Linear(32, 32, bias=False)

    def forward(self, input_ids, use_cache=False):
        return SimpleNamespace(logits=self.emb(input_ids) @ self.mlp.down_proj.weight.T @ self.emb.weight.T)


def test_install_checks_the_float_model_is_unchanged_and_takes_a_rotation_that_changes_it_back():
    model = _Bypass().eval()
    w = model.mlp.down_proj.weight.detach().clone()
    rot = BlockHadamard(16, 0, ("mlp.down_proj",))
    ids = torch.randint(0, 50, (2, 9))
    rec: dict = {}
    assert install_checked(model, rot, ids, rec) is None
    assert "changed the float model" in rec["rotation_skipped"] and rec["rotation_float_kl"] > 1e-5
    assert not model.mlp.down_proj._forward_pre_hooks  # nothing left installed
    assert torch.allclose(model.mlp.down_proj.weight, w, atol=1e-6)  # the weight rotated back


def test_install_keeps_a_llama_unchanged(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    names = down_linears([n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)])
    assert len(names) == 4
    rec: dict = {}
    handles = install_checked(model, BlockHadamard(32, 0, tuple(names)), torch.randint(0, 1000, (2, 12)), rec)
    assert len(handles) == 4 and rec["rotation_float_kl"] < 1e-6


def test_stage_args_refuse_a_block_that_is_no_power_of_2():
    for bad in (96, 1, 8192):
        with pytest.raises(ValidationError, match="power of 2"):
            W8A8Int8Args(down_rotation_block=bad)


def test_the_stage_narrows_the_block_or_skips_the_rotation_where_it_cannot_apply(tiny_llama_dir, tmp_path):
    from packager.compress.int8 import _rotation
    from packager.config import EngineConfig

    def ctx(d, engine=None):
        return StageContext(d, tmp_path, engine=engine or EngineConfig())

    rot, why = _rotation(W8A8Int8Args(down_rotation_block=4096), ctx(tiny_llama_dir))  # MLP width 128
    assert why == "" and rot.block == 128 and len(rot.targets) == 4
    assert _rotation(W8A8Int8Args(), ctx(tiny_llama_dir)) == (None, "")
    rot, why = _rotation(W8A8Int8Args(down_rotation_block=128),
                         ctx(tiny_llama_dir, EngineConfig(target="gpu", tensor_parallel_size=2)))
    assert rot is None and "tensor parallelism" in why
    rot, why = _rotation(W8A8Int8Args(down_rotation_block=8), ctx(tiny_llama_dir))
    assert rot is None and "no power of 2 from 16 to 8" in why


def test_stage_writes_rotated_weights_the_transform_and_its_config(tiny_llama_dir, tmp_path):
    from safetensors import safe_open

    args = W8A8Int8Args(smoothquant_alpha="auto", alpha_candidates=[0.5], search_samples=2, seq_len=48,
                        search_seq_len=48, activations="asymmetric", down_rotation_block=32, rotation_seed=7,
                        mixed_precision={"target_kl": 1e-12, "max_float_share": 0.3})
    out = tmp_path / "out"
    out.mkdir()
    rep = apply_w8a8_int8(args, StageContext(tiny_llama_dir, out, calibration_texts=TEXTS, show_progress=False,
                                             log=lambda _m: None))
    assert rep["rotation"] == {"block": 32, "seed": 7, "linears": 4, "type": "random-hadamard",
                               "target": r"re:.*\.mlp\.down_proj$"}
    assert rep["rotation_float_kl"] < 1e-6
    # SmoothQuant leaves the rotated Linears alone (the up_proj -> down_proj group is not smoothed)
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["transform_config"]["config_groups"][SCHEME]["head_dim"] == 32
    rot = BlockHadamard(32, 7, tuple(f"model.layers.{i}.mlp.down_proj" for i in range(4)))
    with safe_open(str(tiny_llama_dir / "model.safetensors"), "pt") as f:
        src = {k: f.get_tensor(k) for k in f.keys()}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        for i in range(4):
            name = f"model.layers.{i}.mlp.down_proj"
            assert torch.equal(f.get_tensor(f"{name}.{SCHEME}_input.weight").float(), rot.stored().float())
            w = f.get_tensor(f"{name}.weight")
            if f"{name}.weight_scale" in f.keys():  # int8: dequantized, close to the rotated float weight
                w = w.float() * f.get_tensor(f"{name}.weight_scale").float()
            want = rot.rotate(src[f"{name}.weight"].float())
            assert float((w.float() - want).norm() / want.norm()) < 0.02
            assert float((w.float() - src[f"{name}.weight"].float()).norm() / want.norm()) > 0.5  # really rotated
        assert not any(SCHEME in k for k in f.keys() if ".down_proj." not in k)


def test_the_launcher_serves_checkpoints_with_transforms(tmp_path):
    from packager.config import EngineConfig
    from packager.engines.vllm import server_entry

    plain, rotated = tmp_path / "plain", tmp_path / "rotated"
    for d, q in ((plain, {"quant_method": "compressed-tensors"}),
                 (rotated, {"quant_method": "compressed-tensors",
                            "transform_config": BlockHadamard(64, 0, ()).config()})):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"quantization_config": q}))
    eng = EngineConfig()
    assert server_entry(eng, str(plain))[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert server_entry(eng, str(rotated)) == [sys.executable, "-m", "packager.engines.vllm_serve", str(rotated),
                                               "--api-server-count", "1"]
    assert server_entry(eng, str(tmp_path / "missing"))[2] == "vllm.entrypoints.openai.api_server"


def test_the_launcher_gives_vllm_cpu_transforms_a_linear():
    pytest.importorskip("vllm")
    from vllm.model_executor.layers.quantization.compressed_tensors.transform import module as transform

    from packager.engines.vllm_serve import cpu_transforms

    assert hasattr(transform.HadamardTransform, "cpu_linear")  # given when the launcher module was imported
    assert cpu_transforms() is False  # and only once
    x, w = torch.randn(3, 8), torch.randn(8, 8)
    assert torch.equal(transform.HadamardTransform.cpu_linear(x, w, None), x @ w.T)
