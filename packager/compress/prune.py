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
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from packager.compress.base import METHODS, StageArgs, StageContext
from packager.compress.checkpoint import STAGE_RECORD_NAME
from packager.errors import ConfigError, PackagerError
from packager.fsutil import atomic_write_json

PLAN_FILE = "packager-prune.json"

# Config attributes that hold one entry per decoder layer and must follow the kept layers.
_PER_LAYER_CONFIG_LISTS = ("layer_types", "no_rope_layers")
# Files of a model directory that are rewritten by save_pretrained (never copied from the input).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".gguf")
_NOT_COPIED = {"config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json", STAGE_RECORD_NAME}


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


# ----------------------------------------------------------------------------------------------- shared helpers
def calibration_chunks(tokenizer, texts: list[str], seq_len: int, max_chunks: int | None = None):
    """Tokenise texts (each followed by EOS) into one stream and cut it into [n, seq_len] chunks, no padding.

    Returns a LongTensor. Raises ConfigError when the texts hold fewer than seq_len tokens."""
    import torch

    if not texts:
        raise ConfigError("No calibration texts were given; this stage measures importance on text. Give the "
                          "recipe calibration data (the bundled corpus or your own texts).")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        if not t or not t.strip():
            continue
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if max_chunks is not None and len(ids) >= max_chunks * seq_len:
            break
    n = len(ids) // seq_len
    if max_chunks is not None:
        n = min(n, max_chunks)
    if n == 0:
        raise ConfigError(f"The calibration texts hold {len(ids)} tokens, fewer than one chunk of seq_len={seq_len}; "
                          "give more text or a smaller seq_len.")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def copy_aux_files(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer, chat template, generation config and other non-weight files of a model directory."""
    copied = []
    for p in sorted(Path(src).iterdir()):
        if (not p.is_file() or p.name in _NOT_COPIED or p.name.endswith(_WEIGHT_SUFFIXES) or p.name.startswith(".")
                or p.name.startswith("packager-")):  # packager's own records (manifest, plans) stay behind
            continue
        shutil.copy2(p, Path(dst) / p.name)
        copied.append(p.name)
    return copied


def read_model_config(model_dir: Path) -> dict[str, Any]:
    p = Path(model_dir) / "config.json"
    if not p.is_file():
        raise ConfigError(f"{model_dir} has no config.json; point the stage at a transformers checkpoint directory.")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p} is not valid JSON ({e}).") from None


def weights_size_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def load_causal_lm(model_dir: Path, device: str = "cpu", dtype: Any = "auto"):
    import torch
    from transformers import AutoModelForCausalLM

    from packager.fsutil import refuse_pickled_weights

    refuse_pickled_weights(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, use_safetensors=True)
    model.to(torch.device(device))
    model.eval()
    return model


def decoder_layers(model):
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    layers = getattr(base, "layers", None)
    if base is None or layers is None:
        raise ConfigError(f"{type(model).__name__} has no `model.layers` stack of decoder layers; structured "
                          "pruning supports Llama-style decoder-only models (Llama, Mistral, Qwen2/3, SmolLM).")
    return base, layers


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors are counted once


def _batches(chunks, batch_size: int):
    for i in range(0, chunks.shape[0], batch_size):
        yield chunks[i: i + batch_size]


def _progress(show: bool, total: int, what: str):
    """A rich progress bar (or a no-op) with .advance()."""
    class _Null:
        def advance(self, n: int = 1) -> None: ...
        def __enter__(self): return self
        def __exit__(self, *exc): return False

    if not show:
        return _Null()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class _Bar:
        def __enter__(self):
            self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), transient=True)
            self.p.__enter__()
            self.t = self.p.add_task(what, total=total)
            return self

        def advance(self, n: int = 1) -> None:
            self.p.advance(self.t, n)

        def __exit__(self, *exc):
            return self.p.__exit__(*exc)

    return _Bar()


# ------------------------------------------------------------------------------------------- depth importance
def _hidden(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def boundary_distances(model, chunks, batch_size: int = 4, block: int | None = None, ctx: StageContext | None = None,
                       ) -> tuple[list[float], list[float] | None]:
    """Mean angular distance arccos(cos)/pi between each decoder layer's input and output (one per layer), and
    (when `block` is given) between the input of layer l and the output of layer l+block-1 for every l.
    Token position 0 of each chunk is left out."""
    import torch

    base, layers = decoder_layers(model)
    n_layers = len(layers)
    device = next(model.parameters()).device
    boundaries: list[torch.Tensor | None] = [None] * (n_layers + 1)

    def make_hook(i: int):
        def hook(mod, args, kwargs, output):
            if i == 0:
                h_in = args[0] if args else kwargs["hidden_states"]
                boundaries[0] = h_in[:, 1:].detach().float()
            boundaries[i + 1] = _hidden(output)[:, 1:].detach().float()
        return hook

    def angular(a, b):
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
        return torch.arccos(cos) / math.pi

    layer_sums = torch.zeros(n_layers, dtype=torch.float64)
    n_blocks = n_layers - block + 1 if block else 0
    block_sums = torch.zeros(max(n_blocks, 0), dtype=torch.float64)
    count = 0
    handles = [layer.register_forward_hook(make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad(), _progress(ctx is not None and ctx.show_progress, chunks.shape[0],
                                                              "layer importance") as bar:
            for batch in _batches(chunks, batch_size):
                base(input_ids=batch.to(device), use_cache=False)
                for i in range(n_layers):
                    layer_sums[i] += angular(boundaries[i], boundaries[i + 1]).sum().double().cpu()
                for l in range(n_blocks):
                    block_sums[l] += angular(boundaries[l], boundaries[l + block]).sum().double().cpu()
                count += boundaries[0].shape[0] * boundaries[0].shape[1]
                bar.advance(batch.shape[0])
    finally:
        for h in handles:
            h.remove()
    per_layer = (layer_sums / count).tolist()
    per_block = (block_sums / count).tolist() if block else None
    return per_layer, per_block


def choose_layers_to_remove(scores: list[float], n_remove: int, keep_first: int, keep_last: int,
                            strategy: str = "layer", block_scores: list[float] | None = None) -> list[int]:
    """The n_remove least important removable layers (or the least important removable contiguous block)."""
    n = len(scores)
    removable = [i for i in range(n) if keep_first <= i < n - keep_last]
    if n_remove > len(removable):
        raise ConfigError(
            f"Cannot remove {n_remove} of {n} layers while keeping the first {keep_first} and last {keep_last}: "
            f"only {len(removable)} are removable. Remove fewer layers or lower keep_first_layers/keep_last_layers.")
    if strategy == "layer":
        ranked = sorted(removable, key=lambda i: (scores[i], i))
        return sorted(ranked[:n_remove])
    if block_scores is None:
        raise ValueError("block strategy needs block_scores")
    starts = [s for s in range(len(block_scores)) if s >= keep_first and s + n_remove <= n - keep_last]
    best = min(starts, key=lambda s: (block_scores[s], s))
    return list(range(best, best + n_remove))


def remove_layers(model, to_remove: list[int]) -> list[int]:
    """Drop decoder layers in place, re-index the rest (attention layer_idx, config lists). Returns the kept map."""
    import torch

    base, layers = decoder_layers(model)
    n = len(layers)
    drop = set(to_remove)
    kept = [i for i in range(n) if i not in drop]
    base.layers = torch.nn.ModuleList([layers[i] for i in kept])
    for new_i, layer in enumerate(base.layers):
        for mod in layer.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_i
    cfg = model.config
    cfg.num_hidden_layers = len(kept)
    for name in _PER_LAYER_CONFIG_LISTS:
        val = getattr(cfg, name, None)
        if isinstance(val, (list, tuple)) and len(val) == n:
            setattr(cfg, name, [val[i] for i in kept])
    return kept


# ------------------------------------------------------------------------------------------- width importance
def _attn_mlp(layer):
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    names_ok = attn is not None and mlp is not None and all(
        hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) and all(
        hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))
    if not names_ok:
        raise ConfigError(f"Width pruning needs Llama-style layers (self_attn.q/k/v/o_proj, mlp.gate/up/down_proj); "
                          f"{type(layer).__name__} does not have them. Use depth pruning only for this model.")
    return attn, mlp


def input_statistics(model, chunks, batch_size: int, want_attn: bool, want_mlp: bool,
                     ctx: StageContext | None = None) -> list[dict[str, Any]]:
    """Per layer: sum, sum of squares and count of the inputs of o_proj and down_proj (float64, per channel)."""
    import torch

    base, layers = decoder_layers(model)
    device = next(model.parameters()).device
    stats: list[dict[str, Any]] = [{} for _ in layers]

    def make_hook(i: int, key: str):
        def hook(mod, args):
            x = args[0][:, 1:].detach().double().reshape(-1, args[0].shape[-1])
            s = stats[i].setdefault(key, {"sum": 0.0, "sumsq": 0.0, "n": 0})
            s["sum"] = s["sum"] + x.sum(0).cpu()
            s["sumsq"] = s["sumsq"] + (x * x).sum(0).cpu()
            s["n"] += x.shape[0]
        return hook

    handles = []
    for i, layer in enumerate(layers):
        attn, mlp = _attn_mlp(layer)
        if want_attn:
            handles.append(attn.o_proj.register_forward_pre_hook(make_hook(i, "o_proj")))
        if want_mlp:
            handles.append(mlp.down_proj.register_forward_pre_hook(make_hook(i, "down_proj")))
    try:
        with torch.no_grad(), _progress(ctx is not None and ctx.show_progress, chunks.shape[0],
                                                              "channel importance") as bar:
            for batch in _batches(chunks, batch_size):
                base(input_ids=batch.to(device), use_cache=False)
                bar.advance(batch.shape[0])
    finally:
        for h in handles:
            h.remove()
    return stats


def channel_scores(stat: dict[str, Any], weight, metric: str):
    """Importance of each input channel j of a projection W (out x in): rms(x_j)*||W[:,j]|| or var(x_j)*||W[:,j]||^2."""
    import torch

    mean = stat["sum"] / stat["n"]
    meansq = stat["sumsq"] / stat["n"]
    col = torch.linalg.vector_norm(weight.detach().double().cpu(), dim=0)
    if metric == "wanda":
        return meansq.clamp_min(0).sqrt() * col
    var = (meansq - mean * mean).clamp_min(0)
    return var * col * col


def _sliced_linear(lin, rows=None, cols=None, bias_override=None):
    import torch

    w = lin.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    has_bias = lin.bias is not None or bias_override is not None
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=has_bias, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias_override is not None:
            new.bias.copy_(bias_override)
        elif lin.bias is not None:
            new.bias.copy_(lin.bias.detach()[rows] if rows is not None else lin.bias.detach())
    return new


def mlp_keep_count(intermediate: int, ratio: float, round_to: int) -> int:
    step = min(round_to, intermediate)
    k = int(round(intermediate * ratio / step)) * step
    return max(step, min(intermediate, k))


def prune_width(model, stats, mlp_keep: int | None, kv_keep: int | None, metric: str,
                bias_compensation: bool = False) -> list[dict[str, Any]]:
    """Slice every layer to the `mlp_keep` most important MLP channels and `kv_keep` most important KV groups."""
    import torch

    _, layers = decoder_layers(model)
    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    group = n_heads // n_kv
    plan: list[dict[str, Any]] = []
    for i, layer in enumerate(layers):
        attn, mlp = _attn_mlp(layer)
        entry: dict[str, Any] = {"layer": i}
        if kv_keep is not None and kv_keep < n_kv:
            col = channel_scores(stats[i]["o_proj"], attn.o_proj.weight, metric)
            head_scores = col.view(n_heads, head_dim).sum(1)
            group_scores = head_scores.view(n_kv, group).sum(1)
            kept_groups = sorted(torch.argsort(group_scores, descending=True, stable=True)[:kv_keep].tolist())
            q_heads = [g * group + j for g in kept_groups for j in range(group)]
            q_rows = torch.tensor([h * head_dim + d for h in q_heads for d in range(head_dim)], dtype=torch.long)
            kv_rows = torch.tensor([g * head_dim + d for g in kept_groups for d in range(head_dim)], dtype=torch.long)
            dev = attn.q_proj.weight.device
            q_rows, kv_rows = q_rows.to(dev), kv_rows.to(dev)
            attn.q_proj = _sliced_linear(attn.q_proj, rows=q_rows)
            attn.k_proj = _sliced_linear(attn.k_proj, rows=kv_rows)
            attn.v_proj = _sliced_linear(attn.v_proj, rows=kv_rows)
            attn.o_proj = _sliced_linear(attn.o_proj, cols=q_rows)
            total = float(group_scores.sum()) or 1.0
            entry.update(kept_kv_groups=kept_groups, kept_query_heads=q_heads,
                         kv_group_importance=[round(float(s), 6) for s in group_scores],
                         attn_importance_kept_fraction=round(float(group_scores[kept_groups].sum()) / total, 4))
        if mlp_keep is not None and mlp_keep < mlp.down_proj.weight.shape[1]:
            st = stats[i]["down_proj"]
            scores = channel_scores(st, mlp.down_proj.weight, metric)
            kept = torch.sort(torch.argsort(scores, descending=True, stable=True)[:mlp_keep]).values
            bias = None
            if bias_compensation:
                removed = torch.ones(scores.numel(), dtype=torch.bool)
                removed[kept] = False
                mean = (st["sum"] / st["n"]).to(mlp.down_proj.weight.dtype).to(mlp.down_proj.weight.device)
                w = mlp.down_proj.weight.detach()
                bias = w[:, removed.to(w.device)] @ mean[removed.to(w.device)]
                if mlp.down_proj.bias is not None:
                    bias = bias + mlp.down_proj.bias.detach()
            k_dev = kept.to(mlp.down_proj.weight.device)
            if bias_compensation:
                zeros = torch.zeros(mlp_keep, dtype=mlp.gate_proj.weight.dtype, device=mlp.gate_proj.weight.device)
                mlp.gate_proj = _sliced_linear(mlp.gate_proj, rows=k_dev,
                                               bias_override=None if mlp.gate_proj.bias is not None else zeros)
                mlp.up_proj = _sliced_linear(mlp.up_proj, rows=k_dev,
                                             bias_override=None if mlp.up_proj.bias is not None else zeros)
            else:
                mlp.gate_proj = _sliced_linear(mlp.gate_proj, rows=k_dev)
                mlp.up_proj = _sliced_linear(mlp.up_proj, rows=k_dev)
            mlp.down_proj = _sliced_linear(mlp.down_proj, cols=k_dev, bias_override=bias)
            total = float(scores.sum()) or 1.0
            entry.update(kept_mlp_channels=kept.tolist(),
                         mlp_importance_kept_fraction=round(float(scores[kept].sum()) / total, 4))
        plan.append(entry)
    if kv_keep is not None and kv_keep < n_kv:
        cfg.num_attention_heads = kv_keep * group
        cfg.num_key_value_heads = kv_keep
        for layer in layers:
            layer.self_attn.num_key_value_groups = group
    cfg.head_dim = head_dim
    if mlp_keep is not None:
        cfg.intermediate_size = min(mlp_keep, cfg.intermediate_size)
        if bias_compensation:
            cfg.mlp_bias = True
    return plan


# ----------------------------------------------------------------------------------------------------- fidelity
def reference_logprobs(model, chunks, batch_size: int):
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for batch in _batches(chunks, batch_size):
            out.append(torch.log_softmax(model(input_ids=batch.to(device), use_cache=False).logits.float(), -1).cpu())
    return torch.cat(out)


def fidelity(ref_logprobs, model, chunks, batch_size: int) -> dict[str, float]:
    """Mean KL(reference || model) per token (nats) and top-1 next-token agreement."""
    import torch

    lp = reference_logprobs(model, chunks, batch_size)
    kl = torch.nn.functional.kl_div(lp, ref_logprobs, log_target=True, reduction="none").sum(-1)
    agree = (lp.argmax(-1) == ref_logprobs.argmax(-1)).float()
    return {"kl_to_input_mean_nats": round(float(kl.mean()), 6),
            "top1_agreement_with_input": round(float(agree.mean()), 4),
            "tokens": int(kl.numel())}


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
        if args.kv_groups_keep > n_kv:
            raise ConfigError(f"kv_groups_keep={args.kv_groups_keep} exceeds the model's {n_kv} KV heads.")


@METHODS.register("prune")
def apply_prune(args: PruneArgs, ctx: StageContext) -> dict[str, Any]:
    t0 = time.monotonic()
    input_dir, output_dir = Path(ctx.input_dir), Path(ctx.output_dir)
    cfg_json = read_model_config(input_dir)
    _check_supported(cfg_json, args, input_dir)
    n_layers = cfg_json["num_hidden_layers"]
    if args.target_layers is not None:
        n_remove = n_layers - args.target_layers
    elif args.remove_layers is not None:
        n_remove = args.remove_layers
    else:
        n_remove = len(args.layers_to_remove or [])
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

    chunks = None
    if ctx.calibration_texts:
        chunks = calibration_chunks(tokenizer, ctx.calibration_texts, args.seq_len, args.n_samples)
        report["calibration"] = {"chunks": int(chunks.shape[0]), "seq_len": args.seq_len,
                                 "tokens": int(chunks.numel())}
        if chunks.shape[0] < args.n_samples:
            ctx.log(f"prune: the calibration texts gave {chunks.shape[0]} chunks of {args.seq_len} tokens "
                    f"(n_samples={args.n_samples} asked)")
    verify_chunks = chunks[: min(2, chunks.shape[0])] if (chunks is not None and args.verify) else None
    ref = reference_logprobs(model, verify_chunks, args.batch_size) if verify_chunks is not None else None

    # ---- depth
    if args.wants_depth:
        scores = block_scores = None
        if chunks is not None:
            block = n_remove if args.depth_strategy == "block" and args.layers_to_remove is None else None
            ctx.log(f"prune: measuring layer importance on {chunks.shape[0]} chunks x {args.seq_len} tokens")
            scores, block_scores = boundary_distances(model, chunks, args.batch_size, block=block, ctx=ctx)
        if args.layers_to_remove is not None:
            to_remove = sorted(args.layers_to_remove)
            reason = "named explicitly (layers_to_remove)"
        else:
            to_remove = choose_layers_to_remove(scores, n_remove, args.keep_first_layers, args.keep_last_layers,
                                                args.depth_strategy, block_scores)
            reason = ("lowest angular distance between layer input and output" if args.depth_strategy == "layer"
                      else f"contiguous block of {n_remove} with the lowest input-output angular distance")
        kept = remove_layers(model, to_remove)
        report["depth"] = {
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

    # ---- width
    if args.wants_width:
        mlp_keep = (mlp_keep_count(model.config.intermediate_size, args.mlp_keep_ratio, args.mlp_round_to)
                    if args.mlp_keep_ratio is not None else None)
        ctx.log("prune: measuring channel importance")
        stats = input_statistics(model, chunks, args.batch_size, args.kv_groups_keep is not None,
                                 mlp_keep is not None, ctx)
        n_heads_before, n_kv_before = model.config.num_attention_heads, model.config.num_key_value_heads
        inter_before = model.config.intermediate_size
        plan = prune_width(model, stats, mlp_keep, args.kv_groups_keep, args.width_metric, args.bias_compensation)
        report["width"] = {
            "metric": args.width_metric, "bias_compensation": args.bias_compensation,
            "intermediate_size_before": inter_before, "intermediate_size_after": model.config.intermediate_size,
            "num_attention_heads_before": n_heads_before, "num_attention_heads_after": model.config.num_attention_heads,
            "num_key_value_heads_before": n_kv_before, "num_key_value_heads_after": model.config.num_key_value_heads,
            "head_dim": model.config.head_dim,
            "per_layer": [{k: v for k, v in e.items() if k != "kept_mlp_channels"} for e in plan],
        }
        width_plan = plan
    else:
        width_plan = None

    # ---- write
    model.save_pretrained(str(output_dir), safe_serialization=True)
    copied = copy_aux_files(input_dir, output_dir)
    params_after = count_parameters(model)
    report.update(layers_after=model.config.num_hidden_layers, params_after=params_after,
                  params_ratio=round(params_after / params_before, 4),
                  weights_bytes_after=weights_size_bytes(output_dir), copied_files=copied)
    atomic_write_json(output_dir / PLAN_FILE, {
        "source": str(input_dir), "args": args.model_dump(),
        "depth": report.get("depth"), "width": width_plan,
    })
    del model

    if ref is not None:
        pruned = load_causal_lm(output_dir, ctx.device)
        report["fidelity_on_calibration"] = fidelity(ref, pruned, verify_chunks, args.batch_size)
        del pruned
        if not math.isfinite(report["fidelity_on_calibration"]["kl_to_input_mean_nats"]):
            raise PackagerError(f"The pruned model in {output_dir} produces non-finite logits; this is a bug in "
                                "the pruning stage, please report it with the recipe.")
    report["wall_time_s"] = round(time.monotonic() - t0, 2)
    return report
