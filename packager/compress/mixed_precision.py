"""Accuracy-aware mixed precision: keep the most sensitive Linear units in float until a fidelity target is met.

Shared by W8A8 int8 (packager.compress.int8_search) and weight-only GPTQ (packager.compress.gptq). It works on any
simulator with `params` (the model's parameters by name) and `kl(quantized, start)` (the mean KL of the model with
exactly those Linears quantized, restarting at decoder layer `start`); see int8_search.Simulator.

A unit is the Linears that read one input and that the engine fuses, so must treat alike: q/k/v, o, gate/up and
down, one of each per layer. Each unit's sensitivity is the KL with only that unit quantized. Units are kept in
float, most KL per weight first, until the whole model's KL is at most `target_kl`, or until the kept weights reach
`max_float_share` of the quantizable ones. The smallest such prefix is found by doubling, then bisection on its
length (about 2 log2(units) simulated passes). The record lists every unit's sensitivity, the units kept, their
share of the weights, and whether the target was met.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Protocol

from pydantic import BaseModel, ConfigDict, Field

# (module that produces the shared input, Linears that read it; op applied to the producer)
_UNITS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("self_attn", ("o_proj",)),
          ("mlp", ("gate_proj", "up_proj")), ("mlp", ("down_proj",)))


class KLSimulator(Protocol):
    """What the search needs of a simulator (packager.compress.int8_search.Simulator)."""

    params: dict[str, Any]

    def kl(self, quantized: set[str], start: int | None = None) -> float: ...


class MixedPrecisionArgs(BaseModel):
    """Keep the most sensitive Linear units in float until the simulated KL meets a target."""

    model_config = ConfigDict(extra="forbid")
    target_kl: float = Field(0.002, gt=0.0, le=10.0,
                             description="mean KL (nats/token) on calibration text the int8 model may reach")
    max_float_share: float = Field(0.25, gt=0.0, le=1.0,
                                   description="at most this share of the quantizable weights stays in float")


def units_of(modules: dict[str, Any], quantizable: list[str]) -> list[tuple[str, list[str]]]:
    """[(unit name, its Linears)], in model order; a unit is quantized or kept whole."""
    qset = set(quantizable)
    units: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for n in quantizable:
        if n in seen:
            continue
        for parent, shards in _UNITS:
            for sh in shards:
                suffix = f".{parent}.{sh}"
                if n.endswith(suffix):
                    prefix = n[: -len(suffix)]
                    members = [f"{prefix}.{parent}.{s}" for s in shards if f"{prefix}.{parent}.{s}" in qset]
                    label = f"{prefix}.{parent}." + "/".join(s.replace("_proj", "") for s in shards)
                    units.append((label, members))
                    seen.update(members)
                    break
            else:
                continue
            break
        else:
            units.append((n, [n]))
            seen.add(n)
    return units


def layer_index(name: str) -> int | None:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def keep_in_float(sim: KLSimulator, modules, quantizable: list[str], mixed: MixedPrecisionArgs, kl_all: float,
                     record: dict[str, Any], show_progress: bool, log: Callable[[str], None],
                     scheme: str = "int8") -> list[str]:
    from packager.core.progress import progress_bar

    units = units_of(modules, quantizable)
    size = {label: sum(sim.params[f"{n}.weight"].numel() for n in members) for label, members in units}
    total = sum(size.values())
    mp: dict[str, Any] = {"target_kl": mixed.target_kl, "max_float_share": mixed.max_float_share,
                          "units": len(units)}
    record["mixed_precision"] = mp
    if kl_all <= mixed.target_kl:
        mp.update(met=True, kept_float=[], weight_share_float=0.0, kl=kl_all)
        log(f"{scheme}: all {len(units)} units quantized meet the KL target ({kl_all:.4f} <= {mixed.target_kl})")
        return []
    sens: dict[str, float] = {}
    with progress_bar(f"{scheme}: layer sensitivity", total=len(units), enabled=show_progress, transient=True) as bar:
        for label, members in units:
            sens[label] = sim.kl(set(members), start=layer_index(members[0]))
            bar.advance()
    # Most KL per weight kept first: the least float weight for the most fidelity.
    order = sorted(units, key=lambda u: sens[u[0]] / size[u[0]], reverse=True)
    cum, budget = [0], mixed.max_float_share * total
    for label, _ in order:
        cum.append(cum[-1] + size[label])
    max_k = max(k for k in range(len(order) + 1) if cum[k] <= budget)
    every = set(quantizable)
    cache: dict[int, float] = {0: kl_all}

    def kl_keeping(k: int) -> float:
        if k not in cache:
            kept = {n for _, members in order[:k] for n in members}
            cache[k] = sim.kl(every - kept)
        return cache[k]

    lo, hi = 0, None  # kl_keeping(lo) > target; kl_keeping(hi) <= target
    k = 1
    while k <= max_k:
        if kl_keeping(k) <= mixed.target_kl:
            hi = k
            break
        lo, k = k, k * 2
    if hi is None and max_k > lo:
        if kl_keeping(max_k) <= mixed.target_kl:
            hi = max_k
    if hi is not None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if kl_keeping(mid) <= mixed.target_kl:
                hi = mid
            else:
                lo = mid
        n_keep, met = hi, True
    else:
        n_keep, met = max_k, False
    kept_units = [label for label, _ in order[:n_keep]]
    share = cum[n_keep] / total if total else 0.0
    mp.update(met=met, kl=kl_keeping(n_keep), kept_float=kept_units, weight_share_float=share,
              sensitivity={label: sens[label] for label, _ in units})
    log(f"{scheme} mixed precision: {n_keep} of {len(units)} units kept in float ({share:.1%} of the weights), "
        f"calibration KL {kl_all:.4f} -> {mp['kl']:.4f} (target {mixed.target_kl}"
        + ("" if met else f", NOT met within max_float_share {mixed.max_float_share}") + ")")
    return [n for _, members in order[:n_keep] for n in members]
