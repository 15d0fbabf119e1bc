"""Structured pruning: a smaller DENSE checkpoint of the same architecture that transformers and vLLM load as is.

Two independent axes, both chosen by importance measured on calibration text:

* **depth** removes whole decoder layers. A layer's importance is the mean angular distance
  ``arccos(cos(h_in, h_out)) / pi`` between its input and output hidden states (ShortGPT's "block influence",
  Gromov et al.'s angular distance), averaged over every token except each chunk's first (the attention-sink
  token carries outlier activations that say nothing about the layer). Layers that change their input least
  are removed (``depth_strategy="layer"``), or the one contiguous block of ``n`` layers whose input and output
  are closest (``depth_strategy="block"``, as in "The Unreasonable Ineffectiveness of the Deeper Layers").
  The first and last layers are kept unless ``keep_first_layers`` / ``keep_last_layers`` say otherwise.
* **width** removes whole KV groups (each KV head together with the query heads that read it, head_dim kept)
  and MLP channels (intermediate_size). A channel's importance is the size of what it contributes to the
  output projection: ``rms(x_j) * ||W[:, j]||_2`` (``width_metric="wanda"``, a structured Wanda score) or
  ``var(x_j) * ||W[:, j]||_2^2`` (``"flap"``, FLAP's fluctuation score), with ``x`` the input of o_proj /
  down_proj. A Llama config holds one intermediate_size and one head count for every layer, so the same
  NUMBER of channels / groups is kept in each layer (which ones differs per layer). The kept MLP width is
  rounded to a multiple of ``mlp_round_to`` (64 by default) so kernels and later GPTQ group sizes fit.

Depth is pruned first; width importance is then measured on the depth-pruned model. The output directory
holds the pruned model (safetensors), the tokenizer and generation config of the input, and
``packager-prune.json`` with the full plan (kept layer map, kept heads and channels of every layer).

Layout: the measurements live in prune_scoring.py, the surgery (removing layers, slicing channels) in
prune_apply.py, and the helpers shared with distillation in causal_lm.py. Every name stays importable from here.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from packager.compress.base import METHODS, StageArgs, StageContext
from packager.compress.causal_lm import (  # noqa: F401  (re-exported: other modules import them from here)
    _NOT_COPIED,
    _WEIGHT_SUFFIXES,
    _batches,
    _progress,
    calibration_chunks,
    copy_aux_files,
    count_parameters,
    decoder_layers,
    load_causal_lm,
    read_model_config,
    weights_size_bytes,
)
from packager.compress.prune_apply import (  # noqa: F401
    _PER_LAYER_CONFIG_LISTS,
    _sliced_linear,
    choose_layers_to_remove,
    mlp_keep_count,
    prune_width,
    remove_layers,
)
from packager.compress.prune_scoring import (  # noqa: F401
    _attn_mlp,
    _hidden,
    boundary_distances,
    channel_scores,
    fidelity,
    input_statistics,
    reference_logprobs,
)
from packager.errors import ConfigError, PackagerError
from packager.fsutil import atomic_write_json

PLAN_FILE = "packager-prune.json"


class PruneArgs(StageArgs):
    """Structured pruning. Give a depth target (one of target_layers / remove_layers / layers_to_remove),
    a width target (mlp_keep_ratio and/or kv_groups_keep), or both."""

    kind: Literal["prune"] = "prune"
    requires_calibration_data: ClassVar[bool] = True
    changes_architecture: ClassVar[bool] = True

    # depth
    target_layers: int | None = Field(None, ge=1, description="number of decoder layers to keep")
    remove_layers: int | None = Field(None, ge=1, description="number of decoder layers to remove")
    layers_to_remove: list[int] | None = Field(None, description="explicit layer indices (0-based) to remove")
    depth_strategy: Literal["layer", "block"] = "layer"
    keep_first_layers: int = Field(1, ge=0, description="never remove the first N layers")
    keep_last_layers: int = Field(1, ge=0, description="never remove the last N layers")
    # width
    mlp_keep_ratio: float | None = Field(None, gt=0.0, le=1.0, description="fraction of MLP channels to keep")
    mlp_round_to: int = Field(64, ge=1, description="round the kept intermediate_size to a multiple of this")
    kv_groups_keep: int | None = Field(None, ge=1, description="KV heads (with their query heads) to keep per layer")
    width_metric: Literal["wanda", "flap"] = "wanda"
    bias_compensation: bool = Field(
        False, description="FLAP: fold the mean contribution of removed MLP channels into a down_proj bias "
                           "(sets mlp_bias=true in the config)")
    # calibration
    n_samples: int = Field(32, ge=1, description="calibration chunks")
    seq_len: int = Field(256, ge=8, description="tokens per calibration chunk")
    batch_size: int = Field(4, ge=1)
    verify: bool = Field(True, description="reload the written model and measure its KL to the input model")

    @model_validator(mode="after")
    def _check(self) -> "PruneArgs":
        depth = [n for n, v in (("target_layers", self.target_layers), ("remove_layers", self.remove_layers),
                                ("layers_to_remove", self.layers_to_remove)) if v is not None]
        if len(depth) > 1:
            raise ValueError(f"give at most one of target_layers, remove_layers, layers_to_remove (got {depth})")
        if self.layers_to_remove is not None:
            if not self.layers_to_remove:
                raise ValueError("layers_to_remove is empty; leave it out or name at least one layer index")
            bad = [i for i in self.layers_to_remove if i < 0]
            if bad:
                raise ValueError(f"layers_to_remove holds negative indices {bad}; layer indices start at 0")
            if len(set(self.layers_to_remove)) != len(self.layers_to_remove):
                raise ValueError(f"layers_to_remove holds duplicates: {self.layers_to_remove}")
        if not depth and self.mlp_keep_ratio is None and self.kv_groups_keep is None:
            raise ValueError("nothing to prune: give a depth target (target_layers, remove_layers or "
                             "layers_to_remove) and/or a width target (mlp_keep_ratio, kv_groups_keep)")
        if self.bias_compensation and self.mlp_keep_ratio is None:
            raise ValueError("bias_compensation applies to MLP channel pruning; set mlp_keep_ratio too")
        return self

    def validate_for(self, model_dir: Path) -> None:
        """Check the targets against the input model's config.json (no weights read)."""
        _check_supported(read_model_config(model_dir), self, Path(model_dir))

    @property
    def wants_depth(self) -> bool:
        return any(v is not None for v in (self.target_layers, self.remove_layers, self.layers_to_remove))

    @property
    def wants_width(self) -> bool:
        return self.mlp_keep_ratio is not None or self.kv_groups_keep is not None


