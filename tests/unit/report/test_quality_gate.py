"""The quality tests of the recommendation (packager.report.quality_gate) and how recommend uses them."""
from __future__ import annotations

from packager.report.analysis import recommend
from packager.report.model import LoadSummary, VariantResult
from packager.report.quality_gate import QualityGate, quality_caveat, quality_failure, suite_too_small


def variant(name, recovery, ci=None, kl=None, baseline=False, usd=1.0, n=100):
    load = LoadSummary(requests=100, requests_per_s=1.0, output_tokens_per_s=50.0, ttft_ms_p95=100.0,
                       tpot_ms_p95=10.0, goodput_requests_per_s=1.0, goodput_fraction=1.0, usd_per_hour=1.0,
                       usd_per_million_output_tokens=usd)
    return VariantResult(name=name, recipe=None if baseline else name, is_baseline=baseline, score=0.5 * recovery,
                         recovery=recovery, recovery_ci=ci, fidelity_mean_kl=kl, load=load, eval={"n_items": n})


def test_lower_bound_and_point_estimate():
    v = variant("w8", 0.99, ci=(0.95, 1.02))
    assert quality_failure(v, QualityGate(0.97)) is None  # point estimate 99% >= 97%
    why = quality_failure(v, QualityGate(0.97, use_lower_bound=True))
    assert why is not None and why.startswith("the lower bound of its 95% recovery interval is 95% < 97%")
    assert "interval 95.0-102.0%" in why
    assert quality_failure(variant("w8", 0.99, ci=(0.975, 1.0)), QualityGate(0.97, use_lower_bound=True)) is None


def test_the_lower_bound_has_its_own_floor_and_the_point_estimate_is_still_judged():
    gate = QualityGate(0.97, use_lower_bound=True, lower_bound_floor=0.93)
    assert quality_failure(variant("w8", 0.99, ci=(0.95, 1.02)), gate) is None
    assert quality_failure(variant("w8", 0.97, ci=(0.93, 1.01)), gate) is None  # both exactly at their floors
    low = quality_failure(variant("w8", 0.99, ci=(0.92, 1.05)), gate)
    assert low == ("the lower bound of its 95% recovery interval is 92% < 93% (recovery 99.0%, interval "
                   "92.0-105.0%)")
    point = quality_failure(variant("w8", 0.96, ci=(0.94, 0.99)), gate)
    assert point == "recovers 96% < floor 97%"
    both = quality_failure(variant("w8", 0.95, ci=(0.90, 1.0)), gate)
    assert both is not None and both.startswith("recovers 95% < floor 97%, and the lower bound of its 95% recovery "
                                                "interval is 90% < 93%")
    # without use_lower_bound the bound's floor is not applied
    assert quality_failure(variant("w8", 0.99, ci=(0.5, 1.5)), QualityGate(0.97, lower_bound_floor=0.93)) is None
    # no interval: the point estimate, and the caveat says so
    nci = variant("g", 0.99)
    assert quality_failure(nci, QualityGate(0.97, use_lower_bound=True)) is None
    assert "no recovery interval" in str(quality_caveat(nci, QualityGate(0.97, use_lower_bound=True)))


def test_kl_limit_names_the_multiple_of_the_noise_floor():
    gate = QualityGate(0.9, max_kl=15 * 0.0004, noise_floor_kl=0.0004)
    why = quality_failure(variant("rtn", 0.95, kl=0.025), gate)
    assert why is not None and "its mean KL to the baseline is 0.03 > limit 0.01" in why and "(62x the noise" in why
    assert quality_failure(variant("sq", 0.95, kl=0.005), gate) is None
    # a limit under 0.05 never prints as 0.0 beside a KL that rounds to one decimal
    far = quality_failure(variant("w4", 0.95, kl=0.1685), QualityGate(0.9, max_kl=0.010544, noise_floor_kl=0.0007))
    assert far is not None and "is 0.17 > limit 0.01 (241x" in far
    both = quality_failure(variant("bad", 0.5, kl=0.025), gate)
    assert both is not None and both.startswith("recovers 50% < floor 90%, and its mean KL")
    # an engine without prompt logprobs: recovery alone, with a caveat
    assert quality_failure(variant("gguf", 0.95), gate) is None
    assert "no KL to the baseline" in str(quality_caveat(variant("gguf", 0.95), gate))
    # the baseline has no KL test and no caveat
    base = variant("baseline", 1.0, baseline=True)
    assert quality_failure(base, gate) is None and quality_caveat(base, gate) is None


