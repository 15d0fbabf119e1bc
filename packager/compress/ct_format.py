"""Writing W8A8 checkpoints in the compressed-tensors format that vLLM loads (CPU and GPU builds).

A quantized Linear `x.y.weight` is stored as
  * `x.y.weight`: int8 (W8A8 int8) or float8_e4m3fn (W8A8 FP8), shape [out, in];
  * `x.y.weight_scale`: float32, shape [out, 1] (one scale per output channel: strategy "channel").
Activations are quantized dynamically per token by the engine at run time, so no activation scales are
stored. `config.json` gets a `quantization_config` built with the `compressed-tensors` library
(quant_method "compressed-tensors", format "int-quantized" or "float-quantized", status "compressed").
Tensors that are not quantized Linear weights (embeddings, norms, lm_head) are cast to `dtype`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Literal

from packager.compress.checkpoint import (
    copy_non_weight_files,
    dtype_from_name,
    linear_module_names,
    read_config,
    stream_shards,
    tensor_shapes,
    write_config,
)
from packager.errors import ConfigError

INT8_MAX = 127.0
FP8_E4M3_MAX = 448.0
Scheme = Literal["int8", "fp8"]


def quantize_int8_per_channel(w):
    """Symmetric per-output-channel int8: scale = max|w_row| / 127, q = round(w / scale) in [-128, 127].

    Returns (q int8 [out, in], scale float32 [out, 1]). All-zero rows get a tiny scale (q = 0)."""
    import torch

    w32 = w.to(torch.float32)
    scale = int8_channel_scale(w32)
    q = torch.round(w32 / scale).clamp_(-128, 127).to(torch.int8)
    return q, scale


def int8_channel_scale(w32):
    """The symmetric per-output-channel int8 scale of a float32 weight: max|w_row| / 127 ([out, 1], never 0)."""
    import torch

    return (w32.abs().amax(dim=1, keepdim=True) / INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)


def quantize_fp8_per_channel(w):
    """Per-output-channel float8 e4m3: scale = max|w_row| / 448, q = (w / scale) as float8_e4m3fn.

    Returns (q float8_e4m3fn [out, in], scale float32 [out, 1])."""
    import torch

    w32 = w.to(torch.float32)
    absmax = w32.abs().amax(dim=1, keepdim=True)
    scale = (absmax / FP8_E4M3_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = (w32 / scale).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


def dequantize(q, scale):
    import torch

    return q.to(torch.float32) * scale


def quantization_config(scheme: Scheme, ignore: list[str], symmetric_activations: bool = True) -> dict[str, Any]:
    """The config.json `quantization_config` for W8A8 with per-channel weights and dynamic per-token
    activations (symmetric, or with a zero point), built with the compressed-tensors library so vLLM reads
    exactly what it expects."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    typ = "int" if scheme == "int8" else "float"
    qscheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=8, type=typ, symmetric=True, strategy="channel", dynamic=False),
        input_activations=QuantizationArgs(num_bits=8, type=typ, symmetric=symmetric_activations, strategy="token",
                                           dynamic=True),
    )
    cfg = QuantizationConfig(
        config_groups={"group_0": qscheme},
        format="int-quantized" if scheme == "int8" else "float-quantized",
        quantization_status="compressed",
        ignore=list(ignore),
    )
    return cfg.to_dict()


def is_ignored(module: str, ignore: list[str]) -> bool:
    """An ignore entry is a module name, a name suffix after a dot, or a regex prefixed with 're:'."""
    for pat in ignore:
        if pat.startswith("re:"):
            if re.fullmatch(pat[3:], module):
                return True
        elif module == pat or module.endswith("." + pat):
            return True
    return False


def validate_ignore(ignore: list[str]) -> None:
    for pat in ignore:
        if pat.startswith("re:"):
            try:
                re.compile(pat[3:])
            except re.error as e:
                raise ConfigError(f"ignore entry {pat!r} is not a valid regular expression: {e}.") from None


