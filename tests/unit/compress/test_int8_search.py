"""The accuracy-aware W8A8 search (packager.compress.int8_search) on a tiny random Llama: the engine
simulation, the SmoothQuant strength choice, the mixed-precision selection and what the stage writes."""
from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from packager.compress import int8_search as S
from packager.compress.base import StageContext
from packager.compress.ct_format import select_linears
from packager.compress.int8 import W8A8Int8Args, apply_w8a8_int8
from packager.errors import ConfigError

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 6, "def f(x):\n    return x * 2\n" * 4,
         "Invoice 4411: 3 items at $12.50, total $37.50. Paid on 2024-03-01." * 3,
         "Bonjour, comment allez-vous ? Très bien, merci. " * 5]


def _sim(tiny_llama_dir):
    model, batches = S._load(tiny_llama_dir, TEXTS, 48, "cpu")
    quant, _ = select_linears(tiny_llama_dir, ["lm_head"])
    return model, S.Simulator(model, batches, quant, set()), quant


def test_fake_quant_tokens_is_per_token_int8():
    x = torch.tensor([[[0.5, -1.0, 0.25], [100.0, 1.0, -3.0]]])
    q = S.fake_quant_tokens(x)
    # each token's largest value is exact, and every value lies on that token's grid of max/127
    assert torch.allclose(q.abs().amax(dim=-1), x.abs().amax(dim=-1))
    steps = q / (x.abs().amax(dim=-1, keepdim=True) / 127)
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert float((q - x).abs().max()) <= 100.0 / 127 / 2 + 1e-5


def test_asymmetric_tokens_use_a_zero_point_and_the_whole_int8_range():
    x = torch.tensor([[[0.0, 1.0, 2.0, 4.0], [-3.0, 0.0, 0.5, 1.0], [5.0, 6.0, 7.0, 9.0]]])
    q = S.fake_quant_tokens_asymmetric(x)
    # every value within half a step of its token's own range in 255 steps, and 0 exact inside that range
    step = (x.amax(dim=-1, keepdim=True) - x.amin(dim=-1, keepdim=True)) / 255
    assert bool(((q - x).abs() <= step / 2 + 1e-6).all())
    assert float(q[0, 0, 0]) == 0.0 and float(q[0, 1, 1]) == 0.0
    # a token of one sign loses about half the step of the symmetric scheme
    skewed = torch.linspace(0.0, 1.0, 97).reshape(1, 1, -1)
    err_asym = float((S.fake_quant_tokens_asymmetric(skewed) - skewed).abs().max())
    err_sym = float((S.fake_quant_tokens(skewed) - skewed).abs().max())
    assert err_asym <= 1.0 / 255 / 2 + 1e-6 < err_sym
    assert S.activation_round_trip("asymmetric") is S.fake_quant_tokens_asymmetric
    assert S.activation_round_trip("symmetric") is S.fake_quant_tokens


def test_the_simulation_rounds_activations_as_the_engine_does():
    """The simulated per-token rounding equals vLLM's own int8 quantization kernel, value for value, in both
    schemes (rows of mixed signs, of one sign, and of different scales)."""
    ops = pytest.importorskip("vllm._custom_ops")
    torch.manual_seed(0)
    x = torch.randn(6, 64) * torch.tensor([1.0, 2.0, 0.5, 3.0, 0.1, 40.0]).unsqueeze(1) \
        + torch.tensor([0.0, 1.0, -0.3, 2.0, 0.05, 0.0]).unsqueeze(1)
    x[4] = x[4].abs() + 0.2  # all positive: the zero point lies outside int8
    q, s, azp = ops.scaled_int8_quant(x, symmetric=False)
    engine = (q.float() - azp.float().view(-1, 1)) * s.view(-1, 1)
    assert torch.equal(engine, S.fake_quant_tokens_asymmetric(x))
    q, s, _ = ops.scaled_int8_quant(x, symmetric=True)
    assert torch.equal(q.float() * s.view(-1, 1), S.fake_quant_tokens(x))


