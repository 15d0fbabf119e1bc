"""Pareto frontier, recommendation and consistency checks on hand-made variants."""
from __future__ import annotations

import pytest

from packager.report.analysis import consistency_problems, pareto_frontier, recommend
from packager.report.model import LoadSummary, Recommendation, Report, VariantResult

from unit.report.sample import sample_report

PRICE = 1.0  # USD per hour: cost = 1e6 / (3600 * tok/s)


def load(tps: float, ttft_p95: float = 500.0, tpot_p95: float = 50.0, frac: float = 1.0, rps: float = 5.0,
         price: float | None = PRICE, cost: float | None = None) -> LoadSummary:
    return LoadSummary(
        requests=100, requests_per_s=rps, output_tokens_per_s=tps,
        ttft_ms_p50=ttft_p95 / 2, ttft_ms_p90=ttft_p95 * 0.9, ttft_ms_p95=ttft_p95, ttft_ms_p99=ttft_p95 * 1.2,
        tpot_ms_p50=tpot_p95 / 2, tpot_ms_p90=tpot_p95 * 0.9, tpot_ms_p95=tpot_p95, tpot_ms_p99=tpot_p95 * 1.2,
        goodput_fraction=frac, goodput_requests_per_s=rps * frac, usd_per_hour=price,
        usd_per_million_output_tokens=cost if cost is not None else (
            price / (tps * 3600) * 1e6 if price is not None and tps else None),
    )


def variant(name: str, score: float | None, tps: float | None = None, base_score: float = 0.6, baseline=False,
            **load_kw) -> VariantResult:
    return VariantResult(name=name, is_baseline=baseline, score=score,
                         recovery=None if score is None else (1.0 if baseline else score / base_score),
                         load=load(tps, **load_kw) if tps is not None else None)


def cost_of(v: VariantResult) -> float:
    return v.load.usd_per_million_output_tokens


# --------------------------------------------------------------------------------------------------------- pareto
def test_pareto_keeps_only_undominated_cheapest_first():
    vs = [variant("base", 0.60, tps=100, baseline=True),  # cost 2.78, best score
          variant("int8", 0.58, tps=200),                  # cost 1.39
          variant("int4", 0.50, tps=150),                  # cost 1.85: dominated by int8 (better and cheaper)
          variant("tiny", 0.30, tps=400)]                  # cost 0.69, worst score, cheapest
    assert pareto_frontier(vs) == ["tiny", "int8", "base"]


def test_pareto_excludes_variants_without_score_or_cost_and_keeps_exact_ties():
    vs = [variant("a", 0.5, tps=100), variant("b", 0.5, tps=100),  # identical: neither dominates
          variant("no-score", None, tps=1000), variant("no-load", 0.9),
          variant("no-price", 0.99, tps=1000, price=None)]
    assert cost_of(vs[4]) is None
    assert pareto_frontier(vs) == ["a", "b"]
    assert pareto_frontier([]) == []


def test_pareto_same_cost_lower_score_is_dominated():
    vs = [variant("a", 0.5, tps=100), variant("b", 0.4, tps=100)]
    assert pareto_frontier(vs) == ["a"]


# ------------------------------------------------------------------------------------------------------ recommend
def test_cheapest_passing_variant_wins_and_verdicts_are_set():
    vs = [variant("base", 0.60, tps=100, baseline=True),
          variant("int8", 0.58, tps=200),               # passes, cost 1.39
          variant("int4", 0.50, tps=400),               # cheapest but recovers 83% < 90%
          variant("slow", 0.60, tps=300, ttft_p95=2500)]  # cheaper than int8 but misses TTFT
    rec = recommend(vs, quality_floor=0.9, slo_ttft_ms=2000, slo_tpot_ms=250)
    assert rec.variant == "int8"
    assert rec.considered == ["base", "int8", "int4", "slow"]
    assert rec.rejected["int4"] == "recovers 83% < floor 90%"
    assert rec.rejected["slow"] == "misses TTFT p95 2500 ms > 2000 ms"
    assert rec.rejected["base"].startswith("meets the floor and the SLO but costs USD 2.78 per 1M output tokens > 1.39")
    assert "int8" not in rec.rejected
    assert "int8 is the cheapest variant" in rec.reason and "USD 1.39 per 1M output tokens" in rec.reason
    assert "50% cheaper than the baseline base (USD 2.78)" in rec.reason
    verdicts = {v.name: (v.meets_quality_floor, v.meets_slo) for v in vs}
    assert verdicts == {"base": (True, True), "int8": (True, True), "int4": (False, True), "slow": (True, False)}


