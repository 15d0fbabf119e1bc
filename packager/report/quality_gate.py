"""The quality half of the recommendation: does a variant keep enough of the baseline's quality?

Two tests, each naming what it found and by how much when it rejects:

1. **Recovery** (score / baseline score): its point estimate must reach the floor. With `use_lower_bound` (a
   release's default) the lower bound of the variant's 95% paired bootstrap interval must also reach
   `lower_bound_floor` (the floor itself when that is unset), so a variant whose recovery only looks high on a
   small suite is not taken on trust (packager.evaluate.stats). Without an interval (an older report, a suite
   scored without the baseline's items) only the point estimate is judged, and the verdict says so.

   Why two numbers: the interval's width is set by the suite's size and by how often a variant's greedy answers
   flip against the baseline's, and answers flip even when nothing but the serving dtype changes. On the bundled
   model's 430-item suite, the baseline served in float32 against bfloat16 (a variant that is the same model)
   has a recovery interval ±4.75 points wide (benchmarks/results/quality_earlier.json, `noise_floor_recovery`), so a
   variant that keeps all of the quality has its lower bound near 95% on average, and a bound held to 97% would
   refuse most such variants (that run, by chance, put this one at 100.2-109.7). The release's defaults hold the
   point estimate to 97% and the lower bound to 93%: a variant must look as good as the floor and be shown,
   within the suite's resolution, not to be far below it.
2. **Fidelity**: the variant's mean KL to the baseline (teacher-forced, along the baseline's own outputs) may be
   at most `max_kl` (a release sets it to a multiple of the baseline's noise floor: the KL the same model shows
   when served in another dtype, packager.evaluate.noise_floor). Task scores can hide a model that moved: a
   suite tests few skills, and the KL sees every position. A GGUF variant's KL is read from its file by llama.cpp
   in-process (its server gives no prompt logprobs; packager.gguf.topk). A variant with no KL at all (an endpoint
   without prompt logprobs and no local artifact) is judged on recovery alone, and the verdict says so.

The baseline is judged on its recovery of 1 alone (it has no interval and no KL to itself).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from packager.core.formatting import fmt_pair, fmt_pct_pair
from packager.report.model import VariantResult

if TYPE_CHECKING:
    from packager.config import RunConfig


class QualityGate(NamedTuple):
    floor: float
    use_lower_bound: bool = False
    lower_bound_floor: float | None = None  # what the interval's lower bound must reach; None: `floor`
    max_kl: float | None = None  # None: no fidelity test
    noise_floor_kl: float | None = None  # what max_kl is a multiple of (for the sentences)


def quality_gate(cfg: "RunConfig", noise_floor: dict | None) -> QualityGate:
    """A release's quality tests, from its configuration: the recovery interval's lower bound (when configured)
    and a KL limit of `gate.max_kl_vs_noise` times the baseline's noise floor (when it was measured and is above
    zero). The release judges with it before a load test, at the end, and for the report's sentences."""
    nf_kl = (noise_floor or {}).get("mean_kl")
    mult = cfg.gate.max_kl_vs_noise
    max_kl = mult * nf_kl if mult is not None and nf_kl else None
    return QualityGate(cfg.quality_floor, use_lower_bound=cfg.gate.use_lower_bound,
                       lower_bound_floor=max(cfg.quality_floor - cfg.gate.lower_bound_margin, 0.0), max_kl=max_kl,
                       noise_floor_kl=nf_kl if max_kl is not None else None)


def bound_floor(gate: QualityGate) -> float:
    """What the lower bound of the recovery interval is held to."""
    return gate.floor if gate.lower_bound_floor is None else gate.lower_bound_floor


def effective_recovery(v: VariantResult) -> float | None:
    """The recovery used against the quality floor: the baseline counts as 1.0 by definition."""
    if v.recovery is not None:
        return v.recovery
    return 1.0 if v.is_baseline else None


def quality_failure(v: VariantResult, gate: QualityGate) -> str | None:
    """Why `v` does not keep the quality (one sentence), or None when it passes."""
    rec = effective_recovery(v)
    kl = kl_failure(v, gate)
    if rec is None:
        if v.score is None and kl is not None:  # its KL settled above the limit before its suite (gate.fail_fast)
            return f"{kl}; its task suite was not scored, the KL test rejects it whatever its score"
        if v.score is None:
            why = "has no task score"
            if v.errors:
                why += f" ({'; '.join(v.errors)})"
            return why
        return "has no recovery (the baseline has no usable score to compare with)"
    fails = []
    if rec + 1e-12 < gate.floor:
        a, b = fmt_pct_pair(rec, gate.floor)
        fails.append(f"recovers {a} < floor {b}")
    if gate.use_lower_bound and v.recovery_ci is not None and not v.is_baseline:
        low, high = v.recovery_ci
        if low + 1e-12 < bound_floor(gate):
            a, b = fmt_pct_pair(low, bound_floor(gate))
            fails.append(f"the lower bound of its 95% recovery interval is {a} < {b} (recovery "
                         f"{rec * 100:.1f}%, interval {low * 100:.1f}-{high * 100:.1f}%)")
    if kl is not None:
        fails.append(kl)
    return ", and ".join(fails) or None


def kl_failure(v: VariantResult, gate: QualityGate) -> str | None:
    """How `v` fails the KL test (its mean KL to the baseline above the limit), or None."""
    kl = v.fidelity_mean_kl
    if gate.max_kl is None or kl is None or kl <= gate.max_kl + 1e-15 or v.is_baseline:
        return None
    a, b = fmt_pair(kl, gate.max_kl)
    times = f" ({kl / gate.noise_floor_kl:.0f}x the noise floor {gate.noise_floor_kl:.2g})" \
        if gate.noise_floor_kl else ""
    return f"its mean KL to the baseline is {a} > limit {b}{times}"


def quality_caveat(v: VariantResult, gate: QualityGate) -> str | None:
    """What the verdict could not check for `v` (no interval, no KL), or None."""
    if v.is_baseline or effective_recovery(v) is None:
        return None
    missing = []
    if gate.use_lower_bound and v.recovery_ci is None:
        missing.append("no recovery interval (judged on the point estimate)")
    if gate.max_kl is not None and v.fidelity_mean_kl is None:
        missing.append("no KL to the baseline (its engine gives no prompt logprobs: judged on recovery alone)")
    return "; ".join(missing) or None


def suite_too_small(v: VariantResult, floor: float) -> str | None:
    """A sentence when the suite cannot resolve `floor` (what the lower bound is held to) for `v`: its recovery
    interval is wider than the room between that floor and 100%, so even a variant that scores like the baseline
    could fall below it."""
    if v.is_baseline or v.recovery_ci is None:
        return None
    half = (v.recovery_ci[1] - v.recovery_ci[0]) / 2
    room = 1.0 - floor
    if half <= room:
        return None
    n = v.eval.get("n_items") if isinstance(v.eval, dict) else None
    on = f" on {n} items" if n else ""
    return (f"{v.name}: the suite is too small to tell it from the baseline at a {floor * 100:g}% bound (its 95% "
            f"recovery interval is ±{half * 100:.1f} points{on}, more than the {room * 100:.1f} between the floor "
            f"and 100%); score more items or a larger suite")
