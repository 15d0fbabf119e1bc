"""Applying a structured-pruning plan (see prune.py): choosing and removing decoder layers (depth), and slicing
every layer to its most important KV groups and MLP channels (width)."""
from __future__ import annotations

from typing import Any

from packager.compress.causal_lm import decoder_layers
from packager.compress.prune_scoring import _attn_mlp, channel_scores
from packager.errors import ConfigError

# Config attributes that hold one entry per decoder layer and must follow the kept layers.
_PER_LAYER_CONFIG_LISTS = ("layer_types", "no_rope_layers")


# ------------------------------------------------------------------------------------------------------ depth
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


# ------------------------------------------------------------------------------------------------------ width
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