# -------------------------------------------------------------------------------------------------------- stage
def _check_supported(cfg: dict[str, Any], args: PruneArgs, input_dir: Path) -> None:
    if cfg.get("quantization_config"):
        raise ConfigError(f"{input_dir} is already quantized ({cfg['quantization_config'].get('quant_method', '?')}); "
                          "structured pruning needs a float checkpoint. Put the prune stage before quantization.")
    n_layers = cfg.get("num_hidden_layers")
    if not isinstance(n_layers, int):
        raise ConfigError(f"{input_dir}/config.json has no num_hidden_layers; pruning supports Llama-style "
                          "decoder-only checkpoints.")
    if args.target_layers is not None and not 1 <= args.target_layers < n_layers:
        raise ConfigError(f"target_layers={args.target_layers} must be between 1 and {n_layers - 1} "
                          f"(the model has {n_layers} layers).")
    if args.remove_layers is not None and args.remove_layers >= n_layers:
        raise ConfigError(f"remove_layers={args.remove_layers} would leave no layer (the model has {n_layers}).")
    if args.layers_to_remove is not None:
        bad = [i for i in args.layers_to_remove if i >= n_layers]
        if bad:
            raise ConfigError(f"layers_to_remove holds {bad}, beyond the model's {n_layers} layers "
                              f"(0..{n_layers - 1}).")
        if len(args.layers_to_remove) >= n_layers:
            raise ConfigError(f"layers_to_remove names all {n_layers} layers; keep at least one.")
    if args.kv_groups_keep is not None:
        n_kv = cfg.get("num_key_value_heads") or cfg.get("num_attention_heads")
        if n_kv is None:
            raise ConfigError(f"{input_dir}/config.json has neither num_key_value_heads nor num_attention_heads; "
                              "kv_groups_keep needs them.")
        if args.kv_groups_keep > n_kv:
            raise ConfigError(f"kv_groups_keep={args.kv_groups_keep} exceeds the model's {n_kv} KV heads.")


