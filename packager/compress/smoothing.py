"""SmoothQuant's smoothing groups, factors and their exactness, for any decoder architecture transformers loads.

Smoothing moves activation outliers into weights: a producer's output channels are divided by s and the
Linears that read that output have their input columns multiplied by s. In float the model computes the same
function, which holds only when the producer's output really is what those Linears read, and when dividing is
done the way the producer computes:
  - The producer of the attention's q/k/v is `input_layernorm`; of the MLP's gate/up, `pre_feedforward_layernorm`
    where the layer has one (Gemma 2/3), else `post_attention_layernorm` (Llama, Qwen, Mistral, Granite...).
    OLMo 2's `post_attention_layernorm` normalizes the attention's output instead, so its group is not exact.
  - A norm computes either x_hat * w (most) or x_hat * (1 + w) (Gemma): its form is probed numerically, and the
    division is w / s or (1 + w) / s - 1 accordingly; a norm's bias (LayerNorm) is divided too. A norm that is
    neither is not smoothed.
  - down_proj reads act(gate) * up: dividing up_proj's output rows is exact for any activation.
Every group kind is then checked on calibration text (`exact_kinds`): smoothing with it must leave the float
model's next-token distributions unchanged, or that kind is dropped and the stage record says so. Fused Linears
(Phi-3's qkv_proj, gate_up_proj) match no group and stay unsmoothed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
# (producer, readers, kind), by priority: the first producer that exists claims its readers
_SMOOTH = (("input_layernorm", _ATTN, "attention"),
           ("pre_feedforward_layernorm", _GATE_UP, "mlp"),
           ("post_attention_layernorm", _GATE_UP, "mlp"),
           ("mlp.up_proj", ("mlp.down_proj",), "down"))
# KL (nats per token) within which a smoothed float model counts as unchanged: float32 rounding gives ~1e-7,
# a wrong group ~1e-3 and more (the bf16/float32 noise floor of the bundled model is 7e-4)
EXACT_KL = 1e-5


@dataclass(frozen=True)
class Group:
    """A producer, the Linears that read its output, the kind (attention, mlp, down) and how the producer
    divides ("scale": w / s, "offset": (1 + w) / s - 1, "linear": a Linear's output rows), with or without bias."""
    prod: str
    lin: list[str]
    kind: str
    form: str
    bias: bool = False


def norm_form(mod: Any) -> str | None:
    """"scale" when the norm computes x_hat * w (+ b), "offset" when x_hat * (1 + w) (+ b), None otherwise
    (probed with the weight set to 0, 1 and 2 on a fixed random input)."""
    import torch

    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.nn.Parameter) or w.dim() != 1:
        return None
    b = getattr(mod, "bias", None)
    x = torch.randn(2, 3, w.numel(), generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
    orig = w.data.clone()
    ys = []
    try:
        with torch.no_grad():
            for v in (0.0, 1.0, 2.0):
                w.data = torch.full_like(orig, v)
                ys.append(mod(x).float() - (b.detach().float() if isinstance(b, torch.Tensor) else 0.0))
    except Exception:  # noqa: BLE001 - a module that cannot be probed this way is not smoothed
        return None
    finally:
        w.data = orig
    y0, y1, y2 = ys
    unit = y1 - y0  # x_hat in either form
    tol = 1e-4 * max(float(unit.abs().max()), 1e-6)
    if float((y2 - y1 - unit).abs().max()) > tol:
        return None  # not affine in its weight
    if float(y0.abs().max()) <= tol:
        return "scale"
    return "offset" if float((y0 - unit).abs().max()) <= tol else None


def smooth_groups(modules: dict[str, Any]) -> list[Group]:
    """Every smoothing group the model has. A Linear is read from one producer: the first in _SMOOTH's order
    claims it, also when that producer cannot be smoothed (a later one would not be what the Linear reads)."""
    cands = []
    for name in modules:
        for prio, (prod, readers, kind) in enumerate(_SMOOTH):
            if name.endswith("." + prod):
                lin = [name[: -len(prod)] + n for n in readers]
                if all(n in modules for n in lin):
                    cands.append((prio, name, lin, kind))
    groups: list[Group] = []
    claimed: set[str] = set()
    for _prio, name, lin, kind in sorted(cands, key=lambda c: c[0]):
        if claimed & set(lin):
            continue
        claimed.update(lin)
        has_bias = getattr(modules[name], "bias", None) is not None
        if kind == "down":
            if has_bias:
                continue  # a biased up_proj would need its bias divided too; leave it unsmoothed
            form: str | None = "linear"
        else:
            form = norm_form(modules[name])
        if form is not None:
            groups.append(Group(name, lin, kind, form, has_bias))
    return groups


def smoothed_tensors(groups: list[Group]) -> set[str]:
    """The parameters smoothing changes."""
    names = set()
    for g in groups:
        names.add(f"{g.prod}.weight")
        if g.bias:
            names.add(f"{g.prod}.bias")
        names.update(f"{n}.weight" for n in g.lin)
    return names


def activation_maxima(model, batches, groups, show_progress: bool) -> dict[str, Any]:
    """max |x| per input channel of each smoothing group's Linears, over the calibration batches."""
    import torch

    from packager.core.progress import progress_bar

    modules = dict(model.named_modules())
    act_max: dict[str, Any] = {}

    def hook(key):
        def fn(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(dim=0).float()
            act_max[key] = torch.maximum(act_max[key], x) if key in act_max else x
        return fn

    handles = [modules[g.lin[0]].register_forward_pre_hook(hook(g.prod)) for g in groups]
    try:
        with torch.no_grad(), progress_bar("SmoothQuant calibration", total=len(batches), enabled=show_progress,
                                           transient=True) as bar:
            for ids in batches:
                model(input_ids=ids)
                bar.advance()
    finally:
        for h in handles:
            h.remove()
    return act_max


def weight_maxima(modules: dict[str, Any], groups) -> dict[str, Any]:
    """max |w| per input channel over each smoothing group's Linears (read once, before any smoothing)."""
    import torch

    return {g.prod: torch.stack([modules[n].weight.detach().abs().amax(dim=0).float() for n in g.lin]).amax(dim=0)
            for g in groups}


def factors_for(groups, act_max, w_max, alpha: float) -> dict[str, dict[str, Any]]:
    """{tensor name: {op: factor}}: "div" divides a 1-D norm weight or bias, or the rows (outputs) of a producing
    Linear; "div_offset" turns a (1 + w) norm's w into (1 + w) / s - 1; "mul" multiplies the input columns of the
    Linears that read it. A tensor can take both (up_proj: its columns for gate/up smoothing, its rows for
    down_proj smoothing)."""

    factors: dict[str, dict[str, Any]] = {}
    for g in groups:
        a = act_max[g.prod].clamp(min=1e-5)
        s = (a.pow(alpha) / w_max[g.prod].clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5).cpu()
        factors.setdefault(f"{g.prod}.weight", {})["div_offset" if g.form == "offset" else "div"] = s
        if g.bias:
            factors.setdefault(f"{g.prod}.bias", {})["div"] = s
        for n in g.lin:
            factors.setdefault(f"{n}.weight", {})["mul"] = s
    return factors


def apply_factors(factors: dict[str, dict[str, Any]]) -> Callable[[str, Any], Any]:
    """A per-tensor transform that applies smoothing factors (tensors without factors pass unchanged)."""
    import torch

    def pre(name: str, t):
        ops = factors.get(name)
        if not ops:
            return t
        t32 = t.to(torch.float32)
        ops = {k: f.to(t32.device) for k, f in ops.items()}  # factors are kept on the CPU, the weights may not be
        if "mul" in ops:
            t32 = t32 * ops["mul"].unsqueeze(0)
        if "div_offset" in ops:
            t32 = (1.0 + t32) / ops["div_offset"] - 1.0
        if "div" in ops:
            t32 = t32 / ops["div"] if t32.dim() == 1 else t32 / ops["div"].unsqueeze(1)
        return t32

    return pre


def exact_kinds(sim, groups: list[Group], act_max, w_max, record: dict[str, Any],
                log: Callable[[str], None]) -> list[Group]:
    """The groups whose kind keeps the float model unchanged when smoothed (strength 0.5) on the simulator's
    calibration batches; a kind that does not is dropped, with its KL in record["smoothing_dropped"]."""
    if not groups:
        return groups
    sim.smooth(factors_for(groups, act_max, w_max, 0.5))
    whole = sim.kl(set())
    record["smoothing_float_kl"] = whole
    if whole <= EXACT_KL:
        return groups
    dropped: dict[str, float] = {}
    for kind in sorted({g.kind for g in groups}):
        sim.smooth(factors_for([g for g in groups if g.kind == kind], act_max, w_max, 0.5))
        k = sim.kl(set())
        if k > EXACT_KL:
            dropped[kind] = k
    record["smoothing_dropped"] = dropped
    log("SmoothQuant: not smoothing " + ", ".join(f"{k} (float KL {v:.2g} when smoothed)" for k, v in dropped.items())
        + ": this architecture does not compute what smoothing assumes there")
    return [g for g in groups if g.kind not in dropped]
