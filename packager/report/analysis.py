"""Decisions from a release Report: the quality-vs-cost Pareto frontier, the recommendation, and consistency checks.

Pure functions over packager.report.model objects (no I/O, no heavy imports).

* `pareto_frontier(variants)`: names of the variants no other variant beats on both task score (higher is better)
  and USD per 1M output tokens (lower is better), cheapest first.
* `recommend(variants, quality_floor, slo_ttft_ms, slo_tpot_ms, required_goodput_rps=None, expected_load=None)`:
  the cheapest variant that keeps enough quality (recovery >= floor; the baseline counts as 1.0) and meets the
  SLO at the tested load (with `expected_load`: at the sweep step that load falls on, so the engine that is
  cheapest at the user's traffic wins), or none with a plain statement of each variant's failure. Sets
  `meets_quality_floor` / `meets_slo` on every variant as a side effect.
* `compare_engines(variants)`: with variants served by more than one engine (vLLM, llama.cpp), the best
  output tokens/s of each engine at every offered load of the sweep and the load at which the lead changes.
* `consistency_problems(report)`: every figure that disagrees with another (cost vs price and throughput,
  recovery vs scores, percentile order, ...); an empty list means the report is internally consistent.

The number formatting its sentences use (`fmt_usd`, `load_words`, ...) lives in packager.core.formatting.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple, Sequence

from packager.core.formatting import fmt_pair, fmt_pct_pair, fmt_usd, load_words
from packager.engines.select import engine_label
from packager.report.loadsummary import usd_per_million
from packager.report.model import EngineComparison, LoadSummary, Recommendation, Report, VariantResult
from packager.report.quality_gate import QualityGate, bound_floor, effective_recovery, kl_failure, quality_failure

# A variant meets the SLO at the tested load when at least this share of its requests met every SLO
# (unless the caller asks for an absolute goodput in requests/s instead).
MIN_GOODPUT_FRACTION = 0.9
REL_TOL = 1e-6


# ----------------------------------------------------------------------------------------------------------- pareto
def _cost(v: VariantResult) -> float | None:
    return v.load.usd_per_million_output_tokens if v.load is not None else None


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def pareto_frontier(variants: Iterable[VariantResult]) -> list[str]:
    """Names of the variants on the quality-vs-cost frontier, cheapest first.

    A variant is on the frontier when no other variant has a score >= its score AND a cost <= its cost with at
    least one of the two strictly better. Variants lacking a score or a USD per 1M output tokens figure are left
    out. Exact ties (same score and cost) are all kept.
    """
    pts = [(v.name, float(v.score), float(_cost(v))) for v in variants  # type: ignore[arg-type]
           if _finite(v.score) and _finite(_cost(v))]
    front = []
    for name, s, c in pts:
        dominated = any((s2 >= s and c2 <= c) and (s2 > s or c2 < c) for _, s2, c2 in pts)
        if not dominated:
            front.append((c, -s, name))
    return [name for _, _, name in sorted(front)]


# ------------------------------------------------------------------------------------------------------- recommend
def load_failure(v: VariantResult) -> str | None:
    """Why a variant has no usable load-test figures, or None when it has them."""
    if v.load is None:
        return "; ".join(v.errors) if v.errors else "no load-test result"
    if v.load.requests <= 0:
        raw = v.load.raw if isinstance(v.load.raw, dict) else {}
        by_kind = (raw.get("summary") or {}).get("errors_by_kind") if isinstance(raw.get("summary"), dict) else None
        if raw.get("error"):
            detail = str(raw["error"])
        elif by_kind:
            detail = ", ".join(f"{k}: {n}" for k, n in by_kind.items())
        else:
            detail = "; ".join(v.errors)
        what = f"no request completed ({v.load.errors} error(s))"
        return f"{what}: {detail}" if detail else what
    return None


def _slo_failures(load: LoadSummary, slo_ttft_ms: float, slo_tpot_ms: float,
                  required_goodput_rps: float | None, min_goodput_fraction: float) -> list[str]:
    out: list[str] = []
    if required_goodput_rps is not None:
        g = load.goodput_requests_per_s
        if g is None:
            out.append("has no goodput figure")
        elif g + 1e-12 < required_goodput_rps:
            out.append(f"goodput {g:.3g} req/s < required {required_goodput_rps:.3g} req/s")
    else:
        f = load.goodput_fraction
        if f is None:
            out.append("has no goodput figure (share of requests meeting the SLO)")
        elif f + 1e-12 < min_goodput_fraction:
            a, b = fmt_pct_pair(f, min_goodput_fraction)
            out.append(f"only {a} of requests meet the SLO < {b} required")
    for label, value, limit in (("TTFT", load.ttft_ms_p95, slo_ttft_ms), ("TPOT", load.tpot_ms_p95, slo_tpot_ms)):
        if value is None:
            out.append(f"has no {label} p95")
        elif value > limit:
            a, b = fmt_pair(value, limit)
            out.append(f"misses {label} p95 {a} ms > {b} ms")
    return out


def falls_on(offered: float, expected_load: float) -> bool:
    """Whether a sweep step at `offered` covers the expected load: it was measured at least as hard."""
    return offered + 1e-9 >= expected_load


def load_at(load: LoadSummary, expected_load: float) -> tuple[LoadSummary | None, str | None]:
    """A variant's figures at the traffic the user expects: the sweep step at the lowest offered load >=
    `expected_load` (measured at least as hard as the traffic will be), as a copy of `load` carrying that
    step's throughput, p95 latencies, goodput and USD per 1M output tokens. (None, why) when the load test
    cannot say: no sweep, or every step below the expected load."""
    if not load.sweep:
        return None, (f"was load-tested at one load, not swept, so its figures at the expected load "
                      f"({expected_load:g}) are unknown")
    steps = sorted(load.sweep, key=lambda p: p.offered)
    step = next((p for p in steps if falls_on(p.offered, expected_load)), None)
    if step is None:
        return None, (f"was load-tested up to {load_words(steps[-1].offered, load.sweep_unit)}, below the expected "
                      f"load of {load_words(expected_load, load.sweep_unit)}")
    usd = usd_per_million(load.usd_per_hour, step.output_tokens_per_s, load.utilization_assumed or 1.0)
    fraction = (step.goodput_requests_per_s / step.requests_per_s
                if step.goodput_requests_per_s is not None and step.requests_per_s > 0 else None)
    return load.model_copy(update={
        "requests_per_s": step.requests_per_s, "output_tokens_per_s": step.output_tokens_per_s,
        "ttft_ms_p95": step.ttft_ms_p95, "tpot_ms_p95": step.tpot_ms_p95,
        "goodput_requests_per_s": step.goodput_requests_per_s, "goodput_fraction": fraction,
        "usd_per_million_output_tokens": usd, "sweep": [step],
    }), None


class _Criteria(NamedTuple):
    """What `recommend` judges every variant against."""

    gate: QualityGate
    slo_ttft_ms: float
    slo_tpot_ms: float
    required_goodput_rps: float | None
    min_goodput_fraction: float
    expected_load: float | None


def _slo_verdict(v: VariantResult, c: _Criteria) -> tuple[list[str], LoadSummary | None]:
    """Judge a variant's load test against the SLO (at the expected load when one is given) and set `meets_slo`.
    Returns its failures and the figures it was judged on (None where it could not be judged)."""
    lf = load_failure(v)
    if v.load is None or lf is not None:
        v.meets_slo = None
        if v.load is not None:
            return [f"load test failed: {lf}"], None
        if v.meets_quality_floor is False:  # not load-tested because rejected: the quality verdict says all
            return [], None
        if v.errors and v.score is not None:  # errors not already named by the quality verdict
            return [f"has no load-test result ({'; '.join(v.errors)})"], None
        return ["has no load-test result"], None
    view, why = (v.load, None) if c.expected_load is None else load_at(v.load, c.expected_load)
    if view is None:
        v.meets_slo = None
        return [str(why)], None
    fails = _slo_failures(view, c.slo_ttft_ms, c.slo_tpot_ms, c.required_goodput_rps, c.min_goodput_fraction)
    v.meets_slo = not fails
    return fails, view


def _judge(variants: Sequence[VariantResult],
           c: _Criteria) -> tuple[list[VariantResult], dict[str, str], dict[str, LoadSummary]]:
    """Set `meets_quality_floor` and `meets_slo` on every variant. Returns the variants that pass both and have
    a cost to rank them by, each other variant's failures as one sentence, and the load figures each variant
    is judged and ranked on."""
    passing: list[VariantResult] = []
    failures: dict[str, str] = {}
    at_load: dict[str, LoadSummary] = {}
    for v in variants:
        q_fail = quality_failure(v, c.gate)
        # no recovery: unknown, unless its KL alone rejects it (its suite skipped once the KL test had, fail_fast)
        v.meets_quality_floor = q_fail is None if effective_recovery(v) is not None else \
            (False if kl_failure(v, c.gate) else None)
        s_fails, view = _slo_verdict(v, c)
        if view is not None:
            at_load[v.name] = view
        fails = ([q_fail] if q_fail else []) + s_fails
        if not fails and not _finite(_cost_at(at_load, v)):
            fails.append("has no USD per 1M output tokens figure (no price or no output tokens), so it cannot be "
                         "ranked")
        if fails:
            failures[v.name] = ", ".join(fails)
        else:
            passing.append(v)
    return passing, failures, at_load


def _cost_at(at_load: dict[str, LoadSummary], v: VariantResult) -> float | None:
    return at_load[v.name].usd_per_million_output_tokens if v.name in at_load else None


def _rejections(ranked: list[VariantResult], at_load: dict[str, LoadSummary], failures: dict[str, str],
                considered: list[str]) -> dict[str, str]:
    """Why each variant but the first of `ranked` (the passing ones, cheapest first) was not chosen, with the
    failures of the others, in the order the variants were given."""
    best = ranked[0]
    best_cost = float(_cost_at(at_load, best))  # type: ignore[arg-type]  # passing variants all have a finite cost
    rejected: dict[str, str] = {}
    for v in ranked[1:]:
        c = _cost_at(at_load, v)
        if c == best_cost:
            rejected[v.name] = (f"meets the floor and the SLO at the same cost (USD {fmt_usd(c)} per 1M output tokens) "
                                f"but {best.name} wins the tie (higher recovery, then smaller size, then name)")
        else:
            rejected[v.name] = (f"meets the floor and the SLO but costs USD {fmt_usd(c)} per 1M output tokens "
                                f"> {fmt_usd(best_cost)} ({best.name})")
    rejected.update(failures)
    order = {name: i for i, name in enumerate(considered)}
    return dict(sorted(rejected.items(), key=lambda kv: order.get(kv[0], len(order))))


def _chosen_reason(best: VariantResult, variants: Sequence[VariantResult], at_load: dict[str, LoadSummary],
                   c: _Criteria, where: str) -> str:
    """Why `best` is recommended: its recovery, its SLO figures, its cost and how that compares with the
    baseline's."""
    best_cost = float(_cost_at(at_load, best))  # type: ignore[arg-type]  # passing variants all have a finite cost
    rec = float(effective_recovery(best))  # type: ignore[arg-type]  # passing variants all have one
    rec_s, floor_s = fmt_pct_pair(rec, c.gate.floor)
    what = f"recovery {rec_s} >= {floor_s}"
    if c.gate.use_lower_bound and best.recovery_ci and not best.is_baseline:
        low_s, bound_s = fmt_pct_pair(best.recovery_ci[0], bound_floor(c.gate))
        what += f", its lower 95% bound {low_s} >= {bound_s}"
    load = at_load[best.name]
    slo_bits = [f"TTFT p95 {load.ttft_ms_p95:.0f} ms <= {c.slo_ttft_ms:.0f} ms",
                f"TPOT p95 {load.tpot_ms_p95:.0f} ms <= {c.slo_tpot_ms:.0f} ms"]
    if c.required_goodput_rps is not None:
        slo_bits.append(f"goodput {load.goodput_requests_per_s:.3g} req/s >= {c.required_goodput_rps:.3g} req/s")
    elif load.goodput_fraction is not None:
        slo_bits.append(f"{load.goodput_fraction * 100:.0f}% of requests within the SLO")
    reason = (f"{best.name} is the cheapest variant that keeps the quality floor ({what}) "
              f"and meets the SLO at {where} ({', '.join(slo_bits)}): "
              f"USD {fmt_usd(best_cost)} per 1M output tokens")
    baseline = next((v for v in variants if v.is_baseline), None)
    base_cost = _cost_at(at_load, baseline) if baseline is not None else None
    if baseline is not None and baseline is not best and _finite(base_cost) and base_cost:
        bc = float(base_cost)
        change = (bc - best_cost) / bc
        word = "cheaper" if change >= 0 else "dearer"
        base_name = "the baseline" if baseline.name.lower() == "baseline" else f"the baseline {baseline.name}"
        reason += f", {abs(change) * 100:.0f}% {word} than {base_name} (USD {fmt_usd(bc)})"
    return reason + "."


