"""Map a load test's result (packager.loadtest's LoadTestResult, or its JSON) onto the report's LoadSummary.

When the load test ran the capacity search after its sweep (packager.loadtest.knee), the capacity at the SLO
(`max_load_meeting_slo`) is the knee it found and the cost "at SLO" is priced there.

The headline figures are those of ONE operating point, the load test's `summary` phase: the only phase of a
single-load test, or the sweep step at the highest load that met the SLOs (the step with the highest output
throughput when none did). Throughput, latency percentiles, goodput and cost all describe that same phase, so
cost == usd_per_hour / (output_tokens_per_s * utilisation * 3600) * 1e6 holds (`consistency_problems` checks it).

Per-request TTFT and TPOT samples (for the report's distribution plots) come from the run directory's
records.jsonl, when the directory is given: only successful requests of the summary phase, thinned to at most
`max_samples` evenly spaced order statistics (the distribution's shape is kept, the report stays small).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from packager.fsutil import iter_record_file
from packager.report.model import LoadSummary, SweepPoint

MAX_SAMPLES = 2000
SWEEP_UNITS = {"concurrency": "concurrency", "rate": "requests_per_s"}


def _load_value(load: dict[str, float]) -> float:
    return float(load.get("requests_per_s", load.get("users", 0.0)))


def usd_per_million(usd_per_hour: float | None, tokens_per_s: float, utilisation: float) -> float | None:
    """USD per 1M tokens: hourly price / (tokens/s x utilisation x 3600) x 1e6; None without a price or tokens."""
    if usd_per_hour is None or tokens_per_s <= 0:
        return None
    return usd_per_hour / (tokens_per_s * utilisation * 3600.0) * 1e6


def thin_samples(values: list[float], max_samples: int = MAX_SAMPLES) -> list[float]:
    """At most max_samples values: all of them, or evenly spaced order statistics (min and max kept)."""
    s = sorted(values)
    n = len(s)
    if n <= max_samples:
        return s
    if max_samples <= 1:
        return s[n // 2:n // 2 + 1]
    return [s[round(i * (n - 1) / (max_samples - 1))] for i in range(max_samples)]


def latency_samples(records_path: Path, phase_index: int, max_samples: int = MAX_SAMPLES
                    ) -> tuple[list[float], list[float]]:
    """(TTFT ms, TPOT ms) of the successful requests of one phase, read from a records.jsonl; ([], []) when the
    file is missing. TPOT = (E2E - TTFT) / (output tokens - 1), undefined below 2 output tokens."""
    ttft: list[float] = []
    tpot: list[float] = []
    for r in iter_record_file(Path(records_path)):
        if r.get("type", "request") != "request" or r.get("phase") != phase_index or not r.get("ok"):
            continue
        t, e2e, n_out = r.get("ttft_ms"), r.get("e2e_ms"), r.get("output_tokens")
        if t is None or not math.isfinite(float(t)):
            continue
        ttft.append(float(t))
        if e2e is not None and n_out is not None and int(n_out) >= 2:
            tpot.append((float(e2e) - float(t)) / (int(n_out) - 1))
    return thin_samples(ttft, max_samples), thin_samples(tpot, max_samples)


def _server_figures(telemetry: dict[str, Any] | None, phase_index: int) -> dict[str, float | None]:
    """The summary phase's server figures from a load test's telemetry (None where not reported)."""
    ph: dict[str, Any] = next((p for p in (telemetry or {}).get("phases", []) if p.get("index") == phase_index), {})
    return {"server_kv_cache_max": (ph.get("kv_cache_usage") or {}).get("max"),
            "server_requests_waiting_max": (ph.get("requests_waiting") or {}).get("max"),
            "server_preemptions": ph.get("preemptions")}


def from_loadtest_result(lt: Any, run_dir: Path | str | None = None, max_samples: int = MAX_SAMPLES) -> LoadSummary:
    """The report's LoadSummary of a LoadTestResult (object or its JSON dict). `run_dir` (the load test's
    output directory) adds per-request latency samples from its records.jsonl."""
    from packager.loadtest.result import LoadTestResult

    res = lt if isinstance(lt, LoadTestResult) else LoadTestResult.model_validate(lt)
    s = res.summary
    cost = res.cost
    usd_per_hour = cost.usd_per_hour if cost is not None else None
    util = cost.utilisation_fraction if cost is not None else 1.0
    out_tps, in_tps = s.output_token_throughput_per_s, s.input_token_throughput_per_s

    at_slo: float | None
    if res.sweep is None:  # one phase: the price spread over the tokens of the requests meeting every SLO
        at_slo = usd_per_million(usd_per_hour, s.goodput_output_tokens_per_s, util)
    else:  # a sweep: the price at the highest load meeting the SLOs (None when no step did)
        best = next((p for p in res.phases if p.index == res.sweep.highest_load_phase_index), None)
        at_slo = usd_per_million(usd_per_hour, best.output_token_throughput_per_s, util) if best else None

    sweep: list[SweepPoint] = []
    unit = None
    max_load = None
    if res.sweep is not None:
        unit = SWEEP_UNITS.get(res.sweep.mode, res.sweep.mode)
        sweep = [SweepPoint(offered=_load_value(p.load), requests_per_s=p.request_throughput_per_s,
                            output_tokens_per_s=p.output_token_throughput_per_s, ttft_ms_p95=p.ttft.p95_ms,
                            tpot_ms_p95=p.tpot.p95_ms, goodput_requests_per_s=p.goodput_requests_per_s)
                 for p in sorted(res.phases, key=lambda p: _load_value(p.load))]
        if res.sweep.highest_load_meeting_slo:
            max_load = _load_value(res.sweep.highest_load_meeting_slo)
    elif s.meets_slo:
        max_load = _load_value(s.load)  # the only load tried; it met the SLOs (higher loads were not tried)
    knee = res.knee
    if knee is not None and knee.knee is not None:  # the capacity search's knee, priced there
        max_load = knee.knee
        at_slo = usd_per_million(usd_per_hour, knee.output_tokens_per_s_at_knee or 0.0, util)

    ttft_samples: list[float] = []
    tpot_samples: list[float] = []
    if run_dir is not None:
        rel = res.files.get("records", "records.jsonl")
        ttft_samples, tpot_samples = latency_samples(Path(run_dir) / rel, s.index, max_samples)

    return LoadSummary(
        requests=s.requests_ok, errors=s.requests_failed + s.dropped_arrivals, duration_s=s.duration_s,
        requests_per_s=s.request_throughput_per_s, output_tokens_per_s=out_tps, input_tokens_per_s=in_tps,
        ttft_ms_p50=s.ttft.p50_ms, ttft_ms_p90=s.ttft.p90_ms, ttft_ms_p95=s.ttft.p95_ms, ttft_ms_p99=s.ttft.p99_ms,
        tpot_ms_p50=s.tpot.p50_ms, tpot_ms_p90=s.tpot.p90_ms, tpot_ms_p95=s.tpot.p95_ms, tpot_ms_p99=s.tpot.p99_ms,
        itl_ms_p50=s.itl.p50_ms, itl_ms_p95=s.itl.p95_ms,
        e2e_ms_p50=s.e2e.p50_ms, e2e_ms_p95=s.e2e.p95_ms, e2e_ms_p99=s.e2e.p99_ms,
        goodput_requests_per_s=s.goodput_requests_per_s, goodput_fraction=s.slo_attainment_fraction,
        usd_per_hour=usd_per_hour,
        usd_per_million_output_tokens=usd_per_million(usd_per_hour, out_tps, util),
        usd_per_million_input_tokens=usd_per_million(usd_per_hour, in_tps, util),
        usd_per_million_output_tokens_at_slo=at_slo,
        utilization_assumed=util if cost is not None else None,
        sweep_unit=unit, sweep=sweep, max_load_meeting_slo=max_load,
        knee_first_failing=knee.first_failing if knee else None, knee_resolved=knee.resolved if knee else None,
        knee_probes=sum(1 for p in knee.probes if p.source == "probe") if knee else 0,
        generator_bottleneck=res.generator.bottleneck_suspected, **_server_figures(res.telemetry, s.index),
        prompt_format=res.prompt_format, ttft_ms_samples=ttft_samples, tpot_ms_samples=tpot_samples,
        raw=res.model_dump(mode="json"),
    )