def test_baseline_counts_as_full_recovery_when_its_recovery_is_missing():
    base = variant("base", 0.6, tps=100, baseline=True)
    base.recovery = None
    rec = recommend([base], quality_floor=1.0, slo_ttft_ms=2000, slo_tpot_ms=250)
    assert rec.variant == "base" and base.meets_quality_floor is True
    assert "recovery 100% >= 100%" in rec.reason


def test_none_passing_returns_none_with_each_variants_failure():
    vs = [variant("w8a8-int8", 0.492, tps=200, base_score=0.6),
          variant("gptq-w4a16", 0.6, tps=300, ttft_p95=2400),
          variant("tpot-slow", 0.6, tps=300, tpot_p95=300.5),
          variant("crowded", 0.6, tps=300, frac=0.85),
          variant("broken", 0.6)]
    vs[-1].errors = ["bento did not start"]
    rec = recommend(vs, quality_floor=0.9, slo_ttft_ms=2000, slo_tpot_ms=250)
    assert rec.variant is None
    assert rec.reason.startswith("No variant meets both the quality floor and the SLO: ")
    assert "w8a8-int8 recovers 82% < floor 90%" in rec.reason
    assert "gptq-w4a16 misses TTFT p95 2400 ms > 2000 ms" in rec.reason
    assert rec.rejected["tpot-slow"] == "misses TPOT p95 300 ms > 250 ms"
    assert rec.rejected["crowded"] == "only 85% of requests meet the SLO < 90% required"
    assert rec.rejected["broken"] == "has no load-test result (bento did not start)"
    assert set(rec.rejected) == {v.name for v in vs}
    assert vs[-1].meets_slo is None and vs[-1].meets_quality_floor is True
    assert vs[0].meets_quality_floor is False and vs[1].meets_slo is False


def test_failed_load_and_missing_score_are_named():
    failed = variant("f", 0.6, tps=100)
    failed.load = LoadSummary(requests=0, errors=7, raw={"error": "connection refused"})
    noscore = variant("n", None, tps=100)
    noscore.errors = ["compression failed: out of memory"]
    rec = recommend([failed, noscore], 0.9, 2000, 250)
    assert rec.variant is None
    assert rec.rejected["f"] == "load test failed: no request completed (7 error(s)): connection refused"
    assert rec.rejected["n"] == "has no task score (compression failed: out of memory)"
    assert noscore.meets_quality_floor is None and noscore.meets_slo is True


def test_percent_formatting_shows_the_difference_near_the_floor():
    v = variant("close", 0.5394, tps=100, base_score=0.6)  # recovery 0.899
    rec = recommend([v], 0.9, 2000, 250)
    assert rec.rejected["close"] == "recovers 89.9% < floor 90.0%"


def test_required_goodput_replaces_the_fraction_rule():
    vs = [variant("a", 0.6, tps=400, frac=0.5, rps=4.0),   # goodput 2.0 req/s
          variant("b", 0.6, tps=200, frac=0.95, rps=4.0)]  # goodput 3.8 req/s
    assert recommend(vs, 0.9, 2000, 250).variant == "b"  # a: 50% < 90%
    rec = recommend(vs, 0.9, 2000, 250, required_goodput_rps=1.5)
    assert rec.variant == "a" and "goodput 2 req/s >= 1.5 req/s" in rec.reason
    rec = recommend(vs, 0.9, 2000, 250, required_goodput_rps=3.0)
    assert rec.variant == "b" and rec.rejected["a"] == "goodput 2 req/s < required 3 req/s"


def test_cost_ties_go_to_higher_recovery_then_smaller_size_then_name():
    a = variant("a", 0.57, tps=200)
    b = variant("b", 0.59, tps=200)
    assert recommend([a, b], 0.9, 2000, 250).variant == "b"
    c, d, e = variant("c", 0.59, tps=200), variant("d", 0.59, tps=200), variant("e", 0.59, tps=200)
    c.size_bytes, d.size_bytes, e.size_bytes = 300, 100, 100
    rec = recommend([c, d, e], 0.9, 2000, 250)
    assert rec.variant == "d"
    assert "same cost" in rec.rejected["e"] and "same cost" in rec.rejected["c"]


def test_passing_variant_without_cost_cannot_be_ranked():
    v = variant("free", 0.6, tps=100, price=None)
    rec = recommend([v], 0.9, 2000, 250)
    assert rec.variant is None and "cannot be ranked" in rec.rejected["free"]
    assert v.meets_quality_floor is True and v.meets_slo is True


def test_no_variants():
    rec = recommend([], 0.9, 2000, 250)
    assert rec.variant is None and "No variant" in rec.reason