def recommend(variants: Sequence[VariantResult], quality_floor: float, slo_ttft_ms: float, slo_tpot_ms: float,
              required_goodput_rps: float | None = None, *,
              min_goodput_fraction: float = MIN_GOODPUT_FRACTION, expected_load: float | None = None,
              gate: QualityGate | None = None) -> Recommendation:
    """The cheapest variant (USD per 1M output tokens) that keeps recovery >= quality_floor and meets the SLO
    at the tested load: goodput_fraction >= min_goodput_fraction (0.9; pass the load test's
    slo_attainment_target to match it), or goodput >= required_goodput_rps when that is given, and p95 TTFT
    and TPOT within the SLO. Ties on cost go to the higher recovery, then the smaller model, then the name.

    The tested load is the load-test summary (for a sweep: the highest load meeting the SLOs, the cost of a
    fully used machine) unless `expected_load` is given: then cost and SLO are read at the sweep step that
    load falls on (`load_at`), because which engine is cheaper depends on the traffic (llama.cpp at a few
    concurrent users, vLLM at many).

    `gate` adds the release's quality tests (the recovery interval's lower bound, the KL limit; see
    packager.report.quality_gate); without it recovery's point estimate is compared with `quality_floor`.

    Sets `meets_quality_floor` and `meets_slo` on every variant (None where it could not be judged). When no
    variant qualifies, `variant` is None and `reason` names each variant's failure.
    """
    gate = gate._replace(floor=quality_floor) if gate is not None else QualityGate(quality_floor)
    c = _Criteria(gate, slo_ttft_ms, slo_tpot_ms, required_goodput_rps, min_goodput_fraction, expected_load)
    passing, failures, at_load = _judge(variants, c)

    def cost(v: VariantResult) -> float | None:
        return _cost_at(at_load, v)

    considered = [v.name for v in variants]
    unit = next((v.load.sweep_unit for v in variants if v.load is not None and v.load.sweep_unit), None)
    where = "the tested load" if expected_load is None else f"the expected load of {load_words(expected_load, unit)}"
    extra: dict[str, Any] = {} if expected_load is None else {
        "expected_load": expected_load, "expected_load_unit": unit,
        "usd_per_million_output_tokens_at_expected_load": {v.name: cost(v) for v in variants}}
    if not variants:
        return Recommendation(variant=None, reason="No variant was evaluated, so none can be recommended.",
                              considered=[], rejected={}, **extra)
    if not passing:
        reason = ("No variant meets both the quality floor and the SLO"
                  + ("" if expected_load is None else f" at {where}") + ": "
                  + "; ".join(f"{name} {why}" for name, why in failures.items()) + ".")
        return Recommendation(variant=None, reason=reason, considered=considered, rejected=dict(failures), **extra)

    def key(v: VariantResult):
        return (cost(v), -(effective_recovery(v) or 0.0), v.size_bytes if v.size_bytes is not None else math.inf,
                v.name)

    passing.sort(key=key)
    best = passing[0]
    return Recommendation(variant=best.name, reason=_chosen_reason(best, variants, at_load, c, where),
                          considered=considered, rejected=_rejections(passing, at_load, failures, considered),
                          **extra)