def test_a_variant_rejected_by_its_kl_before_its_suite_is_told_as_such():
    """gate.fail_fast: no score, no recovery, no load test; the KL failure is the reason, and recommend passes
    over it with that reason."""
    gate = QualityGate(0.97, use_lower_bound=True, max_kl=0.0066, noise_floor_kl=0.00044)
    q4 = VariantResult(name="q4", recipe="q4", fidelity_mean_kl=0.0235)
    why = quality_failure(q4, gate)
    assert why == ("its mean KL to the baseline is 0.02 > limit 0.01 (53x the noise floor 0.00044); its task suite "
                   "was not scored, the KL test rejects it whatever its score")
    # no score and a KL within the limit (or none) is still a variant without a task score
    assert quality_failure(VariantResult(name="x", recipe="x", fidelity_mean_kl=0.001), gate) == "has no task score"
    base = variant("baseline", 1.0, baseline=True, usd=3.0)
    rec = recommend([base, q4], 0.97, 2000, 250, gate=gate)
    # rejected, not "quality unknown"; and no load test is no second failure: the KL verdict says all
    assert rec.variant == "baseline" and rec.rejected["q4"] == why and q4.meets_quality_floor is False
    assert q4.meets_slo is None


def test_recommend_takes_the_cheapest_variant_that_passes_both_tests():
    base = variant("baseline", 1.0, baseline=True, usd=3.0)
    cheap_moved = variant("rtn", 0.99, ci=(0.98, 1.0), kl=0.02, usd=1.0)
    wide = variant("q4", 0.99, ci=(0.90, 1.05), kl=0.001, usd=1.5)
    good = variant("sq", 0.99, ci=(0.975, 1.0), kl=0.004, usd=2.0)
    gate = QualityGate(0.97, use_lower_bound=True, max_kl=0.006, noise_floor_kl=0.0004)
    rec = recommend([base, cheap_moved, wide, good], 0.97, 2000, 250, gate=gate)
    assert rec.variant == "sq"
    assert "(recovery 99% >= 97%, its lower 95% bound 98% >= 97%)" in rec.reason
    assert "mean KL" in rec.rejected["rtn"] and "lower bound" in rec.rejected["q4"]
    assert cheap_moved.meets_quality_floor is False and good.meets_quality_floor is True
    # without the gate the cheapest by point estimate wins (the old behaviour)
    assert recommend([base, cheap_moved, wide, good], 0.97, 2000, 250).variant == "rtn"


def test_suite_too_small():
    assert suite_too_small(variant("w", 0.99, ci=(0.9, 1.08), n=30), 0.97) == (
        "w: the suite is too small to tell it from the baseline at a 97% bound (its 95% recovery interval is "
        "±9.0 points on 30 items, more than the 3.0 between the floor and 100%); score more items or a larger suite")
    assert suite_too_small(variant("w", 0.99, ci=(0.98, 1.0)), 0.97) is None
    assert suite_too_small(variant("b", 1.0, baseline=True), 0.97) is None


def test_the_report_shows_intervals_the_noise_floor_and_the_kl_limit():
    from unit.report.sample import sample_report

    from packager.report.render import render_markdown

    r = sample_report()
    w = next(v for v in r.variants if not v.is_baseline)
    w.recovery_ci, w.fidelity_mean_kl = (0.912, 1.013), 0.006
    r.noise_floor = {"served_dtype": "float32", "reference_dtype": "bfloat16", "mean_kl": 0.0004}
    r.gate = {"use_lower_bound": True, "lower_bound_floor": 0.85, "max_kl": 0.006, "max_kl_vs_noise": 15.0}
    md = render_markdown(r)
    assert "(91.2–101.3)" in md and "0.0060 (15×)" in md
    assert ("Quality floor: recovery ≥ 90%, its lower 95% bound ≥ 85%, mean KL ≤ 0.006 (15× the noise floor 0.0004: "
            "the baseline in bfloat16 against float32)") in md
    r.gate = {"use_lower_bound": True, "max_kl": None}  # a report written before the bound had its own floor
    assert "Quality floor: recovery ≥ 90%, its lower 95% bound ≥ 90%" in render_markdown(r)
