"""Importance measurements of structured pruning (see prune.py): the angular distance between each decoder
layer's input and output (depth), the statistics of the inputs of o_proj / down_proj and the channel scores
derived from them (width), and the fidelity of a pruned model to its input (KL, top-1 agreement)."""
from __future__ import annotations

import math
from typing import Any

from packager.compress.base import StageContext
from packager.compress.causal_lm import _batches, _progress, decoder_layers
from packager.errors import ConfigError


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
                for start in range(n_blocks):
                    assert block is not None  # n_blocks > 0 only when block is given
                    block_sums[start] += angular(boundaries[start], boundaries[start + block]).sum().double().cpu()
                first = boundaries[0]
                if first is None:  # no decoder layer ran (an empty layer stack)
                    raise ConfigError(f"{type(model).__name__} ran no decoder layer; there is no layer importance "
                                      "to measure.")
                count += first.shape[0] * first.shape[1]
                bar.advance(batch.shape[0])
    finally:
        for h in handles:
            h.remove()
    per_layer = (layer_sums / count).tolist()
    per_block = (block_sums / count).tolist() if block else None
    return per_layer, per_block


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
