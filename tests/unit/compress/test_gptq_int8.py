"""GPTQ rounding of per-channel int8 weights (packager.compress.gptq_int8) and the W8A8 stage's
`weight_rounding: gptq`, on random matrices and a tiny random Llama."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from packager.compress import int8_search as S
from packager.compress.base import StageContext
from packager.compress.ct_format import quantize_int8_per_channel, select_linears
from packager.compress.gptq_int8 import gptq_int8, gptq_round, output_error
from packager.compress.int8 import W8A8Int8Args, apply_w8a8_int8

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 6, "def f(x):\n    return x * 2\n" * 4,
         "Invoice 4411: 3 items at $12.50, total $37.50. Paid on 2024-03-01." * 3,
         "Bonjour, comment allez-vous ? Très bien, merci. " * 5]


def _correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * 0.3 + torch.eye(d)
    scales = torch.logspace(-1, 1, d)  # some channels 100x larger than others, like LLM activations
    return (torch.randn(n, d, generator=g) @ mix) * scales


def test_gptq_lowers_the_output_error_of_round_to_nearest_on_correlated_inputs():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 96, generator=g) * 0.05
    x = _correlated_inputs(512, 96)
    h = x.t() @ x / x.shape[0]
    q, s = gptq_int8(w, h)
    qn, sn = quantize_int8_per_channel(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert torch.equal(s, sn)  # the same per-row grid: only the rounding differs
    e_gptq, e_near = output_error(w, q, s, h), output_error(w, qn, sn, h)
    assert e_gptq < 0.9 * e_near
    # measured on the inputs themselves: the layer's output moves less
    assert ((x @ (w - q.float() * s).t()) ** 2).sum() < ((x @ (w - qn.float() * sn).t()) ** 2).sum()


def test_gptq_is_round_to_nearest_when_inputs_are_uncorrelated():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(2))
    q, s = gptq_int8(w, torch.eye(32) * 3.0)
    qn, sn = quantize_int8_per_channel(w)
    assert torch.equal(q, qn) and torch.equal(s, sn)


def test_a_column_never_active_is_zeroed_and_the_rest_still_rounds():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    x = _correlated_inputs(256, 16)
    x[:, 5] = 0.0
    q, _ = gptq_int8(w, x.t() @ x)
    assert torch.all(q[:, 5] == 0)
    assert int((q != 0).sum()) > 8 * 15 // 2


def test_not_positive_definite_hessian_raises():
    with pytest.raises(torch.linalg.LinAlgError):
        gptq_int8(torch.randn(4, 4), -torch.eye(4), damp=1e-6)


def test_round_over_the_tiny_llama_in_one_pass_or_in_chunks_gives_the_same_weights(tiny_llama_dir):
    model, batches = S._load(tiny_llama_dir, TEXTS, 48, "cpu")
    quant, _ = select_linears(tiny_llama_dir, ["lm_head"])
    units = S.units_of(dict(model.named_modules()), quant)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one = gptq_round(model, batches, units, show_progress=False)
    chunked = gptq_round(model, batches, units, show_progress=False, max_hessian_bytes=64 * 64 * 4)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # weights read, not changed
    assert set(one.weights) == set(quant) and one.passes == 1 and chunked.passes > 1
    assert one.tokens == sum(int(b.numel()) for b in batches)
    for n in quant:
        assert torch.equal(one.weights[n][0], chunked.weights[n][0])
    assert one.output_error_vs_nearest is not None and one.output_error_vs_nearest < 1.0
    assert one.fallbacks == []


def test_w8a8_stage_with_gptq_rounding_writes_those_weights_and_lowers_the_simulated_kl(tiny_llama_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = W8A8Int8Args(smoothquant_alpha=0.5, weight_rounding="gptq", n_samples=4, seq_len=48,
                        search_samples=4, search_seq_len=48)
    assert args.needs_calibration()
    rep = apply_w8a8_int8(args, StageContext(tiny_llama_dir, out, calibration_texts=TEXTS, show_progress=False,
                                             log=lambda _m: None))
    assert rep["weight_rounding"] == "gptq"
    quant, _ = select_linears(tiny_llama_dir, ["lm_head"])
    assert rep["gptq_rounded_tensors"] == rep["quantized_tensors"] == len(quant)
    g = rep["gptq"]
    assert g["output_error_vs_nearest"] < 1.0 and g["calibration_tokens"] > 0
    assert rep["kl_all_quantized"] < rep["kl_all_quantized_nearest"]
    # the int8 weights written are those of the smoothed float weights (the relative error would be near 1
    # for weights of another tensor or of the unsmoothed model)
    assert rep["weight_relative_error_max"] < 0.05
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        for n in quant:
            q = f.get_tensor(f"{n}.weight")
            assert q.dtype == torch.int8 and f.get_tensor(f"{n}.weight_scale").shape == (q.shape[0], 1)


def test_unknown_rounding_is_refused():
    with pytest.raises(ValueError):
        W8A8Int8Args(weight_rounding="awq")


def test_tensors_made_inside_the_rounding_follow_the_weights_device():
    """On a GPU the Gram matrix and weights are CUDA tensors: whatever the rounding makes itself (the damping's
    identity) must be made there too. The meta device stands in for CUDA here: mixing it with a CPU tensor fails
    the same way ("cuda:0 and cpu" was the GPU release's error)."""
    import torch

    from packager.compress.gptq_int8 import gptq_int8

    q, s = gptq_int8(torch.randn(8, 16, device="meta"), torch.randn(16, 16, device="meta"))
    assert q.device.type == s.device.type == "meta" and q.shape == (8, 16) and q.dtype == torch.int8
    assert s.shape == (8, 1)


def test_smoothing_factors_kept_on_the_cpu_apply_to_weights_elsewhere():
    import torch

    from packager.compress.smoothing import apply_factors

    f = torch.full((16,), 2.0)
    pre = apply_factors({"a.weight": {"mul": f}, "n.weight": {"div": f}, "o.weight": {"div_offset": f}})
    for name, t in (("a.weight", torch.ones(8, 16)), ("n.weight", torch.ones(16)), ("o.weight", torch.ones(16))):
        out = pre(name, t.to("meta"))
        assert out.device.type == "meta" and out.shape == t.shape
    # and on the CPU the arithmetic is unchanged
    assert torch.equal(pre("a.weight", torch.ones(8, 16)), torch.full((8, 16), 2.0))
    assert torch.equal(pre("n.weight", torch.ones(16)), torch.full((16,), 0.5))
    assert torch.allclose(pre("o.weight", torch.ones(16)), torch.zeros(16))
