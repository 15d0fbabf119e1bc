"""`gptq`: GPTQ weight-only quantization (W4A16 / W8A16) with GPTQModel, saved in the GPTQ checkpoint format
that vLLM loads (CPU build: its mixed-precision CPU kernel; GPUs: exllama/Marlin).

`method: awq` runs GPTQModel's AWQ instead (activation-aware per-channel scales searched on the calibration data,
then 4-bit group rounding) and writes the AWQ GEMM checkpoint format (quant_method "awq"), which vLLM's CPU build
serves through the same mixed-precision CPU kernel (cpu_gemm_wna16) as GPTQ, and GPUs through AWQ Marlin. It is a
method of this stage rather than a stage of its own because everything around the rounding is the same: the
group-size check, the calibration samples, the serving kernel and so the hardware checks. AWQ here is 4-bit
with zero points only (vLLM's AWQ path loads 4-bit; sym defaults to false for it) and has no act-order; those
settings are refused. Its mixed precision keeps the units in float as GPTQ's does (GPTQModel's AWQ skips the
`dynamic` negative rules too) and lists them in the checkpoint's `modules_to_not_convert`, which vLLM's AWQ
loader reads to serve them unquantized.

The group size must divide the input dimension of every quantized Linear; it is checked from config.json
(and the safetensors headers) before the model is even loaded, with an error naming the dimension and
the group sizes that would fit.

Column order: GPTQModel 7.6 quantizes with group-aware activation ordering (`act_group_aware`, on by default for
GPTQ) and true-sequential layers; the checkpoint it writes keeps a static column order, which vLLM loads.
`desc_act: true` (dynamic act-order, g_idx) is refused by vLLM 0.32 with groups, so it is refused here first.

Mixed precision (`mixed_precision: {target_kl, max_float_share}`): as for W8A8 (packager.compress.int8_search),
each fused unit (q/k/v, o, gate/up, down of a layer) is rounded alone to the target bits per group and its
calibration KL measured; the most sensitive units per weight stay in float until the simulated model's KL meets
the target, within the float share. The units are written as GPTQ `dynamic` negative rules (`-:` regexes that
match both the separate and vLLM's fused projection names), which GPTQModel skips and vLLM loads unquantized.
The simulation rounds to nearest, so its KL is a pessimistic stand-in for GPTQ's.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from packager.compress.base import METHODS, StageArgs, StageContext
from packager.compress.mixed_precision import MixedPrecisionArgs
from packager.errors import ConfigError

_PREFERRED_GROUPS = (32, 64, 128, 256)


class GPTQArgs(StageArgs):
    """GPTQ weight-only int4/int8 (activations stay 16-bit)."""

    quantizes: ClassVar[bool] = True
    kind: Literal["gptq"] = "gptq"
    requires_calibration_data: ClassVar[bool] = True
    method: Literal["gptq", "awq"] = Field("gptq", description="gptq (GPTQ format) or awq (AWQ GEMM format; 4-bit, "
                                                              "zero points, no desc_act)")
    bits: Literal[4, 8] = Field(4, description="weight bits: 4 (W4A16) or 8 (W8A16)")
    group_size: int = Field(64, description="weights per quantization group along the input dimension; "
                                            "-1 = one group per row")
    desc_act: bool = Field(False, description="dynamic act-order (g_idx); vLLM 0.32 refuses it with groups, so "
                                              "only group_size -1 accepts it. Group-aware static ordering is on.")
    sym: bool = Field(True, description="symmetric quantization (no zero points)")
    damp_percent: float = Field(0.05, gt=0.0, lt=1.0,
                                description="Hessian dampening as a fraction of its mean diagonal")
    n_samples: int = Field(128, ge=1, le=4096, description="calibration samples")
    seq_len: int = Field(512, ge=16, le=32768, description="tokens per calibration sample")
    batch_size: int = Field(4, ge=1, le=256, description="calibration batch size")
    mixed_precision: MixedPrecisionArgs | None = Field(
        None, description="keep the most sensitive Linear units in float until a calibration KL target is met")
    search_samples: int = Field(8, ge=1, le=1024, description="calibration samples the KL search simulates on")
    search_seq_len: int = Field(128, ge=16, le=8192, description="tokens per sample in the KL search")

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError(f"group_size must be -1 (one group per row) or a positive integer, got {v}")
        return v

    @model_validator(mode="after")
    def _awq_settings(self) -> "GPTQArgs":
        if self.method != "awq":
            return self
        if self.bits != 4:
            raise ValueError(f"method awq writes 4-bit weights only (vLLM's AWQ path loads 4-bit); "
                             f"got bits {self.bits}")
        if self.desc_act:
            raise ValueError("method awq has no act-order; leave desc_act false")
        if "sym" not in self.model_fields_set:
            self.sym = False  # AWQ's zero-point (asymmetric) groups, what vLLM's AWQ path is built for
        elif self.sym:
            raise ValueError("method awq is asymmetric here (zero points, the AWQ GEMM checkpoint vLLM was checked "
                             "with); set sym: false or leave it out")
        return self

    def validate_for(self, model_dir: Path) -> None:
        check_group_size(model_dir, self.group_size)
        if self.desc_act and self.group_size != -1:
            raise ConfigError("desc_act: true (dynamic act-order) with groups is refused by vLLM 0.32, which would not "
                              "load the checkpoint; leave it false (GPTQModel orders columns group-aware, statically) "
                              "or use group_size: -1.")
        if self.method == "awq":
            check_awq_output_dims(model_dir)


# GPTQModel 7.6's AWQ clip search walks a Linear's output rows in batches of 256 or 64 and asserts one fits.
_AWQ_OUT_MULTIPLE = 64


def check_awq_output_dims(model_dir: Path) -> None:
    """Raise ConfigError when a projection's output size is not a multiple of 64 (GPTQModel's AWQ would stop
    with a bare AssertionError in the middle of quantizing): the sizes the config implies, then each projection
    weight's own output size (a pruned model may carry layers narrower than its config says)."""
    from packager.compress.checkpoint import read_config

    cfg = read_config(model_dir)
    text = cfg.get("text_config") or cfg
    outs: dict[str, int] = {}
    try:
        hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
    except (KeyError, TypeError, ValueError):
        hidden = heads = 0
    if hidden and heads:
        head_dim = int(text.get("head_dim") or hidden // heads)
        outs = {"q_proj (num_attention_heads*head_dim)": heads * head_dim,
                "k/v_proj (num_key_value_heads*head_dim)": int(text.get("num_key_value_heads") or heads) * head_dim,
                "o/down_proj (hidden_size)": hidden}
        if text.get("intermediate_size"):
            outs["gate/up_proj (intermediate_size)"] = int(text["intermediate_size"])
    for name, (rows, _cols) in projection_shapes(model_dir).items():
        outs.setdefault(name, rows)
    for name, size in outs.items():
        if size % _AWQ_OUT_MULTIPLE:
            raise ConfigError(f"method awq needs every projection's output size to be a multiple of "
                              f"{_AWQ_OUT_MULTIPLE} (GPTQModel's AWQ clip search); {name} is {size}. "
                              "Use method gptq for this model.")


def linear_input_dims(config: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """{dimension name: (size, which projections read it)} for a decoder-only transformer config."""
    text = config.get("text_config") or config
    hidden = int(text["hidden_size"])
    dims: dict[str, tuple[int, str]] = {"hidden_size": (hidden, "q/k/v/gate/up projections")}
    if text.get("intermediate_size"):
        dims["intermediate_size"] = (int(text["intermediate_size"]), "down projection")
    heads = text.get("num_attention_heads")
    head_dim = text.get("head_dim") or (hidden // int(heads) if heads else None)
    if heads and head_dim:
        dims["num_attention_heads*head_dim"] = (int(heads) * int(head_dim), "o projection")
    return dims


def fitting_group_sizes(dims: list[int]) -> list[int]:
    """Group sizes that divide every dimension: the usual powers of two (32..256) plus the largest common
    divisor itself when it is a multiple of 32 and at most 1024."""
    g = 0
    for d in dims:
        g = math.gcd(g, d)
    out = {c for c in _PREFERRED_GROUPS if g % c == 0}
    if g % 32 == 0 and g <= 1024:
        out.add(g)
    return sorted(out)


def check_group_size(model_dir: Path, group_size: int) -> None:
    """Raise ConfigError when group_size does not divide a Linear input dimension of the model."""
    from packager.compress.checkpoint import read_config

    if group_size == -1:
        return
    cfg = read_config(model_dir)
    try:
        dims = linear_input_dims(cfg)
    except (KeyError, TypeError, ValueError):
        dims = {}
    # The weights themselves too: a pruned model may carry layers narrower than its config says.
    shapes = projection_shapes(model_dir)
    all_dims = [v for v, _ in dims.values()] + [cols for _rows, cols in shapes.values()]
    fits = fitting_group_sizes(all_dims) if all_dims else []
    hint = f"use one of {', '.join(map(str, fits))}" if fits else "no power-of-two group size fits"
    hint += " (or -1 for one group per row)"
    for dim_name, (size, users) in dims.items():
        if size % group_size:
            raise ConfigError(f"group_size {group_size} does not divide {dim_name} {size} (used by {users}); {hint}.")
    for name, (_rows, cols) in shapes.items():
        if cols % group_size:
            raise ConfigError(
                f"group_size {group_size} does not divide the input dimension {cols} of {name}; {hint}.")


def projection_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    """{name: (output size, input size)} of every 2-D `*_proj.weight` in the checkpoint's safetensors headers,
    sorted by name; empty when the headers cannot be read (the config-derived checks still run)."""
    from packager.compress.checkpoint import tensor_shapes

    try:
        shapes = tensor_shapes(model_dir)
    except ConfigError:
        return {}
    return {name: (int(shape[0]), int(shape[1])) for name, (_dt, shape) in sorted(shapes.items())
            if name.endswith("_proj.weight") and len(shape) == 2}


def _calibration_examples(tokenizer, texts: list[str], seq_len: int) -> list[dict[str, list[int]]]:
    out = []
    for t in texts:
        enc = tokenizer(t, truncation=True, max_length=seq_len)
        ids = list(enc["input_ids"])
        if len(ids) >= 2:
            out.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return out


@METHODS.register("gptq")
def apply_gptq(args: GPTQArgs, ctx: StageContext) -> dict[str, Any]:
    check_group_size(ctx.input_dir, args.group_size)
    if not ctx.calibration_texts:
        raise ConfigError("gptq needs calibration data, and none was given.")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, min(os.cpu_count() or 1, 8))))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    from packager.compress.checkpoint import ensure_tokenizer_files, read_config, weight_files

    tok = AutoTokenizer.from_pretrained(str(ctx.input_dir))
    examples = _calibration_examples(tok, ctx.calibration_texts[: args.n_samples], args.seq_len)
    if not examples:
        raise ConfigError("Every calibration text tokenized to fewer than 2 tokens; give longer calibration texts.")
    device = "cuda:0" if ctx.device == "cuda" else "cpu"
    dynamic: dict[str, dict] = {}
    mixed: dict[str, Any] | None = None
    if args.mixed_precision is not None:
        from packager.compress.int8_search import weight_only_search

        res = weight_only_search(ctx.input_dir, ctx.calibration_texts[: args.n_samples], bits=args.bits,
                                 group_size=args.group_size, mixed=args.mixed_precision, quantizable=None,
                                 seq_len=args.seq_len, search_samples=args.search_samples,
                                 search_seq_len=args.search_seq_len, device="cuda" if ctx.device == "cuda" else "cpu",
                                 show_progress=ctx.show_progress, log=ctx.log)
        dynamic = skip_rules(res.keep_float)
        mixed = {**res.record, "kept_modules": res.keep_float}
    qcfg = QuantizeConfig(**quantize_config_kwargs(args, dynamic))
    ctx.log(f"{args.method.upper()} W{args.bits}A16 group {args.group_size} on {len(examples)} samples "
            f"(device {device})")
    model = GPTQModel.load(str(ctx.input_dir), qcfg, device=device)
    model.quantize(examples, batch_size=args.batch_size, **quantize_backend_kwargs(args, device))
    model.save(str(ctx.output_dir))
    del model
    if args.method == "awq" and mixed is not None:
        mark_awq_float_modules(Path(ctx.output_dir), mixed["kept_modules"])
    ensure_tokenizer_files(ctx.input_dir, ctx.output_dir)
    weight_files(ctx.output_dir)  # safetensors only; raises on pickles
    losses = _read_quant_log(Path(ctx.output_dir) / "quant_log.csv")
    q = read_config(ctx.output_dir).get("quantization_config", {})
    return {
        "scheme": f"W{args.bits}A16",
        "method": args.method,
        "format": q.get("checkpoint_format") or q.get("format"),
        "bits": args.bits,
        "group_size": args.group_size,
        "calibration_samples": len(examples),
        "calibration_tokens": sum(len(e["input_ids"]) for e in examples),
        **({"search": mixed} if mixed is not None else {}),
        **losses,
    }


