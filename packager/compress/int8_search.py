"""Accuracy-aware W8A8 int8: the SmoothQuant strength chosen on calibration KL, then mixed precision.

Why own code: llm-compressor ships this recipe (SmoothQuant, then quantize, with an `ignore` list), but its
pins clash with this stack (transformers 5, compressed-tensors 0.17), so the pieces are implemented here
on plain torch and transformers. The output format is the same compressed-tensors W8A8 checkpoint vLLM loads.

How it works, all on calibration text and the float32 model in memory:
  1. Simulate what the engine computes: every quantized Linear sees its input rounded to int8 per token
     (as vLLM's dynamic per-token activations: symmetric, scale = max|x| / 127, or with `activations:
     asymmetric` a zero point and scale = (max x - min x) / 255) and its weight rounded to
     int8 per output channel. The simulated model's next-token distributions are compared with the float
     model's by KL over the whole vocabulary, at every position of every calibration sample.
  2. SmoothQuant strength: for each candidate alpha (and "no smoothing") the smoothed, simulated model's
     KL is measured; the lowest wins. Smoothing covers q/k/v after input_layernorm, gate/up after the norm
     in front of the MLP, and down_proj after up_proj (packager.compress.smoothing, which first checks on the
     calibration text that each kind leaves this architecture's float model unchanged, and drops one that
     does not).
  2b. With `weight_rounding: gptq`, the smoothed float weights are GPTQ-rounded on the calibration samples
     (packager.compress.gptq_int8), and the simulation uses those weights from here on: what the mixed-precision
     search measures is what the checkpoint holds.
  3. Mixed precision (packager.compress.mixed_precision): the most sensitive units (the Linears the engine
     fuses: q/k/v, o, gate/up, down) are kept in float until the simulated KL is at most `target_kl`, within
     `max_float_share` of the quantizable weights.
The stage record lists the alphas tried with their KL, each unit's sensitivity, the units kept with their
share of the weights, and whether the target was met.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from packager.compress.mixed_precision import MixedPrecisionArgs, keep_in_float, units_of
from packager.compress.rotation import install_checked
from packager.compress.smoothing import (
    activation_maxima,
    apply_factors,
    exact_kinds,
    factors_for,
    smooth_groups,
    smoothed_tensors,
    weight_maxima,
)
from packager.errors import ConfigError


@dataclass
class SearchResult:
    alpha: float | None
    factors: dict[str, dict[str, Any]]
    keep_float: list[str]
    record: dict[str, Any] = field(default_factory=dict)
    # GPTQ-rounded int8 weights (q, scale) by Linear name, of the smoothed model (weight_rounding: gptq)
    weights: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    rotated: bool = False  # the rotation asked for was simulated (its float check passed)


def fake_quant_tokens(x):
    """Symmetric per-token int8 round trip (the engine's dynamic activation quantization)."""
    import torch

    s = x.abs().amax(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
    return torch.round(x / s).clamp_(-127, 127) * s


def fake_quant_tokens_asymmetric(x):
    """Asymmetric per-token int8 round trip, as vLLM quantizes dynamic activations with a zero point
    (ops.scaled_int8_quant, symmetric=False): each token's range [min x, max x] in 255 steps, and an integer
    zero point, round(-128 - min x / scale)."""
    import torch

    lo = x.amin(dim=-1, keepdim=True)
    hi = x.amax(dim=-1, keepdim=True)
    s = ((hi - lo) / 255.0).clamp(min=torch.finfo(torch.float32).tiny)
    zp = torch.round(-128.0 - lo / s)
    return (torch.round(x / s + zp).clamp_(-128, 127) - zp) * s


def activation_round_trip(activations: str) -> Callable[[Any], Any]:
    """The per-token activation round trip of `activations` ("symmetric" or "asymmetric")."""
    return fake_quant_tokens_asymmetric if activations == "asymmetric" else fake_quant_tokens


def int8_per_channel_round_trip(w):
    """Symmetric int8 per output channel, dequantized (the W8A8 weights)."""
    from packager.compress.ct_format import dequantize, quantize_int8_per_channel

    return dequantize(*quantize_int8_per_channel(w)).to(w.dtype)


def group_round_trip(bits: int, group_size: int) -> Callable[[Any], Any]:
    """Symmetric round-to-nearest of `bits` per group of `group_size` input columns (-1: a whole row),
    dequantized: what a weight-only GPTQ checkpoint holds before GPTQ's error compensation (a pessimistic
    stand-in for ranking the Linears' sensitivity)."""
    import torch

    qmax = 2 ** (bits - 1) - 1

    def rt(w):
        out_f, in_f = w.shape
        g = in_f if group_size == -1 else group_size
        x = w.float().reshape(out_f, in_f // g, g)
        s = x.abs().amax(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / qmax
        return (torch.round(x / s).clamp_(-qmax - 1, qmax) * s).reshape(out_f, in_f).to(w.dtype)
    return rt


class Simulator:
    """The float model with switchable quantization simulation per Linear, and KL against the float reference.
    Default: W8A8 (int8 weights per channel, int8 activations per token); `weight_quant` and
    `quantize_activations=False` simulate a weight-only scheme instead."""

    def __init__(self, model, batches, quantizable: list[str], smooth_tensors: set[str],
                 weight_quant: Callable[[Any], Any] = int8_per_channel_round_trip,
                 quantize_activations: bool = True, activation_quant: Callable[[Any], Any] = fake_quant_tokens):
        import torch

        self.weight_quant, self.quantize_activations = weight_quant, quantize_activations
        self.activation_quant = activation_quant
        self.model = model
        self.batches = batches
        self.modules = dict(model.named_modules())
        self.params = dict(model.named_parameters())
        self.quantizable = quantizable
        self.active: set[str] = set()
        self.orig = {n: self.params[n].detach().clone() for n in smooth_tensors}
        for n in quantizable:
            self.orig.setdefault(f"{n}.weight", self.params[f"{n}.weight"].detach().clone())
        self.float_w: dict[str, Any] = {}
        self.int_w: dict[str, Any] = {}
        self._hooks = [self.modules[n].register_forward_pre_hook(self._hook(n)) for n in quantizable]
        # The decoder layers' inputs on the float model, so that a pass that quantizes only layer i's
        # Linears can start at layer i (llama-style models: model.model.layers, .norm, and lm_head).
        inner = getattr(model, "model", None)
        self.layers = list(getattr(inner, "layers", []) or [])
        self.norm: Any = getattr(inner, "norm", None)
        self.head: Any = getattr(model, "lm_head", None)
        self.layer_inputs: list[list[Any]] = []
        # each layer's keyword arguments per batch (masks, rotary tables: they differ between layers where
        # layers alternate sliding-window and full attention, as Gemma 3's do)
        self.layer_kwargs: list[list[dict[str, Any]]] = []
        captured: list[Any] = []
        kwargs_of: list[dict[str, Any]] = []

        def capture(_mod, args, kwargs):
            kwargs_of.append(dict(kwargs))
            captured.append(args[0].detach().clone())

        caps = [layer.register_forward_pre_hook(capture, with_kwargs=True) for layer in self.layers]
        self.ref = []
        try:
            with torch.no_grad():
                for ids in batches:
                    captured.clear()
                    kwargs_of.clear()
                    self.ref.append(torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1))
                    self.layer_inputs.append(list(captured))
                    self.layer_kwargs.append(list(kwargs_of))
        finally:
            for h in caps:
                h.remove()
        self.resumable = (self.norm is not None and self.head is not None and bool(self.layers)
                          and all(len(c) == len(self.layers) for c in self.layer_inputs))
        self.passes = 0
        if self.resumable:
            # a model that is not model.model.layers, .norm and lm_head in a row (Gemma 2's final logit
            # softcap, an extra projection) cannot be resumed at a layer: checked once, in float
            self.smooth({})
            self.resumable = self.kl(set(), start=0) <= 1e-7
            self.passes = 0

    def _hook(self, name: str):
        def fn(_mod, args):
            if self.quantize_activations and name in self.active:
                return (self.activation_quant(args[0]),) + tuple(args[1:])
            return None
        return fn

    def smooth(self, factors: dict[str, dict[str, Any]]) -> None:
        """Reset the weights to the originals, apply smoothing factors, precompute the quantized round trips."""
        pre = apply_factors(factors)
        for n, t in self.orig.items():
            self.params[n].data = pre(n, t).to(t.dtype)
        for n in self.quantizable:
            w = self.params[f"{n}.weight"].data
            self.float_w[n] = w
            self.int_w[n] = self.weight_quant(w)

    def _logits(self, b: int, start: int | None):
        if start is None or not self.resumable:
            return self.model(input_ids=self.batches[b], use_cache=False).logits
        h = self.layer_inputs[b][start]
        for i, layer in enumerate(self.layers[start:], start):
            out = layer(h, **self.layer_kwargs[b][i])
            h = out[0] if isinstance(out, tuple) else out
        return self.head(self.norm(h))

    def kl(self, quantized: set[str], start: int | None = None) -> float:
        """Mean KL(float || simulated) per token with exactly `quantized` Linears in int8. `start`: the
        first decoder layer that holds a quantized Linear (the float layers before it are not rerun)."""
        import torch

        for n in self.quantizable:
            self.params[f"{n}.weight"].data = self.int_w[n] if n in quantized else self.float_w[n]
        self.active = set(quantized)
        total, count = 0.0, 0
        with torch.no_grad():
            for b, ref in enumerate(self.ref):
                lq = torch.log_softmax(self._logits(b, start).float(), dim=-1)
                for r, q in zip(ref, lq):  # a row at a time: temporaries of one sample's [tokens, vocab]
                    total += float((r.exp() * (r - q)).sum(dim=-1).clamp(min=0).sum())
                count += ref.shape[0] * ref.shape[1]
        self.passes += 1
        return total / max(count, 1)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self.active = set()


def _load(model_dir: Path, texts: list[str], seq_len: int, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    # ignore below: transformers wraps .to with functools.wraps, and typeshed's _Wrapped does not bind self
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32).to(device).eval()  # type: ignore[arg-type]
    batches = [b for b in (tok(t, return_tensors="pt", truncation=True, max_length=seq_len)["input_ids"].to(device)
                           for t in texts) if b.shape[1] > 1]
    if not batches:
        raise ConfigError("The calibration texts tokenize to nothing usable (each needs at least 2 tokens).")
    return model, batches


def stack_equal_lengths(batches: list[Any]) -> list[Any]:
    """The [1, n] token batches regrouped into one [k, n] batch per length (first-seen order): the simulator's
    passes then run k samples per forward, about a fifth faster on 2 cores for 8 samples of 128 tokens. Nothing
    is padded, and per-token activation rounding and causal attention treat each row alone, so every KL is the
    same sum over the same tokens."""
    import torch

    by_len: dict[int, list[Any]] = {}
    for b in batches:
        by_len.setdefault(int(b.shape[1]), []).append(b)
    return [torch.cat(group, dim=0) for group in by_len.values()]


def smoothquant_factors(model_dir: Path, texts: list[str], alpha: float, seq_len: int, device: str = "cpu",
                        show_progress: bool = True) -> dict[str, dict[str, Any]]:
    """SmoothQuant factors for one fixed strength (no search)."""
    if not texts:
        raise ConfigError("SmoothQuant needs calibration texts, and none were given.")
    model, batches = _load(model_dir, texts, seq_len, device)
    modules = dict(model.named_modules())
    groups = smooth_groups(modules)
    if groups:  # no calibration pass for a model with nothing to smooth
        act_max, w_max = activation_maxima(model, batches, groups, show_progress), weight_maxima(modules, groups)
        sim = Simulator(model, batches[:4], [], smoothed_tensors(groups))
        try:
            groups = exact_kinds(sim, groups, act_max, w_max, {}, print)
        finally:
            sim.smooth({})
            sim.close()
    if not groups:
        raise ConfigError(f"{model_dir} has no norm/Linear group that SmoothQuant can smooth exactly (fused or "
                          "unknown layer names, or norms of another form); set smoothquant_alpha: null or auto.")
    return factors_for(groups, act_max, w_max, alpha)


def search(model_dir: Path, texts: list[str], *, alpha: float | str | None, alpha_candidates: list[float],
           mixed: MixedPrecisionArgs | None, quantizable: list[str], seq_len: int, search_samples: int,
           search_seq_len: int, device: str = "cpu", show_progress: bool = True,
           log: Callable[[str], None] = print, weight_rounding: str = "nearest",
           gptq_damp: float = 0.01, activations: str = "symmetric", rotation: Any = None) -> SearchResult:
    """Choose the smoothing strength and the Linears kept in float (see the module docstring); with
    weight_rounding "gptq", round the weights by GPTQ (packager.compress.gptq_int8) before the mixed-precision
    search, which then simulates the weights the checkpoint will hold."""
    from packager.core.progress import progress_bar

    if not texts:
        raise ConfigError("The int8 search needs calibration texts, and none were given.")
    t0 = time.monotonic()
    model, batches = _load(model_dir, texts, seq_len, device)
    search_batches = stack_equal_lengths([b[:, :search_seq_len] for b in batches[:search_samples]])
    modules = dict(model.named_modules())
    record: dict[str, Any] = {}
    if rotation is not None:  # rotated in the model itself: every pass below sees what the engine computes
        rotation = rotation if install_checked(model, rotation, search_batches[0], record) is not None else None
    groups = [g for g in (smooth_groups(modules) if alpha is not None else [])
              if rotation is None or not set(g.lin) & set(rotation.targets)]  # rotation replaces smoothing there
    if isinstance(alpha, float) and not groups:
        raise ConfigError(f"{model_dir} has no norm/Linear group that SmoothQuant can smooth (fused or unknown "
                          "layer names, or norms of another form); set smoothquant_alpha: null or auto.")
    act_max = activation_maxima(model, batches, groups, show_progress) if groups else {}
    w_max = weight_maxima(modules, groups)
    sim = Simulator(model, search_batches, quantizable, smoothed_tensors(groups),
                    activation_quant=activation_round_trip(activations))
    record.update(search_samples=sum(int(b.shape[0]) for b in search_batches),
                  search_tokens=int(sum(b.numel() for b in search_batches)))
    try:
        every = set(quantizable)
        groups = exact_kinds(sim, groups, act_max, w_max, record, log)
        if alpha is not None and not groups:
            record["smoothing"] = "none: no group of this architecture smooths exactly"
            if isinstance(alpha, float):
                raise ConfigError(f"SmoothQuant cannot smooth {model_dir} exactly (see the log); set "
                                  "smoothquant_alpha: null or auto.")
        if alpha == "auto" and groups:
            tried: dict[str, float] = {}
            best: tuple[float, float | None] | None = None
            cands: list[float | None] = [None, *alpha_candidates]
            with progress_bar("int8: SmoothQuant strength", total=len(cands), enabled=show_progress,
                              transient=True) as bar:
                for a in cands:
                    sim.smooth(factors_for(groups, act_max, w_max, a) if a is not None else {})
                    k = sim.kl(every)
                    tried["none" if a is None else f"{a:g}"] = k
                    if best is None or k < best[0]:
                        best = (k, a)
                    bar.advance()
            assert best is not None
            chosen: float | None = best[1]
            record["alpha_kl"] = tried
            log(f"SmoothQuant strength: {'none' if chosen is None else chosen} (calibration KL "
                + ", ".join(f"{a}: {k:.3g}" for a, k in tried.items()) + ")")
        else:
            chosen = alpha if isinstance(alpha, float) else None  # a float alpha with no group raised above
        factors = factors_for(groups, act_max, w_max, chosen) if chosen is not None else {}
        sim.smooth(factors)
        weights: dict[str, tuple[Any, Any]] = {}
        if weight_rounding == "gptq":
            from packager.compress.gptq_int8 import round_simulated

            record["kl_all_quantized_nearest"] = sim.kl(every)
            units = units_of(modules, quantizable)
            covered = {n for _, members in units for n in members}
            units += [(n, [n]) for n in quantizable if n not in covered]  # every Linear, alone if not in a unit
            weights = round_simulated(sim, batches, units, gptq_damp, record, show_progress, log)
        kl_all = sim.kl(every)
        record["kl_all_quantized"] = kl_all
        keep: list[str] = []
        if mixed is not None:
            keep = keep_in_float(sim, modules, quantizable, mixed, kl_all, record, show_progress, log)
        record["search_s"] = round(time.monotonic() - t0, 1)
        record["simulated_passes"] = sim.passes
        return SearchResult(chosen, factors, keep, record, weights, rotated=rotation is not None)
    finally:
        sim.close()
        del model


def weight_only_search(model_dir: Path, texts: list[str], *, bits: int, group_size: int,
                       mixed: MixedPrecisionArgs, quantizable: list[str] | None, seq_len: int, search_samples: int,
                       search_seq_len: int, device: str = "cpu", show_progress: bool = True,
                       log: Callable[[str], None] = print) -> SearchResult:
    """Mixed precision for a weight-only scheme (GPTQ W4A16/W8A16): each unit's sensitivity with its weights
    rounded to `bits` per group (no activation quantization), then the same keep-in-float search as W8A8.
    `quantizable`: None for every decoder Linear (everything but lm_head)."""
    if not texts:
        raise ConfigError("The mixed-precision search needs calibration texts, and none were given.")
    t0 = time.monotonic()
    model, batches = _load(model_dir, texts, seq_len, device)
    search_batches = stack_equal_lengths([b[:, :search_seq_len] for b in batches[:search_samples]])
    modules = dict(model.named_modules())
    if quantizable is None:
        import torch

        quantizable = [n for n, m in modules.items() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    sim = Simulator(model, search_batches, quantizable, set(), weight_quant=group_round_trip(bits, group_size),
                    quantize_activations=False)
    record: dict[str, Any] = {"search_samples": sum(int(b.shape[0]) for b in search_batches),
                              "search_tokens": int(sum(b.numel() for b in search_batches)),
                              "simulated": f"round-to-nearest W{bits}A16, group {group_size}"}
    try:
        sim.smooth({})
        kl_all = sim.kl(set(quantizable))
        record["kl_all_quantized"] = kl_all
        keep = keep_in_float(sim, modules, quantizable, mixed, kl_all, record, show_progress, log,
                                scheme=f"W{bits}A16")
        record["search_s"] = round(time.monotonic() - t0, 1)
        record["simulated_passes"] = sim.passes
        return SearchResult(None, {}, keep, record)
    finally:
        sim.close()
        del model