# -------------------------------------------------------------------------------------------------- consistency
def compare_engines(variants: Sequence[VariantResult], expected_load: float | None = None) -> EngineComparison | None:
    """Engines side by side over the load sweep, or None unless at least two engines have sweeps in one unit.

    Variants known to miss the quality floor (`meets_quality_floor` False: run `recommend` first) are left
    out: an engine should not lead on the strength of a variant nobody may ship.
    """
    swept = [v for v in variants if v.load is not None and v.load.sweep and v.meets_quality_floor is not False]
    units = {v.load.sweep_unit for v in swept}  # type: ignore[union-attr]
    engines = sorted({v.engine for v in swept})
    if len(engines) < 2 or len(units) != 1:
        return None
    offered = sorted({p.offered for v in swept for p in v.load.sweep})  # type: ignore[union-attr]
    best: dict[str, list[float | None]] = {e: [] for e in engines}
    who: dict[str, list[str | None]] = {e: [] for e in engines}
    for x in offered:
        for e in engines:
            cands = [(p.output_tokens_per_s, v.name) for v in swept if v.engine == e
                     for p in v.load.sweep if p.offered == x]  # type: ignore[union-attr]
            top = max(cands, default=None)
            best[e].append(None if top is None else top[0])
            who[e].append(None if top is None else top[1])
    leader: list[str | None] = []
    for i in range(len(offered)):
        vals = [(best[e][i], e) for e in engines if best[e][i] is not None]
        leader.append(max(vals)[1] if len(vals) >= 2 else None)
    crossovers: list[dict] = []
    prev_i = None
    for i, lead in enumerate(leader):
        if lead is None:
            continue
        if prev_i is not None and leader[prev_i] != lead:
            crossovers.append({"from_engine": leader[prev_i], "to_engine": lead, "after": offered[prev_i],
                               "at": offered[i]})
        prev_i = i
    unit = units.pop()

    led = [(x, lead) for x, lead in zip(offered, leader) if lead is not None]
    if not led:
        summary = "No offered load was run on every engine, so the engines cannot be compared."
    elif not crossovers:
        summary = (f"{engine_label(led[0][1])} sustained the most output tokens/s at every offered load compared "
                   f"({led[0][0]:g} to {load_words(led[-1][0], unit)}).")
    else:
        parts = [f"{engine_label(led[0][1])} leads from {load_words(led[0][0], unit)}"]
        for c in crossovers:
            parts.append(f"{engine_label(c['to_engine'])} from {c['at']:g} "
                         f"(crossover between {c['after']:g} and {c['at']:g})")
        summary = "; ".join(parts) + "."
        if expected_load is None:
            summary += (" Which is cheaper for you depends on the traffic you expect: set expected_load in the "
                        "configuration to rank the variants at it.")
    if led and expected_load is not None:
        summary += " " + _expected_load_sentence(led, expected_load, unit)
    return EngineComparison(sweep_unit=unit, offered=offered, best_output_tokens_per_s=best, best_variant=who,
                            leader=leader, crossovers=crossovers, summary=summary)