def _layers_to_remove_count(args: PruneArgs, n_layers: int) -> int:
    if args.target_layers is not None:
        return n_layers - args.target_layers
    if args.remove_layers is not None:
        return args.remove_layers
    return len(args.layers_to_remove or [])


def _calibrate(tokenizer, args: PruneArgs, ctx: StageContext, report: dict[str, Any]):
    """The calibration chunks (None without calibration texts); records them in the report."""
    if not ctx.calibration_texts:
        return None
    chunks = calibration_chunks(tokenizer, ctx.calibration_texts, args.seq_len, args.n_samples)
    report["calibration"] = {"chunks": int(chunks.shape[0]), "seq_len": args.seq_len,
                             "tokens": int(chunks.numel())}
    if chunks.shape[0] < args.n_samples:
        ctx.log(f"prune: the calibration texts gave {chunks.shape[0]} chunks of {args.seq_len} tokens "
                f"(n_samples={args.n_samples} asked)")
    return chunks


def _prune_depth(model, chunks, args: PruneArgs, n_remove: int, ctx: StageContext) -> dict[str, Any]:
    """Measure layer importance (when there are chunks), remove the chosen layers; the report's "depth"."""
    scores = block_scores = None
    if chunks is not None:
        block = n_remove if args.depth_strategy == "block" and args.layers_to_remove is None else None
        ctx.log(f"prune: measuring layer importance on {chunks.shape[0]} chunks x {args.seq_len} tokens")
        scores, block_scores = boundary_distances(model, chunks, args.batch_size, block=block, ctx=ctx)
    if args.layers_to_remove is not None:
        to_remove = sorted(args.layers_to_remove)
        reason = "named explicitly (layers_to_remove)"
    else:
        assert scores is not None  # apply_prune refuses scoring without calibration texts, so chunks were given
        to_remove = choose_layers_to_remove(scores, n_remove, args.keep_first_layers, args.keep_last_layers,
                                            args.depth_strategy, block_scores)
        reason = ("lowest angular distance between layer input and output" if args.depth_strategy == "layer"
                  else f"contiguous block of {n_remove} with the lowest input-output angular distance")
    kept = remove_layers(model, to_remove)
    depth = {
        "strategy": args.depth_strategy if args.layers_to_remove is None else "explicit",
        "removed_layers": to_remove, "reason": reason,
        "kept_layers": kept,  # new index -> original index
        "layer_importance": ([{"layer": i, "angular_distance": round(s, 6)} for i, s in enumerate(scores)]
                             if scores is not None else None),
        "importance_ranking": (sorted(range(len(scores)), key=lambda i: (scores[i], i))
                               if scores is not None else None),
        "block_importance": ([{"start": s, "angular_distance": round(v, 6)} for s, v in enumerate(block_scores)]
                             if block_scores is not None else None),
    }
    ctx.log(f"prune: removed layers {to_remove} ({reason}); {len(kept)} layers left")
    return depth