# ---------------------------------------------------------------------------------------------------- consistency
def consistent_report() -> Report:
    vs = [variant("base", 0.6, tps=100, baseline=True), variant("int8", 0.58, tps=200)]
    rec = recommend(vs, 0.9, 2000, 250)
    return Report(model="m", baseline="base", quality_floor=0.9, slo={"ttft_ms": 2000, "tpot_ms": 250},
                  variants=vs, pareto=pareto_frontier(vs), recommendation=rec)


def test_consistent_reports_have_no_problems():
    assert consistency_problems(consistent_report()) == []
    assert consistency_problems(sample_report()) == []


def test_catches_a_wrong_cost():
    r = consistent_report()
    r.variant("int8").load.usd_per_million_output_tokens *= 1.01
    probs = consistency_problems(r)
    assert len(probs) == 1
    assert probs[0].startswith("int8: usd_per_million_output_tokens 1.40278 != usd_per_hour 1 / "
                               "(output_tokens_per_s 200 * 3600) * 1e6 = 1.38889")


def test_cost_check_accounts_for_the_assumed_utilisation():
    r = consistent_report()
    ld = r.variant("int8").load
    ld.utilization_assumed = 0.5
    assert any("* utilization 0.5 * 3600) * 1e6 = 2.77778" in p for p in consistency_problems(r))
    ld.usd_per_million_output_tokens = ld.usd_per_hour / (ld.output_tokens_per_s * 0.5 * 3600) * 1e6
    r.pareto = pareto_frontier(r.variants)  # int8 now costs as much as the baseline, which scores higher
    assert r.pareto == ["base"]
    assert consistency_problems(r) == []


def test_min_goodput_fraction_follows_the_load_tests_target():
    v = variant("a", 0.6, tps=100, frac=0.85)
    assert recommend([v], 0.9, 2000, 250).variant is None
    assert recommend([v], 0.9, 2000, 250, min_goodput_fraction=0.8).variant == "a"


def test_cost_within_tolerance_is_accepted():
    r = consistent_report()
    r.variant("int8").load.usd_per_million_output_tokens *= 1 + 1e-9
    assert consistency_problems(r) == []


def test_catches_a_wrong_recovery_and_a_wrong_baseline_recovery():
    r = consistent_report()
    r.variant("int8").recovery = 0.95
    r.variant("base").recovery = 0.99
    probs = consistency_problems(r)
    assert "base: recovery is 0.99, expected 1 or None" in probs[0]
    assert any(p.startswith("int8: recovery 0.95 != score 0.58 / baseline score 0.6 = 0.966667") for p in probs)


def test_catches_unordered_percentiles_and_cost_without_price():
    r = consistent_report()
    ld = r.variant("base").load
    ld.ttft_ms_p90, ld.ttft_ms_p95 = 600.0, 500.0
    r.variant("int8").load.usd_per_hour = None
    probs = consistency_problems(r)
    assert "base: ttft_ms_p90 600 > ttft_ms_p95 500 (percentiles must not decrease)" in probs
    assert any(p.startswith("int8: usd_per_million_output_tokens") and "cannot be derived" in p for p in probs)


def test_catches_baseline_mismatch_wrong_pareto_and_bad_recommendation():
    r = consistent_report()
    r.baseline = "nope"
    r.pareto = ["base"]
    r.recommendation = Recommendation(variant="ghost", reason="x")
    probs = consistency_problems(r)
    assert "baseline 'nope' is not one of the variants ['base', 'int8']" in probs
    assert any(p.startswith("pareto ['base'] differs from the frontier computed from the variants") for p in probs)
    assert any("recommended variant 'ghost' is not one of the variants" in p for p in probs)


def test_catches_nan_and_goodput_out_of_bounds():
    r = consistent_report()
    ld = r.variant("int8").load
    ld.e2e_ms_p50 = float("nan")
    ld.goodput_fraction = 1.2
    ld.goodput_requests_per_s = ld.requests_per_s * 2
    probs = consistency_problems(r)
    assert "int8: load.e2e_ms_p50 is nan (not a finite number)" in probs
    assert "int8: goodput_fraction 1.2 is outside [0, 1]" in probs
    assert any(p.startswith("int8: goodput_requests_per_s 10 > requests_per_s 5") for p in probs)


@pytest.mark.parametrize("field", ["ttft_ms_samples", "tpot_ms_samples"])
def test_catches_negative_samples(field):
    r = consistent_report()
    setattr(r.variant("base").load, field, [1.0, -2.0])
    assert any(f"load.{field} holds 1 negative" in p for p in consistency_problems(r))