def _expected_load_sentence(led: list[tuple[float, str]], expected_load: float, unit: str | None) -> str:
    """Which engine leads at the sweep step the expected load falls on (the step the recommendation is ranked
    at), whether or not the lead changes over the sweep; or why no compared step covers that load."""
    where = f"the expected load of {load_words(expected_load, unit)}"
    step = next(((x, lead) for x, lead in led if falls_on(x, expected_load)), None)
    if step is None:
        return (f"No load run on every engine covers {where} (the highest is {load_words(led[-1][0], unit)}), so "
                f"the engines are not compared there.")
    return (f"At {where} (measured at {step[0]:g}) {engine_label(step[1])} leads, and the recommendation is "
            f"ranked there.")


def _close(a: float, b: float, rel_tol: float = REL_TOL) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-12)


PERCENTILE_CHAINS: dict[str, tuple[str, ...]] = {
    "ttft_ms": ("p50", "p90", "p95", "p99"),
    "tpot_ms": ("p50", "p90", "p95", "p99"),
    "itl_ms": ("p50", "p95"),
    "e2e_ms": ("p50", "p95", "p99"),
}


def _load_problems(name: str, load: LoadSummary) -> list[str]:
    out: list[str] = []
    for field, value in load.model_dump(exclude={"raw", "sweep", "ttft_ms_samples", "tpot_ms_samples"}).items():
        if isinstance(value, float) and not math.isfinite(value):
            out.append(f"{name}: load.{field} is {value} (not a finite number)")
    for field in ("ttft_ms_samples", "tpot_ms_samples"):
        bad = [x for x in getattr(load, field) if not math.isfinite(x) or x < 0]
        if bad:
            out.append(f"{name}: load.{field} holds {len(bad)} negative or non-finite value(s), e.g. {bad[0]}")
    # cost = price / (output tokens per second * utilisation * 3600) * 1e6 (utilisation 1 unless recorded)
    price, tps, cost = load.usd_per_hour, load.output_tokens_per_s, load.usd_per_million_output_tokens
    util = load.utilization_assumed if load.utilization_assumed is not None else 1.0
    if not (0.0 < util <= 1.0):
        out.append(f"{name}: utilization_assumed {util} is outside (0, 1]")
        util = 1.0
    if cost is not None:
        if price is None or not tps or tps <= 0:
            out.append(f"{name}: usd_per_million_output_tokens is {cost} but usd_per_hour ({price}) or "
                       f"output_tokens_per_s ({tps}) is missing or zero, so it cannot be derived")
        elif math.isfinite(cost):
            expected = price / (tps * util * 3600.0) * 1e6
            if not _close(cost, expected):
                util_s = "" if util == 1.0 else f" * utilization {util:.6g}"
                out.append(f"{name}: usd_per_million_output_tokens {cost:.6g} != usd_per_hour {price:.6g} / "
                           f"(output_tokens_per_s {tps:.6g}{util_s} * 3600) * 1e6 = {expected:.6g}")
    elif price is not None and tps and tps > 0:
        out.append(f"{name}: usd_per_million_output_tokens is missing although usd_per_hour ({price}) and "
                   f"output_tokens_per_s ({tps}) are known")
    for metric, chain in PERCENTILE_CHAINS.items():
        vals = [(p, getattr(load, f"{metric}_{p}")) for p in chain]
        vals = [(p, x) for p, x in vals if x is not None and math.isfinite(x)]
        for (p1, x1), (p2, x2) in zip(vals, vals[1:]):
            if x1 > x2 * (1 + REL_TOL) + 1e-12:
                out.append(f"{name}: {metric}_{p1} {x1:.6g} > {metric}_{p2} {x2:.6g} (percentiles must not decrease)")
    f = load.goodput_fraction
    if f is not None and math.isfinite(f) and not (0.0 <= f <= 1.0):
        out.append(f"{name}: goodput_fraction {f} is outside [0, 1]")
    g, r = load.goodput_requests_per_s, load.requests_per_s
    if g is not None and math.isfinite(g) and g > r * (1 + REL_TOL) + 1e-12:
        out.append(f"{name}: goodput_requests_per_s {g:.6g} > requests_per_s {r:.6g}")
    for i, sp in enumerate(load.sweep):
        if (sp.goodput_requests_per_s is not None
                and sp.goodput_requests_per_s > sp.requests_per_s * (1 + REL_TOL) + 1e-12):
            out.append(f"{name}: sweep point {i} (offered {sp.offered}) goodput {sp.goodput_requests_per_s:.6g} "
                       f"> requests_per_s {sp.requests_per_s:.6g}")
    return out