def _prune_width(model, chunks, args: PruneArgs, ctx: StageContext) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Measure channel importance, slice every layer; (the report's "width", the per-layer plan)."""
    mlp_keep = (mlp_keep_count(model.config.intermediate_size, args.mlp_keep_ratio, args.mlp_round_to)
                if args.mlp_keep_ratio is not None else None)
    ctx.log("prune: measuring channel importance")
    stats = input_statistics(model, chunks, args.batch_size, args.kv_groups_keep is not None,
                             mlp_keep is not None, ctx)
    n_heads_before, n_kv_before = model.config.num_attention_heads, model.config.num_key_value_heads
    inter_before = model.config.intermediate_size
    plan = prune_width(model, stats, mlp_keep, args.kv_groups_keep, args.width_metric, args.bias_compensation)
    width = {
        "metric": args.width_metric, "bias_compensation": args.bias_compensation,
        "intermediate_size_before": inter_before, "intermediate_size_after": model.config.intermediate_size,
        "num_attention_heads_before": n_heads_before, "num_attention_heads_after": model.config.num_attention_heads,
        "num_key_value_heads_before": n_kv_before, "num_key_value_heads_after": model.config.num_key_value_heads,
        "head_dim": model.config.head_dim,
        "per_layer": [{k: v for k, v in e.items() if k != "kept_mlp_channels"} for e in plan],
    }
    return width, plan


def _write_pruned(model, args: PruneArgs, input_dir: Path, output_dir: Path, report: dict[str, Any],
                  width_plan: list[dict[str, Any]] | None) -> None:
    """The pruned model, the input's tokenizer and other files, and the plan; sizes and counts in the report."""
    model.save_pretrained(str(output_dir), safe_serialization=True)
    copied = copy_aux_files(input_dir, output_dir)
    params_after = count_parameters(model)
    report.update(layers_after=model.config.num_hidden_layers, params_after=params_after,
                  params_ratio=round(params_after / report["params_before"], 4),
                  weights_bytes_after=weights_size_bytes(output_dir), copied_files=copied)
    atomic_write_json(output_dir / PLAN_FILE, {
        "source": str(input_dir), "args": args.model_dump(),
        "depth": report.get("depth"), "width": width_plan,
    })


def _verify_pruned(ref, verify_chunks, args: PruneArgs, ctx: StageContext, output_dir: Path,
                   report: dict[str, Any]) -> None:
    """Reload the written model and measure its fidelity to the input model's reference log-probabilities."""
    pruned = load_causal_lm(output_dir, ctx.device)
    report["fidelity_on_calibration"] = fidelity(ref, pruned, verify_chunks, args.batch_size)
    del pruned
    if not math.isfinite(report["fidelity_on_calibration"]["kl_to_input_mean_nats"]):
        raise PackagerError(f"The pruned model in {output_dir} produces non-finite logits; this is a bug in "
                            "the pruning stage, please report it with the recipe.")


@METHODS.register("prune")
def apply_prune(args: PruneArgs, ctx: StageContext) -> dict[str, Any]:
    t0 = time.monotonic()
    input_dir, output_dir = Path(ctx.input_dir), Path(ctx.output_dir)
    cfg_json = read_model_config(input_dir)
    _check_supported(cfg_json, args, input_dir)
    n_layers = cfg_json["num_hidden_layers"]
    n_remove = _layers_to_remove_count(args, n_layers)
    needs_scores = (args.wants_depth and args.layers_to_remove is None) or args.wants_width
    if needs_scores and not ctx.calibration_texts:
        raise ConfigError("Pruning by importance needs calibration texts and none were given. Give the recipe "
                          "calibration data, or name the layers yourself with layers_to_remove.")

    from transformers import AutoTokenizer

    ctx.log(f"prune: loading {input_dir}")
    tokenizer = AutoTokenizer.from_pretrained(str(input_dir))
    model = load_causal_lm(input_dir, ctx.device)
    arch = type(model).__name__
    params_before = count_parameters(model)
    report: dict[str, Any] = {"method": "prune", "architecture": arch, "layers_before": n_layers,
                              "params_before": params_before, "weights_bytes_before": weights_size_bytes(input_dir)}

    chunks = _calibrate(tokenizer, args, ctx, report)
    verify_chunks = chunks[: min(2, chunks.shape[0])] if (chunks is not None and args.verify) else None
    ref = reference_logprobs(model, verify_chunks, args.batch_size) if verify_chunks is not None else None

    if args.wants_depth:
        report["depth"] = _prune_depth(model, chunks, args, n_remove, ctx)
    width_plan = None
    if args.wants_width:
        report["width"], width_plan = _prune_width(model, chunks, args, ctx)

    _write_pruned(model, args, input_dir, output_dir, report, width_plan)
    del model

    if ref is not None:
        _verify_pruned(ref, verify_chunks, args, ctx, output_dir, report)
    report["wall_time_s"] = round(time.monotonic() - t0, 2)
    return report