def quantize_config_kwargs(args: GPTQArgs, dynamic: dict[str, dict]) -> dict[str, Any]:
    """GPTQModel QuantizeConfig arguments: GPTQ (GPTQ format, with the skip rules) or AWQ (AWQ GEMM format)."""
    common: dict[str, Any] = {"bits": args.bits, "group_size": args.group_size, "sym": args.sym,
                              "offload_to_disk": False}
    if args.method == "awq":
        return {**common, "method": "awq", "format": "gemm", **({"dynamic": dynamic} if dynamic else {})}
    return {**common, "desc_act": args.desc_act, "damp_percent": args.damp_percent, "dynamic": dynamic or None}


def mark_awq_float_modules(model_dir: Path, modules: list[str]) -> None:
    """Write the units mixed precision kept in float as the AWQ checkpoint's `modules_to_not_convert` (vLLM's AWQ
    loader serves a Linear whose name contains one unquantized). Each must be in the checkpoint as a float
    weight, not packed: a kept module GPTQModel quantized anyway would otherwise load as garbage."""
    from packager.compress.checkpoint import read_config, tensor_shapes, write_config

    names = set(tensor_shapes(model_dir))
    packed = sorted(m for m in modules if f"{m}.qweight" in names or f"{m}.weight" not in names)
    if packed:
        raise RuntimeError(f"AWQ mixed precision: GPTQModel did not keep {packed[:4]} in float (no float weight "
                           f"in the checkpoint); the checkpoint is not written as mixed precision")
    cfg = read_config(model_dir)
    q = cfg.setdefault("quantization_config", {})
    q["modules_to_not_convert"] = sorted(set(q.get("modules_to_not_convert") or []) | set(modules))
    write_config(model_dir, cfg)


