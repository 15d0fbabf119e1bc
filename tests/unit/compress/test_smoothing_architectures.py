"""SmoothQuant beyond Llama (packager.compress.smoothing): on tiny random decoders of seven architectures, the
groups found, the norm forms probed, and the property everything rests on: the smoothed float model computes
what the original did, with the very tensors the checkpoint writer gets. Also the layer-resumed simulation,
which must match a full pass on every architecture it claims to resume.

Norm weights are randomised (a fresh model's are all 1 or all 0, which would hide a wrong division)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from packager.compress import int8_search as S
from packager.compress import smoothing as SM
from packager.compress.ct_format import select_linears

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 5, "def f(x):\n    return x * 2\n" * 4,
         "Invoice 4411: 3 items at $12.50, total $37.50." * 3]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# architecture: the kinds of group smoothed once checked, and the form of its norms
EXPECTED = {
    "llama": ({"attention", "mlp", "down"}, "scale"),
    "qwen2": ({"attention", "mlp", "down"}, "scale"),
    "qwen3": ({"attention", "mlp", "down"}, "scale"),
    "gemma2": ({"attention", "mlp", "down"}, "offset"),  # x_hat * (1 + w), and the MLP's own pre-norm
    "gemma3": ({"attention", "mlp", "down"}, "offset"),
    "olmo2": ({"down"}, None),  # its post_attention_layernorm normalizes the attention's output: not smoothable
    "phi3": (set(), None),  # fused qkv_proj and gate_up_proj: nothing to smooth
}


def _config(arch: str):
    import transformers as T

    common = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return {
        "llama": lambda: T.LlamaConfig(**common),
        "qwen2": lambda: T.Qwen2Config(**common),
        "qwen3": lambda: T.Qwen3Config(**common, head_dim=16),
        "gemma2": lambda: T.Gemma2Config(**common, head_dim=16),
        # one sliding-window layer (window 8, shorter than the texts) and one full-attention layer
        "gemma3": lambda: T.Gemma3TextConfig(**common, head_dim=16, sliding_window=8,
                                             layer_types=["sliding_attention", "full_attention"]),
        "olmo2": lambda: T.Olmo2Config(**common, eos_token_id=2, pad_token_id=1),
        "phi3": lambda: T.Phi3Config(**common, eos_token_id=2, pad_token_id=1, bos_token_id=1),
    }[arch]()


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def arch_dir(request, tmp_path_factory, default_model) -> tuple[str, Path]:
    from transformers import AutoModelForCausalLM

    arch = request.param
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(arch))
    with torch.no_grad():
        for _n, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    out = tmp_path_factory.mktemp(f"tiny-{arch}")
    model.save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        if (default_model.path / name).exists():
            shutil.copy(default_model.path / name, out / name)
    return arch, out


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


def test_groups_forms_and_exactness_per_architecture(arch_dir):
    arch, path = arch_dir
    kinds, form = EXPECTED[arch]
    model, batches = S._load(path, TEXTS, 48, "cpu")
    modules = dict(model.named_modules())
    groups = SM.smooth_groups(modules)
    if form is not None:
        norms = {g.form for g in groups if g.kind != "down"}
        assert norms == {form}
    if arch.startswith("gemma"):
        # the MLP reads pre_feedforward_layernorm, not post_attention_layernorm (which follows the attention)
        mlp = [g.prod for g in groups if g.kind == "mlp"]
        assert mlp and all(p.endswith("pre_feedforward_layernorm") for p in mlp)
    act_max, w_max = SM.activation_maxima(model, batches, groups, False), SM.weight_maxima(modules, groups)
    sim = S.Simulator(model, batches, [], SM.smoothed_tensors(groups))
    record: dict = {}
    kept = SM.exact_kinds(sim, groups, act_max, w_max, record, lambda _m: None)
    sim.smooth({})
    sim.close()
    assert {g.kind for g in kept} == kinds
    assert set(record.get("smoothing_dropped", {})) == {g.kind for g in groups} - kinds

    # the writer's transform, applied to a fresh copy's state dict, leaves the logits where they were
    factors = SM.factors_for(kept, act_max, w_max, 0.5)
    fresh = S._load(path, TEXTS, 48, "cpu")[0]
    ref = _logits(fresh, batches[0])
    pre = SM.apply_factors(factors)
    changed = [k for k in fresh.state_dict() if k in factors]
    assert len(changed) == len(factors)  # every factor names a real tensor
    fresh.load_state_dict({k: pre(k, v) for k, v in fresh.state_dict().items()})
    assert torch.allclose(_logits(fresh, batches[0]), ref, atol=2e-4, rtol=1e-4)


def test_search_smooths_only_what_is_exact_and_resumes_only_where_it_can(arch_dir):
    arch, path = arch_dir
    kinds, _ = EXPECTED[arch]
    quant, _ = select_linears(path, ["lm_head"])
    res = S.search(path, TEXTS, alpha="auto", alpha_candidates=[0.5], mixed=None, quantizable=quant, seq_len=48,
                   search_samples=3, search_seq_len=48, show_progress=False, log=lambda _m: None)
    if not kinds:
        assert res.alpha is None and res.factors == {} and "alpha_kl" not in res.record
    else:
        assert set(res.record["alpha_kl"]) == {"none", "0.5"}
    # resuming at a layer from cached float inputs gives a full pass's figure, whatever the layers' masks
    model, batches = S._load(path, TEXTS, 48, "cpu")
    sim = S.Simulator(model, batches, quant, set())
    sim.smooth({})
    one = {q for q in quant if ".layers.1." in q}
    full = sim.kl(one)
    assert full > 0
    if sim.resumable:
        assert sim.kl(one, start=1) == pytest.approx(full, rel=1e-4, abs=1e-12)
    else:  # where it cannot resume, a start is ignored: the same full pass
        assert sim.kl(one, start=1) == full
    assert sim.resumable == (arch != "gemma2")  # Gemma 2 caps its final logits after lm_head
    sim.close()


def test_norm_forms_are_probed_not_named():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    assert SM.norm_form(LlamaRMSNorm(8)) == "scale"
    assert SM.norm_form(GemmaRMSNorm(8)) == "offset"
    assert SM.norm_form(torch.nn.LayerNorm(8)) == "scale"  # with a bias: x_hat * w + b
    assert SM.norm_form(torch.nn.Linear(8, 8)) is None  # a 2-D weight
    assert SM.norm_form(torch.nn.ReLU()) is None


def test_offset_division_keeps_a_gemma_norm_equivalent():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    norm = GemmaRMSNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([-0.5, 0.0, 0.3, 1.2, -0.9, 2.0]))
    x = torch.randn(3, 6)
    s = torch.tensor([0.5, 2.0, 1.0, 4.0, 0.25, 3.0])
    want = norm(x) / s
    pre = SM.apply_factors({"n.weight": {"div_offset": s}})
    with torch.no_grad():
        norm.weight.copy_(pre("n.weight", norm.weight))
    assert torch.allclose(norm(x), want, atol=1e-6)
