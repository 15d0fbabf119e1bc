"""`w8a8_int8`: int8 weights and int8 activations (W8A8), in the compressed-tensors format.

Weights: symmetric, one scale per output channel, round-to-nearest. Activations: quantized by the engine
per token at run time (dynamic), so no calibration is needed unless SmoothQuant is on. vLLM runs this on
x86 CPUs through oneDNN (fast with VNNI/AMX) and on NVIDIA GPUs from Turing.

SmoothQuant (`smoothquant_alpha`, Xiao et al. 2023) moves activation outliers into the weights before
quantizing: for each group of Linears that read the same normalised input (q/k/v after
input_layernorm; gate/up after post_attention_layernorm) it computes per input channel
s = max|X|^alpha / max|W|^(1 - alpha) on calibration text, divides the norm's weight by s and multiplies
the Linears' input columns by s. The float model's outputs are unchanged; the int8 error shrinks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from packager.compress.base import METHODS, StageArgs, StageContext
from packager.errors import ConfigError

SMOOTHQUANT_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_SMOOTH_GROUPS = (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                  ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")))


class W8A8Int8Args(StageArgs):
    """W8A8 int8: per-channel symmetric int8 weights (round-to-nearest), dynamic per-token int8 activations."""

    quantizes: ClassVar[bool] = True
    kind: Literal["w8a8_int8"] = "w8a8_int8"
    smoothquant_alpha: float | None = Field(
        None, ge=0.0, le=1.0,
        description="SmoothQuant migration strength (0.5 is typical); null = no smoothing, no calibration data.")
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"],
                              description="Linear modules left in float: names, suffixes, or 're:' regexes.")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the tensors that stay in float (embeddings, norms).")
    n_samples: int = Field(64, ge=1, le=4096, description="calibration samples (SmoothQuant only)")
    seq_len: int = Field(512, ge=16, le=32768, description="tokens per calibration sample (SmoothQuant only)")

    def needs_calibration(self) -> bool:
        return self.smoothquant_alpha is not None

    def validate_for(self, model_dir: Path) -> None:
        from packager.compress.checkpoint import read_config
        from packager.compress.ct_format import validate_ignore

        validate_ignore(self.ignore)
        if self.smoothquant_alpha is not None:
            mt = read_config(model_dir).get("model_type")
            if mt not in SMOOTHQUANT_MODEL_TYPES:
                raise ConfigError(
                    f"smoothquant_alpha is set but model_type {mt!r} is not one packager knows how to smooth "
                    f"({', '.join(SMOOTHQUANT_MODEL_TYPES)}); set smoothquant_alpha: null for plain round-to-nearest."
                )


def smoothquant_factors(model_dir: Path, texts: list[str], alpha: float, seq_len: int, device: str = "cpu",
                        show_progress: bool = True) -> dict[str, tuple[str, Any]]:
    """{tensor name: ("div"|"mul", per-input-channel factor)} for SmoothQuant on a llama-style model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not texts:
        raise ConfigError("SmoothQuant needs calibration texts, and none were given.")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    # ignore below: transformers wraps .to with functools.wraps, and typeshed's _Wrapped does not bind self
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32).to(device).eval()  # type: ignore[arg-type]
    modules = dict(model.named_modules())
    groups: list[tuple[str, list[str]]] = []
    for name in modules:
        for norm, linears in _SMOOTH_GROUPS:
            if name.endswith("." + norm):
                prefix = name[: -len(norm)]
                lin = [prefix + n for n in linears]
                if all(n in modules for n in lin):
                    groups.append((name, lin))
    if not groups:
        raise ConfigError(f"No llama-style norm/Linear groups found in {model_dir}; set smoothquant_alpha: null.")
    act_max: dict[str, torch.Tensor] = {}

    def hook(key):
        def fn(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(dim=0).float()
            act_max[key] = torch.maximum(act_max[key], x) if key in act_max else x
        return fn

    handles = [modules[lin[0]].register_forward_pre_hook(hook(norm)) for norm, lin in groups]
    try:
        from packager.core.progress import progress_bar

        with torch.no_grad(), progress_bar("SmoothQuant calibration", total=len(texts), enabled=show_progress,
                                           transient=True) as bar:
            for t in texts:
                ids = tok(t, return_tensors="pt", truncation=True, max_length=seq_len)["input_ids"].to(device)
                if ids.shape[1]:
                    model(input_ids=ids)
                bar.advance()
    finally:
        for h in handles:
            h.remove()
    factors: dict[str, tuple[str, Any]] = {}
    for norm, lin in groups:
        w_max = torch.stack([modules[n].weight.detach().abs().amax(dim=0).float() for n in lin]).amax(dim=0)
        a = act_max[norm].clamp(min=1e-5)
        s = (a.pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5).cpu()
        factors[f"{norm}.weight"] = ("div", s)
        for n in lin:
            factors[f"{n}.weight"] = ("mul", s)
    del model
    return factors


def apply_factors(factors: dict[str, tuple[str, Any]]):
    import torch

    def pre(name: str, t):
        if name not in factors:
            return t
        op, s = factors[name]
        t32 = t.to(torch.float32)
        return t32 / s if op == "div" else t32 * s.unsqueeze(0)

    return pre


@METHODS.register("w8a8_int8")
def apply_w8a8_int8(args: W8A8Int8Args, ctx: StageContext) -> dict[str, Any]:
    from packager.compress.ct_format import write_w8a8

    args.validate_for(ctx.input_dir)
    pre = None
    report: dict[str, Any] = {"smoothquant_alpha": args.smoothquant_alpha, "weight_rounding": "nearest"}
    if args.smoothquant_alpha is not None:
        texts = ctx.calibration_texts[: args.n_samples]
        ctx.log(f"SmoothQuant (alpha={args.smoothquant_alpha}) on {len(texts)} calibration samples")
        factors = smoothquant_factors(ctx.input_dir, texts, args.smoothquant_alpha, args.seq_len, ctx.device,
                                      ctx.show_progress)
        pre = apply_factors(factors)
        report["smoothed_tensors"] = len(factors)
        report["calibration_samples"] = len(texts)
    report.update(write_w8a8(ctx.input_dir, ctx.output_dir, "int8", args.ignore, args.dtype, pre_transform=pre))
    return report
