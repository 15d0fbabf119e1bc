"""`fp8`: W8A8-FP8 (float8 e4m3 weights, one scale per output channel; activations quantized to fp8 per
token at run time), in the compressed-tensors format ("float-quantized") that vLLM runs on NVIDIA GPUs
with compute capability >= 8.9 (Ada: L4, L40S, RTX 4090; Hopper: H100, H200; Blackwell).

The conversion is pure tensor math and runs on any machine, but the result only serves well on such GPUs
(vLLM's CPU build loads it but emulates FP8: 1.5 tok/s vs ~34 for bf16 here): the recipe runner refuses
the stage before it starts when the target cannot run it (packager.hardware.preflight).
`unsafe_skip_preflight` exists for unit tests of the maths only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from packager.compress.base import METHODS, StageArgs, StageContext


class FP8Args(StageArgs):
    """W8A8-FP8: per-channel float8 e4m3 weights, dynamic per-token float8 activations (GPUs >= sm_89)."""

    quantizes: ClassVar[bool] = True
    kind: Literal["fp8"] = "fp8"
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"],
                              description="Linear modules left in float: names, suffixes, or 're:' regexes.")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype of the tensors that stay in float (embeddings, norms).")
    unsafe_skip_preflight: bool = Field(
        False, description="tests only: convert even when the target hardware cannot serve FP8.")

    def validate_for(self, model_dir: Path) -> None:
        from packager.compress.ct_format import validate_ignore

        validate_ignore(self.ignore)


@METHODS.register("fp8")
def apply_fp8(args: FP8Args, ctx: StageContext) -> dict[str, Any]:
    from packager.compress.ct_format import write_w8a8
    from packager.errors import HardwareError
    from packager.hardware import preflight

    if not args.unsafe_skip_preflight:
        problems = preflight(args, ctx.engine.target, ctx.engine.gpu_type)
        if problems:
            raise HardwareError("Refusing the fp8 stage before starting: " + " ".join(problems))
    args.validate_for(ctx.input_dir)
    return write_w8a8(ctx.input_dir, ctx.output_dir, "fp8", args.ignore, args.dtype)
