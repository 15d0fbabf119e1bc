"""GPTQ rounding for per-channel int8 weights: the W8A8 recipe's `weight_rounding: gptq`.

Why own code: llm-compressor's GPTQModifier is the reference for W8A8 with GPTQ-rounded weights, but its pins
(transformers < 5, its own compressed-tensors) clash with this stack (transformers 5, compressed-tensors 0.17);
GPTQModel, used for W4A16, writes only its GPTQ format, not compressed-tensors W8A8 with int8 activations.

The method (Frantar et al. 2022, "GPTQ"): each Linear's columns are rounded one at a time, in order of
decreasing Hessian diagonal ("act order"), and the rounding error of each column is spread over the columns not
yet rounded, weighted by the inverse of H = X^T X, the Gram matrix of the Linear's inputs on calibration text.
The layer's output on that text moves less than with round-to-nearest, for the same int8 grid. The scale stays
one per output channel (max |w| / 127, as round-to-nearest), so act order needs no column index in the
checkpoint: the format vLLM loads is unchanged.

Inputs are read from the float model (smoothed when SmoothQuant is on), one pass over the calibration samples
per chunk of Linears: the Hessians of a chunk fit in `max_hessian_bytes`, so a large model takes several passes
instead of holding every Hessian at once. Linears that read the same input (q/k/v, gate/up: the units vLLM
fuses) share one Hessian.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from packager.compress.ct_format import int8_channel_scale, quantize_int8_per_channel

DEFAULT_DAMP = 0.01  # of the mean Hessian diagonal, as GPTQ's reference code
MAX_HESSIAN_BYTES = 2 << 30


@dataclass
class GptqRounding:
    """int8 weights [out, in] and float32 scales [out, 1] by Linear name, and what the rounding achieved."""

    weights: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    # sum over Linears of the calibration output error tr((W - Q) H (W - Q)^T), relative to round-to-nearest's
    output_error_vs_nearest: float | None = None
    fallbacks: list[str] = field(default_factory=list)  # Hessian not positive definite even damped: nearest
    passes: int = 0
    tokens: int = 0


def gptq_int8(w, h, damp: float = DEFAULT_DAMP, block: int = 128) -> tuple[Any, Any]:
    """GPTQ-round w [out, in] to symmetric per-row int8 against the input Gram matrix h [in, in].

    Returns (q int8 [out, in], scale float32 [out, 1]); raises torch.linalg.LinAlgError when h + damp is not
    positive definite."""
    import torch

    W = w.detach().to(torch.float32).clone()
    H = h.detach().to(torch.float32).clone()
    cols = W.shape[1]
    scale = int8_channel_scale(W)
    dead = torch.diag(H) == 0  # inputs never non-zero on the calibration text: their weights do not matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diag(H), descending=True)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype, device=H.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    s = scale[:, 0]
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        err1 = torch.zeros_like(W1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = W1[:, i]
            q = torch.clamp(torch.round(col / s), -128, 127)
            Q[:, i1 + i] = q
            e = (col - q * s) / h1[i, i]
            W1[:, i:] -= e.unsqueeze(1) * h1[i, i:].unsqueeze(0)
            err1[:, i] = e
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return Q[:, torch.argsort(perm)].to(torch.int8), scale


def output_error(w, q, scale, h) -> float:
    """tr((W - Q s) H (W - Q s)^T): the squared output error of the rounded Linear over the calibration inputs."""
    import torch

    d = w.to(torch.float32) - q.to(torch.float32) * scale
    return float(((d @ h) * d).sum())


def _chunks(units: list[tuple[str, list[str]]], dims: dict[str, int], budget: int) -> list[list[tuple[str, list[str]]]]:
    out: list[list[tuple[str, list[str]]]] = [[]]
    used = 0
    for u in units:
        size = dims[u[1][0]] ** 2 * 4
        if out[-1] and used + size > budget:
            out.append([])
            used = 0
        out[-1].append(u)
        used += size
    return [c for c in out if c]


def gptq_round(model, batches: list[Any], units: list[tuple[str, list[str]]], *, damp: float = DEFAULT_DAMP,
               max_hessian_bytes: int = MAX_HESSIAN_BYTES, show_progress: bool = True,
               log: Callable[[str], None] = print) -> GptqRounding:
    """GPTQ-round every Linear of `units` ([(label, member Linear names)]; the members read one input) of the
    float `model` on its inputs over `batches` (token id tensors). The model's weights are read, not changed."""
    import torch

    from packager.core.progress import progress_bar

    modules = dict(model.named_modules())
    dims = {n: int(modules[n].weight.shape[1]) for _, members in units for n in members}
    res = GptqRounding()
    err_gptq = err_nearest = 0.0
    total = sum(len(m) for _, m in units)
    with progress_bar("int8: GPTQ rounding", total=total, enabled=show_progress, transient=True) as bar:
        for chunk in _chunks(units, dims, max_hessian_bytes):
            hs: dict[str, Any] = {}

            def hook(key: str):
                def fn(_mod, args):
                    x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
                    hs[key].addmm_(x.t(), x)
                return fn

            handles = []
            for _, members in chunk:
                first = members[0]
                hs[first] = torch.zeros(dims[first], dims[first], dtype=torch.float32,
                                        device=modules[first].weight.device)  # where the inputs are
                handles.append(modules[first].register_forward_pre_hook(hook(first)))
            tokens = 0
            try:
                with torch.no_grad():
                    for ids in batches:
                        model(input_ids=ids, use_cache=False)
                        tokens += int(ids.numel())
            finally:
                for hd in handles:
                    hd.remove()
            res.passes += 1
            res.tokens = tokens
            for _, members in chunk:
                h = hs.pop(members[0]) / max(tokens, 1)
                for n in members:
                    w = modules[n].weight.detach().to(torch.float32)
                    qn, sn = quantize_int8_per_channel(w)
                    try:
                        q, s = gptq_int8(w, h, damp)
                    except torch.linalg.LinAlgError:
                        try:
                            q, s = gptq_int8(w, h, damp * 10)
                        except torch.linalg.LinAlgError:
                            q, s = qn, sn
                            res.fallbacks.append(n)
                    err_gptq += output_error(w, q, s, h)
                    err_nearest += output_error(w, qn, sn, h)
                    res.weights[n] = (q, s)
                    bar.advance()
    res.output_error_vs_nearest = err_gptq / err_nearest if err_nearest > 0 else None
    if res.fallbacks:
        log(f"GPTQ: {len(res.fallbacks)} Linears rounded to nearest (their Hessian is not positive definite): "
            + ", ".join(res.fallbacks[:5]) + ("..." if len(res.fallbacks) > 5 else ""))
    return res