def select_linears(model_dir: Path, ignore: list[str]) -> tuple[list[str], list[str]]:
    """(Linear modules to quantize, Linear modules left in float) for a model directory.

    Every quantized module must have its `.weight` in the checkpoint; a Linear without one (a tied
    lm_head) is left in float silently when ignored, and is an error otherwise."""
    names = linear_module_names(model_dir)
    shapes = tensor_shapes(model_dir)
    quant, kept = [], []
    for n in names:
        if is_ignored(n, ignore):
            kept.append(n)
        elif f"{n}.weight" in shapes:
            quant.append(n)
        else:
            raise ConfigError(
                f"Linear module {n!r} has no tensor {n + '.weight'!r} in the checkpoint under {model_dir} "
                "(tied or renamed weight); add it to the stage's 'ignore' list."
            )
    if not quant:
        raise ConfigError(f"No Linear layers to quantize in {model_dir} (all {len(names)} ignored?).")
    return quant, kept


def write_w8a8(src: Path, dst: Path, scheme: Scheme, ignore: list[str], dtype: str,
               pre_transform: Callable[[str, Any], Any] | None = None,
               progress: Callable | None = None,
               rounded: dict[str, tuple[Any, Any]] | None = None,
               symmetric_activations: bool = True, rotation: Any = None) -> dict[str, Any]:
    """Quantize every selected Linear of src into dst (compressed-tensors W8A8); returns a report dict.
    `rounded`: int8 weights already rounded (e.g. by GPTQ), {weight tensor name: (q, scale)}, used as given.
    `symmetric_activations`: False has the engine quantize each token's activations with a zero point.
    `rotation` (a packager.compress.rotation.BlockHadamard): its transform tensors and config are written (the
    weights it rotates must already be rotated by `pre_transform`)."""
    import torch

    validate_ignore(ignore)
    quant, kept = select_linears(src, ignore)
    qset = {f"{n}.weight" for n in quant}
    out_dtype = dtype_from_name(dtype)
    qfn = quantize_int8_per_channel if scheme == "int8" else quantize_fp8_per_channel
    errs: list[float] = []
    stats = {"quantized_tensors": 0, "float_tensors": 0}

    def transform(name: str, t):
        extra = rotation.extra_tensors(name, out_dtype) if rotation is not None else {}
        return {**quantized(name, t), **extra}

    def quantized(name: str, t):
        if pre_transform is not None:
            t = pre_transform(name, t)
        if name in qset:
            if t.dim() != 2:
                raise ConfigError(f"{name} has shape {tuple(t.shape)}; only 2-D Linear weights can be quantized.")
            given = (rounded or {}).get(name)
            if given is not None and scheme == "int8":
                q, s = given
                if tuple(q.shape) != tuple(t.shape):
                    raise ConfigError(f"{name}: rounded weight has shape {tuple(q.shape)}, the checkpoint "
                                      f"{tuple(t.shape)}")
                stats["gptq_rounded_tensors"] = stats.get("gptq_rounded_tensors", 0) + 1
            else:
                q, s = qfn(t)
            # Relative reconstruction error of this weight (Frobenius), for the report.
            deq = dequantize(q, s)
            w32 = t.to(torch.float32)
            errs.append(float((deq - w32).norm() / w32.norm().clamp(min=1e-12)))
            stats["quantized_tensors"] += 1
            base = name[: -len(".weight")]
            return {name: q, f"{base}.weight_scale": s.to(torch.float32)}
        stats["float_tensors"] += 1
        return {name: t.to(out_dtype) if t.is_floating_point() else t}

    copy_non_weight_files(src, dst)
    stream_shards(src, dst, transform, progress=progress)
    cfg = read_config(src)
    cfg["quantization_config"] = quantization_config(scheme, ignore, symmetric_activations)
    if rotation is not None:
        cfg["quantization_config"]["transform_config"] = rotation.config()
    cfg["dtype"] = dtype
    cfg.pop("torch_dtype", None)
    write_config(dst, cfg)
    return {
        "scheme": f"W8A8-{'INT8' if scheme == 'int8' else 'FP8'}",
        "format": cfg["quantization_config"]["format"],
        "quantized_linear_layers": len(quant),
        "float_linear_layers": kept,
        "float_dtype": dtype,
        "weight_relative_error_mean": sum(errs) / len(errs) if errs else None,
        "weight_relative_error_max": max(errs) if errs else None,
        **stats,
    }