def test_units_group_the_linears_the_engine_fuses(tiny_llama_dir):
    model, sim, quant = _sim(tiny_llama_dir)
    units = dict(S.units_of(dict(model.named_modules()), quant))
    assert len(units) == 4 * 4  # 4 layers x (q/k/v, o, gate/up, down)
    assert units["model.layers.0.self_attn.q/k/v"] == [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    assert units["model.layers.3.mlp.gate/up"] == ["model.layers.3.mlp.gate_proj", "model.layers.3.mlp.up_proj"]
    assert sorted(n for members in units.values() for n in members) == sorted(quant)
    sim.close()


def test_simulation_is_exact_in_float_and_resumes_at_a_layer(tiny_llama_dir):
    _, sim, quant = _sim(tiny_llama_dir)
    sim.smooth({})
    assert sim.kl(set()) < 1e-9
    everything = sim.kl(set(quant))
    assert everything > 1e-9  # quantizing moves the model
    one = {"model.layers.2.mlp.down_proj"}
    # starting at layer 2 from the cached float inputs gives the same figure as a full pass
    assert sim.kl(one, start=2) == pytest.approx(sim.kl(one), rel=1e-4, abs=1e-12)
    assert sim.resumable
    sim.close()


def test_samples_of_one_length_run_as_one_batch_with_the_same_kl(tiny_llama_dir):
    """stack_equal_lengths: one [k, n] batch per length, in first-seen order; the simulator's KL over the stacked
    batches is the one over the samples one at a time (no padding; every token counted once)."""
    model, batches = S._load(tiny_llama_dir, TEXTS, 48, "cpu")
    cut = [b[:, :n] for b, n in zip(batches, (16, 16, 12, 16))]
    stacked = S.stack_equal_lengths(cut)
    assert [tuple(b.shape) for b in stacked] == [(3, 16), (1, 12)]
    assert torch.equal(stacked[0][1], cut[1][0]) and torch.equal(stacked[1][0], cut[2][0])
    quant, _ = select_linears(tiny_llama_dir, ["lm_head"])
    one = {"model.layers.1.mlp.down_proj", "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"}
    figures = []
    for bs in (cut, stacked):
        sim = S.Simulator(model, bs, quant, set())
        sim.smooth({})
        figures.append((sim.kl(set(quant)), sim.kl(one, start=1)))
        assert sim.resumable
        sim.kl(set())  # the float weights back in the model the next simulator starts from
        sim.close()
    assert figures[1][0] > 1e-9 and figures[1][1] > 1e-9
    assert figures[1][0] == pytest.approx(figures[0][0], rel=1e-4)
    assert figures[1][1] == pytest.approx(figures[0][1], rel=1e-4)


def test_auto_strength_is_the_lowest_calibration_kl(tiny_llama_dir):
    quant, _ = select_linears(tiny_llama_dir, ["lm_head"])
    res = S.search(tiny_llama_dir, TEXTS, alpha="auto", alpha_candidates=[0.2, 0.5, 0.8], mixed=None,
                   quantizable=quant, seq_len=48, search_samples=3, search_seq_len=48, show_progress=False,
                   log=lambda _m: None)
    tried = res.record["alpha_kl"]
    assert set(tried) == {"none", "0.2", "0.5", "0.8"}
    best = min(tried, key=lambda k: tried[k])
    assert res.alpha == (None if best == "none" else float(best))
    # the figure reported for the chosen strength is the one measured for it
    assert res.record["kl_all_quantized"] == pytest.approx(tried[best], rel=1e-6)
    assert bool(res.factors) == (res.alpha is not None)


def test_mixed_precision_keeps_units_within_the_share_when_the_target_is_out_of_reach(tiny_llama_dir, tmp_path):
    args = W8A8Int8Args(smoothquant_alpha=None, search_samples=2, seq_len=48, search_seq_len=48,
                        mixed_precision={"target_kl": 1e-12, "max_float_share": 0.3})
    out = tmp_path / "out"
    out.mkdir()
    rep = apply_w8a8_int8(args, StageContext(tiny_llama_dir, out, calibration_texts=TEXTS, show_progress=False,
                                             log=lambda _m: None))
    mp = rep["mixed_precision"]
    assert mp["met"] is False and mp["kept_float"]
    assert 0 < mp["weight_share_float"] <= 0.3
    assert mp["kl"] < rep["kl_all_quantized"]  # keeping the most sensitive units helps
    assert set(mp["sensitivity"]) == {f"model.layers.{i}.{u}" for i in range(4)
                                      for u in ("self_attn.q/k/v", "self_attn.o", "mlp.gate/up", "mlp.down")}
    # every Linear of a kept unit is in the checkpoint's ignore list and written in float
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    kept_linears = set(rep["float_linear_layers"]) - {"lm_head"}
    assert kept_linears and kept_linears <= set(cfg["ignore"])
    units = {u.rsplit(".", 1)[0] for u in mp["kept_float"]}
    assert all(any(n.startswith(u + ".") for u in units) for n in kept_linears)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        for n in kept_linears:
            assert f"{n}.weight_scale" not in names and f.get_tensor(f"{n}.weight").dtype == torch.bfloat16


def test_mixed_precision_keeps_nothing_when_int8_already_meets_the_target(tiny_llama_dir, tmp_path):
    args = W8A8Int8Args(smoothquant_alpha=None, search_samples=2, seq_len=48, search_seq_len=48,
                        mixed_precision={"target_kl": 5.0, "max_float_share": 0.5})
    out = tmp_path / "out"
    out.mkdir()
    rep = apply_w8a8_int8(args, StageContext(tiny_llama_dir, out, calibration_texts=TEXTS, show_progress=False,
                                             log=lambda _m: None))
    assert rep["mixed_precision"]["met"] is True and rep["mixed_precision"]["kept_float"] == []
    assert rep["float_linear_layers"] == ["lm_head"]


def test_asymmetric_activations_are_simulated_and_written_for_the_engine(tiny_llama_dir, tmp_path, monkeypatch):
    calls = {"symmetric": 0, "asymmetric": 0}

    def spy(kind, fn):
        def wrapped(x):
            calls[kind] += 1
            return fn(x)
        return wrapped

    monkeypatch.setattr(S, "fake_quant_tokens", spy("symmetric", S.fake_quant_tokens))
    monkeypatch.setattr(S, "fake_quant_tokens_asymmetric", spy("asymmetric", S.fake_quant_tokens_asymmetric))
    for acts in ("symmetric", "asymmetric"):
        before = dict(calls)
        args = W8A8Int8Args(smoothquant_alpha=None, search_samples=2, seq_len=48, search_seq_len=48,
                            mixed_precision={"target_kl": 5.0, "max_float_share": 0.5}, activations=acts)
        out = tmp_path / acts
        out.mkdir()
        rep = apply_w8a8_int8(args, StageContext(tiny_llama_dir, out, calibration_texts=TEXTS, show_progress=False,
                                                 log=lambda _m: None))
        # the search simulated the scheme the checkpoint asks the engine for, and only that one
        other = "asymmetric" if acts == "symmetric" else "symmetric"
        assert calls[acts] > before[acts] and calls[other] == before[other]
        qc = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
        assert qc["input_activations"]["symmetric"] is (acts == "symmetric")
        assert qc["input_activations"]["dynamic"] is True and qc["input_activations"]["strategy"] == "token"
        assert qc["weights"]["symmetric"] is True  # the engine's int8 kernels take symmetric weights only
        assert rep["activations"] == acts


@pytest.mark.parametrize("bad", [{"smoothquant_alpha": 1.5}, {"smoothquant_alpha": "best"},
                                 {"activations": "per-tensor"},
                                 {"alpha_candidates": [0.5, -0.1]},
                                 {"mixed_precision": {"target_kl": 0}},
                                 {"mixed_precision": {"max_float_share": 1.2}},
                                 {"mixed_precision": {"target": 0.1}}])
def test_bad_search_arguments_are_refused_at_parse_time(bad):
    with pytest.raises(ValidationError):
        W8A8Int8Args(**bad)


def test_search_needs_calibration_text(tiny_llama_dir):
    assert W8A8Int8Args(mixed_precision={}).needs_calibration() is True
    assert W8A8Int8Args(smoothquant_alpha="auto").needs_calibration() is True
    quant, _ = select_linears(tiny_llama_dir, ["lm_head"])
    with pytest.raises(ConfigError, match="calibration texts"):
        S.search(tiny_llama_dir, [], alpha="auto", alpha_candidates=[0.5], mixed=None, quantizable=quant,
                 seq_len=48, search_samples=2, search_seq_len=48, show_progress=False)