def consistency_problems(report: Report) -> list[str]:
    """Every pair of figures in the report that disagree, as sentences; [] when the report is consistent.

    Checks: one baseline and it is the variant `report.baseline` names; usd_per_million_output_tokens ==
    usd_per_hour / (output_tokens_per_s * utilization_assumed * 3600) * 1e6 (utilization 1 when not recorded;
    rel tol 1e-6); recovery == score / baseline score; the
    baseline's recovery is 1 or None; percentiles ordered (p50 <= p90 <= p95 <= p99); goodput within bounds;
    no NaN/inf; names unique; `pareto` matches the frontier computed from the variants; the recommended
    variant exists and passed both verdicts.
    """
    out: list[str] = []
    names = [v.name for v in report.variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        out.append(f"variant names are not unique: {dupes}")
    flagged = [v.name for v in report.variants if v.is_baseline]
    if report.baseline not in names:
        out.append(f"baseline {report.baseline!r} is not one of the variants {names}")
    if flagged != [report.baseline] and report.baseline in names:
        out.append(f"variants flagged is_baseline {flagged} do not match report.baseline {report.baseline!r}")
    base = next((v for v in report.variants if v.name == report.baseline), None)
    if base is not None and base.recovery is not None and not _close(base.recovery, 1.0):
        out.append(f"baseline {base.name}: recovery is {base.recovery}, expected 1 or None")
    base_score = base.score if base is not None else None
    for v in report.variants:
        for field in ("score", "recovery", "perplexity", "fidelity_agreement", "fidelity_mean_kl"):
            x = getattr(v, field)
            if x is not None and not math.isfinite(x):
                out.append(f"{v.name}: {field} is {x} (not a finite number)")
        if v.recovery is not None and math.isfinite(v.recovery):
            if base_score is None or v.score is None or base_score == 0:
                if v is not base:
                    out.append(f"{v.name}: recovery {v.recovery:.6g} cannot be derived: score {v.score} / baseline "
                               f"score {base_score}")
            elif not _close(v.recovery, v.score / base_score):
                out.append(f"{v.name}: recovery {v.recovery:.6g} != score {v.score:.6g} / baseline score "
                           f"{base_score:.6g} = {v.score / base_score:.6g}")
        if v.load is not None:
            out.extend(_load_problems(v.name, v.load))
    front = pareto_frontier(report.variants)
    if sorted(report.pareto) != sorted(front):
        out.append(f"pareto {report.pareto} differs from the frontier computed from the variants {front}")
    rec = report.recommendation
    if rec.variant is not None:
        if rec.variant not in names:
            out.append(f"recommended variant {rec.variant!r} is not one of the variants {names}")
        else:
            chosen = report.variant(rec.variant)
            if chosen.meets_quality_floor is False or chosen.meets_slo is False:
                out.append(f"recommended variant {rec.variant} is marked meets_quality_floor="
                           f"{chosen.meets_quality_floor}, meets_slo={chosen.meets_slo}")
            if rec.variant in rec.rejected:
                out.append(f"recommended variant {rec.variant} is also listed as rejected")
    return out