def quantize_backend_kwargs(args: GPTQArgs, device: str) -> dict[str, Any]:
    """GPTQModel 7.6 packs AWQ GEMM with its CUDA kernel unless told otherwise, and refuses to start on a CPU
    ("AWQ: CUDA is not available"); its portable torch kernel packs the same format there."""
    if args.method == "awq" and device == "cpu":
        from gptqmodel.utils.backend import BACKEND

        return {"backend": BACKEND.AWQ_TORCH}
    return {}


# vLLM fuses these projections into one Linear; a rule must name the fused module as well as its parts.
_FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
          "up_proj": "gate_up_proj"}


def skip_rules(modules: list[str]) -> dict[str, dict]:
    """GPTQ `dynamic` negative rules that leave `modules` unquantized, in GPTQModel (which matches the separate
    projections) and in vLLM (which matches its fused qkv_proj / gate_up_proj)."""
    import re

    rules: dict[str, dict] = {}
    for m in modules:
        parent, _, leaf = m.rpartition(".")
        names = [leaf] + ([_FUSED[leaf]] if leaf in _FUSED else [])
        rules[f"-:^{re.escape(parent)}\\.({'|'.join(names)})$"] = {}
    return rules


def _read_quant_log(path: Path) -> dict[str, Any]:
    """Summarise GPTQModel's per-module loss log (layer,module,loss,samples,damp,time)."""
    import csv

    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.read_text().splitlines()))
    losses = []
    for r in rows:
        try:
            losses.append(float(r["loss"]))
        except (KeyError, TypeError, ValueError):
            continue
    if not losses:
        return {"quantized_modules": len(rows)}
    return {"quantized_modules": len(rows), "gptq_loss_mean": sum(losses) / len(losses), "gptq_loss_max": max(losses)}