def round_simulated(sim, batches: list[Any], units: list[tuple[str, list[str]]], damp: float, record: dict[str, Any],
                    show_progress: bool, log: Callable[[str], None]) -> dict[str, tuple[Any, Any]]:
    """GPTQ-round the (smoothed) float weights of an int8 Simulator (packager.compress.int8_search) on the full
    calibration batches; the simulator's int8 weights become the GPTQ ones and `record["gptq"]` says what the
    rounding achieved. Returns {Linear name: (q int8, scale)}."""
    t0 = time.monotonic()
    for _, members in units:  # the float (smoothed) weights, no activation rounding, while inputs are read
        for n in members:
            sim.params[f"{n}.weight"].data = sim.float_w[n]
    sim.active = set()
    r = gptq_round(sim.model, batches, units, damp=damp, show_progress=show_progress, log=log)
    for n, (q, s) in r.weights.items():
        sim.int_w[n] = (q.to(s.dtype) * s).to(sim.float_w[n].dtype)
    record["gptq"] = {"damp": damp, "calibration_tokens": r.tokens, "passes": r.passes,
                      "output_error_vs_nearest": r.output_error_vs_nearest, "nearest_fallbacks": r.fallbacks,
                      "seconds": round(time.monotonic() - t0, 1)}
    log(f"int8 GPTQ rounding: calibration output error {r.output_error_vs_nearest:.3f}x round-to-nearest's "
        f"({len(r.weights)} Linears, {r.tokens} tokens)" if r.output_error_vs_nearest is not None else
        "int8 GPTQ rounding done")
    return {n: (q.cpu(), s.cpu()) for n, (q, s) in r.weights.items()}  # written out with the CPU's tensors
