"""`w8a8_int8`: int8 weights and int8 activations (W8A8), in the compressed-tensors format.

Weights: symmetric, one scale per output channel, rounded to nearest or (`weight_rounding: gptq`) by GPTQ on
calibration inputs (packager.compress.gptq_int8, with the reasons it is own code). Activations: quantized by the engine
per token at run time (dynamic), so no calibration is needed unless SmoothQuant is on; symmetric (scale max|x| / 127),
or with `activations: asymmetric` each token's own range [min x, max x] in 255 steps with an integer zero point, which
vLLM computes in the same kernels (ops.scaled_int8_quant, and a weight-sum correction in the GEMM). A token's
activations rarely centre on 0 (after SmoothQuant even less), so the zero point spends the int8 range on the values
present: on the bundled model the simulated KL of every Linear in int8 fell from 0.0148 to 0.0082. vLLM runs both on
x86 CPUs through oneDNN (fast with VNNI; with AMX, symmetric activations take vLLM's own AMX kernel instead) and on
NVIDIA GPUs from Turing.

SmoothQuant (`smoothquant_alpha`, Xiao et al. 2023) moves activation outliers into the weights before
quantizing: for each group of Linears that read the same input (q/k/v after input_layernorm; gate/up after
the norm in front of the MLP; down_proj after up_proj) it computes per input channel
s = max|X|^alpha / max|W|^(1 - alpha) on calibration text, divides the producer by s and multiplies the
Linears' input columns by s. The float model's outputs are unchanged (checked on the calibration text for each
architecture: packager.compress.smoothing); the int8 error shrinks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from packager.compress.base import METHODS, StageArgs, StageContext
from packager.compress.int8_search import apply_factors, smoothquant_factors
from packager.compress.mixed_precision import MixedPrecisionArgs

__all__ = ["W8A8Int8Args", "apply_factors", "apply_w8a8_int8", "smoothquant_factors"]


class W8A8Int8Args(StageArgs):
    """W8A8 int8: per-channel symmetric int8 weights (nearest or GPTQ rounding), dynamic per-token int8
    activations."""

    quantizes: ClassVar[bool] = True
    kind: Literal["w8a8_int8"] = "w8a8_int8"
    smoothquant_alpha: float | Literal["auto"] | None = Field(
        None, description="SmoothQuant migration strength in [0, 1] (0.5 is typical); 'auto' = the candidate (or "
                          "no smoothing) with the lowest calibration KL; null = no smoothing.")
    alpha_candidates: list[float] = Field(default_factory=lambda: [0.3, 0.45, 0.6, 0.75, 0.9],
                                          description="strengths tried when smoothquant_alpha is 'auto'")
    mixed_precision: MixedPrecisionArgs | None = Field(
        None, description="keep the most sensitive Linear units in float until a calibration KL target is met")
    search_samples: int = Field(8, ge=1, le=1024, description="calibration samples the KL search simulates on")
    search_seq_len: int = Field(128, ge=16, le=8192, description="tokens per sample in the KL search")
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"],
                              description="Linear modules left in float: names, suffixes, or 're:' regexes.")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the tensors that stay in float (embeddings, norms).")
    n_samples: int = Field(64, ge=1, le=4096, description="calibration samples (SmoothQuant only)")
    seq_len: int = Field(512, ge=16, le=32768, description="tokens per calibration sample (SmoothQuant only)")

    @field_validator("smoothquant_alpha", "alpha_candidates")
    @classmethod
    def _alpha_range(cls, v):
        for a in v if isinstance(v, list) else [v]:
            if isinstance(a, float) and not 0.0 <= a <= 1.0:
                raise ValueError(f"a SmoothQuant strength must lie in [0, 1]; got {a}")
        return v

    weight_rounding: Literal["nearest", "gptq"] = Field(
        "nearest", description="int8 weight rounding: nearest, or gptq (error spread over the columns not yet "
                               "rounded by the inverse Hessian of calibration inputs, with act order)")
    gptq_damp: float = Field(0.01, gt=0.0, lt=1.0, description="GPTQ Hessian dampening, a fraction of its mean "
                                                                "diagonal")
    activations: Literal["symmetric", "asymmetric"] = Field(
        "symmetric", description="the engine's per-token int8 activations: symmetric (scale max|x| / 127) or "
                                 "asymmetric (a zero point per token, scale (max x - min x) / 255)")
    down_rotation_block: int | None = Field(
        None, description="rotate every mlp.down_proj's input by a random Hadamard matrix in blocks of this many "
                          "channels (or of the largest power of 2 below it that divides the MLP width), applied by "
                          "the engine at run time (packager.compress.rotation); replaces SmoothQuant there. Skipped, "
                          "with the reason in the stage record, where it cannot apply. null = no rotation.")
    rotation_seed: int = Field(0, ge=0, description="seed of the rotation's random signs")

    @field_validator("down_rotation_block")
    @classmethod
    def _block(cls, v):
        if v is not None and (v < 2 or v > 4096 or v & (v - 1)):
            raise ValueError(f"down_rotation_block must be a power of 2 from 2 to 4096; got {v}")
        return v

    def searches(self) -> bool:
        return self.smoothquant_alpha == "auto" or self.mixed_precision is not None

    def needs_calibration(self) -> bool:
        return (self.smoothquant_alpha is not None or self.mixed_precision is not None
                or self.weight_rounding == "gptq" or self.down_rotation_block is not None)

    def validate_for(self, model_dir: Path) -> None:
        from packager.compress.ct_format import validate_ignore

        validate_ignore(self.ignore)


@METHODS.register("w8a8_int8")
def apply_w8a8_int8(args: W8A8Int8Args, ctx: StageContext) -> dict[str, Any]:
    from packager.compress.ct_format import select_linears, write_w8a8
    from packager.compress.int8_search import SearchResult, search

    args.validate_for(ctx.input_dir)
    report: dict[str, Any] = {"smoothquant_alpha": args.smoothquant_alpha, "weight_rounding": args.weight_rounding,
                              "activations": args.activations}
    ignore = list(args.ignore)
    res = SearchResult(None, {}, [])
    rot, why_not = _rotation(args, ctx)
    if rot is not None:
        report["rotation"] = rot.record()
    elif why_not:
        report["rotation"] = {"skipped": why_not}
        ctx.log(f"int8: down_proj's input not rotated: {why_not}")
    if args.needs_calibration():
        texts = ctx.calibration_texts[: args.n_samples]
        quantizable, _ = select_linears(ctx.input_dir, ignore)
        ctx.log(f"int8 calibration on {len(texts)} samples"
                + (f"; KL search on {min(args.search_samples, len(texts))}" if args.searches() else ""))
        res = search(ctx.input_dir, texts, alpha=args.smoothquant_alpha, alpha_candidates=args.alpha_candidates,
                     mixed=args.mixed_precision, quantizable=quantizable,
                     seq_len=args.seq_len, search_samples=args.search_samples, search_seq_len=args.search_seq_len,
                     device=ctx.device, show_progress=ctx.show_progress, log=ctx.log,
                     weight_rounding=args.weight_rounding, gptq_damp=args.gptq_damp,
                     activations=args.activations, rotation=rot)
        ignore += res.keep_float
        if rot is not None and not res.rotated:  # the float model changed when rotated: not this architecture
            report["rotation"] = {"skipped": res.record.get("rotation_skipped")}
            rot = None
        report.update(smoothquant_alpha=res.alpha, smoothed_tensors=len(res.factors), calibration_samples=len(texts),
                      **res.record)
    pre = _compose(apply_factors(res.factors) if res.factors else None,
                   rot.weight_transform() if rot is not None else None)
    report.update(write_w8a8(ctx.input_dir, ctx.output_dir, "int8", ignore, args.dtype, pre_transform=pre,
                             rounded={f"{n}.weight": qs for n, qs in res.weights.items()},
                             symmetric_activations=args.activations == "symmetric", rotation=rot))
    return report


def _rotation(args: W8A8Int8Args, ctx: StageContext):
    """(The down_proj rotation over every mlp.down_proj Linear of the model, None) or (None, why it cannot apply;
    "" when it is off). The block is the largest power of 2 up to the asked one that divides their input width."""
    if args.down_rotation_block is None:
        return None, ""
    from packager.compress.checkpoint import linear_module_names, tensor_shapes
    from packager.compress.rotation import MIN_BLOCK, BlockHadamard, block_for, down_linears

    if ctx.engine.target == "gpu" and ctx.engine.tensor_parallel_size > 1:
        return None, "vLLM applies run-time transforms only without tensor parallelism"
    shapes = tensor_shapes(ctx.input_dir)
    targets = [n for n in down_linears(linear_module_names(ctx.input_dir)) if f"{n}.weight" in shapes]
    if not targets:
        return None, "the model has no Linear named *.mlp.down_proj"
    block = block_for([int(shapes[f"{n}.weight"][1][1]) for n in targets], args.down_rotation_block)
    if block < MIN_BLOCK:
        return None, f"no power of 2 from {MIN_BLOCK} to {args.down_rotation_block} divides the MLP width"
    return BlockHadamard(block, args.rotation_seed, tuple(targets)), ""


def _compose(*fns):
    """The per-tensor transforms applied in order (None where none is given)."""
    given = [f for f in fns if f is not None]
    if not given:
        return None

    def pre(name: str, t):
        for f in given:
            t = f(name, t)
        return t

    return pre
