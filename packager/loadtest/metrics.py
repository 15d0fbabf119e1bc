"""Pure functions from per-request records to figures: percentiles, TPOT, goodput, phase summaries, cost.

A request record (one JSON line written by the locustfile) holds: phase, ok, status, error_kind, ttft_ms,
itl_ms (list), e2e_ms, input_tokens and output_tokens (from the server's usage), usage_present,
dispatch_lag_ms, t_start_unix, t_end_unix. A phase summary record (one per generator share and phase)
holds start_unix, dispatch_end_unix, drain_end_unix, dropped_arrivals, request_cap_reached,
cancelled_at_drain_timeout.

Definitions (docs/architecture.md, Metrics): TTFT = request sent -> first content token; ITL = gap between \
consecutive content
chunks; TPOT = (E2E - TTFT) / (output tokens - 1); goodput = successful requests meeting every SLO (TTFT
and TPOT limits) per second, as DistServe and `vllm bench serve --goodput` (a request with one output token
has no TPOT and is judged on TTFT alone). After a warm-up, the token throughputs and the goodput in tokens also
count what the warm-up's requests (those meeting every SLO, for the goodput) generated inside the measured time.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Sequence

from packager.config import SLOConfig
from packager.loadtest.pricing import PriceQuote, usd_per_million_tokens
from packager.loadtest.result import CostPoint, CostResult, LatencySummary, PhaseResult, SweepResult

PERCENTILES = (50, 90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within [0, 100], got {q}")
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize_latencies(values: Iterable[float | None]) -> LatencySummary:
    v = sorted(float(x) for x in values if x is not None)
    if not v:
        return LatencySummary()
    return LatencySummary(count=len(v), mean_ms=sum(v) / len(v), p50_ms=percentile(v, 50), p90_ms=percentile(v, 90),
                          p95_ms=percentile(v, 95), p99_ms=percentile(v, 99), max_ms=v[-1])


def tpot_ms(e2e_ms: float | None, ttft_ms: float | None, output_tokens: int | None) -> float | None:
    """(E2E - TTFT) / (output tokens - 1); None when undefined (fewer than 2 output tokens, or no TTFT)."""
    if e2e_ms is None or ttft_ms is None or output_tokens is None or output_tokens < 2:
        return None
    return (e2e_ms - ttft_ms) / (output_tokens - 1)


def meets_slo(rec: dict[str, Any], slo: SLOConfig) -> bool:
    """A successful request with a first token within slo.ttft_ms and a TPOT within slo.tpot_ms."""
    if not rec.get("ok") or rec.get("ttft_ms") is None:
        return False
    if rec["ttft_ms"] > slo.ttft_ms:
        return False
    t = tpot_ms(rec.get("e2e_ms"), rec.get("ttft_ms"), rec.get("output_tokens"))
    return t is None or t <= slo.tpot_ms


def slo_ratio(rec: dict[str, Any], slo: SLOConfig) -> float:
    """How far a request ran from the SLO: max(TTFT / slo.ttft_ms, TPOT / slo.tpot_ms), at most 1 exactly when it
    meets it (`meets_slo`); infinite for a request that failed or has no first token."""
    if not rec.get("ok") or rec.get("ttft_ms") is None:
        return math.inf
    t = tpot_ms(rec.get("e2e_ms"), rec.get("ttft_ms"), rec.get("output_tokens"))
    return max(rec["ttft_ms"] / slo.ttft_ms, t / slo.tpot_ms if t is not None else 0.0)


def slo_ratio_at_target(ratios: Iterable[float], dropped: int, target: float) -> float | None:
    """The ratio of the request at the attainment target's rank (the ceil(target x offered)-th smallest, dropped
    arrivals counted as infinite): at most 1 exactly when attainment >= target. None: that request did not finish."""
    ranked = sorted(ratios) + [math.inf] * dropped
    if not ranked:
        return None
    v = ranked[max(math.ceil(target * len(ranked) - 1e-9), 1) - 1]
    return v if math.isfinite(v) else None


def goodput_requests_per_s(records: Iterable[dict[str, Any]], slo: SLOConfig, duration_s: float) -> float:
    if duration_s <= 0:
        return 0.0
    return sum(1 for r in records if meets_slo(r, slo)) / duration_s


def tokens_between(records: Iterable[dict[str, Any]], t0: float, t1: float) -> tuple[float, float]:
    """(input, output) tokens of these requests that the server processed between times `t0` and `t1`: a request's
    output tokens spread evenly between its first token and its end, its input counted when its first token came
    in [t0, t1] (its prompt was processed then)."""
    tin = tout = 0.0
    for r in records:
        if not (r.get("ok") and r.get("usage_present")) or r.get("t_end_unix") is None or r.get("ttft_ms") is None:
            continue
        first, end = r["t_start_unix"] + r["ttft_ms"] / 1000.0, r["t_end_unix"]
        if t0 <= first <= t1:
            tin += int(r.get("input_tokens") or 0)
        overlap = min(end, t1) - max(first, t0)
        if overlap > 0:
            tout += int(r.get("output_tokens") or 0) * min(overlap / max(end - first, 1e-9), 1.0)
    return tin, tout


Records = list[dict[str, Any]]


def full_load_end(records: Records, fallback: float) -> float:
    """When the first closed-loop user stopped: the earliest end of a user's last request. Until then every user
    had a request in flight (each sends its next as its last ends), so the server ran at the phase's whole load,
    the first wave's queue and the load that followed alike. `fallback` (the end of the dispatch) where the
    records name no user."""
    last: dict[int, float] = {}
    for r in records:
        u, end = r.get("user"), r.get("t_end_unix")
        if u is not None and end is not None:
            last[u] = max(last.get(u, end), end)
    return min(last.values()) if last else fallback


def _measured(reqs: Records, t_start: float, warmup_s: float) -> tuple[Records, Records, Records]:
    """(the requests judged, those started in the first `warmup_s` seconds, and each closed-loop user's first
    request where the load test marked one, unless no user got past its first: then those are judged)."""
    early = [r for r in reqs if r["t_start_unix"] < t_start + warmup_s] if warmup_s > 0 else []
    judged = [r for r in reqs if not (warmup_s > 0 and r["t_start_unix"] < t_start + warmup_s)]
    firsts = [r for r in judged if r.get("first_of_user")]
    if firsts and len(firsts) < len(judged):
        return [r for r in judged if not r.get("first_of_user")], early, firsts
    return judged, early, []


def _usage_tokens(records: Records) -> tuple[int, int]:
    """(input, output) tokens of the successful requests that report usage."""
    use = [r for r in records if r.get("ok") and r.get("usage_present")]
    return (sum(int(r.get("input_tokens") or 0) for r in use), sum(int(r.get("output_tokens") or 0) for r in use))


def _window_rates(records: Records, slo: SLOConfig, t0: float, t1: float) -> tuple[float, ...]:
    """(requests/s, good requests/s, input tokens/s, output tokens/s, good input and output tokens/s) between t0 and
    t1: every request by the tokens it generated then, and counted when it ended then."""
    span = max(t1 - t0, 1e-9)
    ended = [r for r in records if r.get("ok") and r.get("t_end_unix") is not None and t0 <= r["t_end_unix"] <= t1]
    t_in, t_out = tokens_between(records, t0, t1)
    g_in, g_out = tokens_between([r for r in records if meets_slo(r, slo)], t0, t1)
    return (len(ended) / span, sum(1 for r in ended if meets_slo(r, slo)) / span,
            t_in / span, t_out / span, g_in / span, g_out / span)


def summarize_phase(index: int, label: str, load: dict[str, float], records: list[dict[str, Any]],
                    share_summaries: list[dict[str, Any]], slo: SLOConfig, slo_attainment_target: float,
                    planned_dispatch_s: float, warmup_s: float = 0.0, ramp_s: float = 0.0) -> PhaseResult:
    """Every figure of one phase from its request records and its per-share summaries.

    Warm-up: requests started in the phase's first `warmup_s` seconds are left out, and the phase's time starts
    after them; so is each closed-loop user's first request where the load test marked it (`first_of_user`,
    plan.closed_phase), unless no user got past its first. What the warm-up's requests still generated inside
    the measured time counts toward the token rates: the server spent that time on them (left out, a warm-up
    would lower tokens/s by the first wave's tail), and the goodput counts those that met every SLO alike.

    Ramp: where the phase's closed-loop users started one by one over its first `ramp_s` seconds, its rates are
    read between the ramp's end and the moment the first user stopped (`full_load_end`), while all of them were
    in: tokens by what every request generated then, requests by when they ended. A short phase's dispatch holds
    little more than the first wave's queue of prompts; the judged requests that follow it count too."""
    reqs = [r for r in records if r.get("type", "request") == "request"]
    starts = [s["start_unix"] for s in share_summaries if s.get("start_unix") is not None]
    ends = [s["dispatch_end_unix"] for s in share_summaries if s.get("dispatch_end_unix") is not None]
    t_start = min(starts) if starts else min((r["t_start_unix"] for r in reqs), default=0.0)
    t_ramped = t_start + ramp_s
    reqs, early, firsts = _measured(reqs, t_start, warmup_s)
    if warmup_s > 0:
        t_start += warmup_s
        planned_dispatch_s = max(planned_dispatch_s - warmup_s, 0.0)
    ok = [r for r in reqs if r.get("ok")]
    t_end = max([r["t_end_unix"] for r in reqs if r.get("t_end_unix") is not None] + ends + [t_start])
    duration = max(t_end - t_start, 1e-9)
    dispatch_s = max(max(ends) - t_start, 0.0) if ends else planned_dispatch_s
    with_usage = [r for r in ok if r.get("usage_present")]
    in_tok, out_tok = _usage_tokens(with_usage)
    good = [r for r in reqs if meets_slo(r, slo)]
    ramped = t_ramped > t_start  # a ramp that a warm-up by time does not already cover
    window_end = full_load_end(reqs + early + firsts, max(ends) if ends else t_end) if ramped else t_end
    if ramped and window_end - t_ramped > 1e-9:
        rates = _window_rates(reqs + early + firsts, slo, t_ramped, window_end)
    else:  # the judged requests whole; the warm-up's by what they generated in the measured time, not in requests/s
        warm = early + firsts
        w_in, w_out = tokens_between(warm, t_start, t_end)
        wg_in, wg_out = tokens_between([r for r in warm if meets_slo(r, slo)], t_start, t_end)
        g_in, g_out = _usage_tokens(good)
        rates = tuple(x / duration for x in (len(ok), len(good), in_tok + w_in, out_tok + w_out, g_in + wg_in,
                                             g_out + wg_out))
    dropped = sum(int(s.get("dropped_arrivals", 0)) for s in share_summaries)
    cap_reached = any(bool(s.get("request_cap_reached")) for s in share_summaries)
    cancelled = sum(int(s.get("cancelled_at_drain_timeout", 0)) for s in share_summaries)
    offered = len(reqs) + dropped
    attainment = len(good) / offered if offered else 0.0
    errors = Counter(r.get("error_kind") or "unknown" for r in reqs if not r.get("ok"))
    if dropped:
        errors["dropped_arrival"] += dropped
    itls = [g for r in ok for g in (r.get("itl_ms") or ())]
    return PhaseResult(
        index=index, label=label, load=load, dispatch_s=dispatch_s, duration_s=duration,
        requests_sent=len(reqs), requests_ok=len(ok), requests_failed=len(reqs) - len(ok),
        requests_missing_usage=len(ok) - len(with_usage), dropped_arrivals=dropped, request_cap_reached=cap_reached,
        cancelled_at_drain_timeout=cancelled, errors_by_kind=dict(sorted(errors.items())),
        request_throughput_per_s=rates[0],
        input_tokens_total=in_tok, output_tokens_total=out_tok,
        input_tokens_mean=in_tok / len(with_usage) if with_usage else None,
        output_tokens_mean=out_tok / len(with_usage) if with_usage else None,
        input_token_throughput_per_s=rates[2], output_token_throughput_per_s=rates[3],
        ttft=summarize_latencies(r.get("ttft_ms") for r in ok),
        itl=summarize_latencies(itls),
        tpot=summarize_latencies(tpot_ms(r.get("e2e_ms"), r.get("ttft_ms"), r.get("output_tokens")) for r in ok),
        e2e=summarize_latencies(r.get("e2e_ms") for r in ok),
        dispatch_lag=summarize_latencies(r.get("dispatch_lag_ms") for r in reqs),
        goodput_requests_per_s=rates[1], goodput_output_tokens_per_s=rates[5],
        goodput_input_tokens_per_s=rates[4],
        slo_attainment_fraction=attainment,
        meets_slo=bool(offered) and attainment >= slo_attainment_target,
        requests_retried=sum(1 for r in reqs if r.get("retried")), requests_warmup_excluded=len(early),
        requests_first_excluded=len(firsts),
        slo_ratio_at_target=slo_ratio_at_target((slo_ratio(r, slo) for r in reqs), dropped, slo_attainment_target),
    )


def load_value(ph: PhaseResult) -> float:
    """The size of a phase's load: requests/s for open loop, users for closed loop."""
    return float(ph.load.get("requests_per_s", ph.load.get("users", 0.0)))


def highest_load_meeting_slo(phases: Sequence[PhaseResult]) -> PhaseResult | None:
    ok = [p for p in phases if p.meets_slo]
    return max(ok, key=load_value) if ok else None


def sweep_result(mode: str, phases: Sequence[PhaseResult], target: float) -> SweepResult:
    best = highest_load_meeting_slo(phases)
    peak = max(phases, key=lambda p: p.output_token_throughput_per_s) if phases else None
    return SweepResult(mode=mode, slo_attainment_target=target,
                       highest_load_meeting_slo=dict(best.load) if best else None,
                       highest_load_phase_index=best.index if best else None,
                       peak_output_token_throughput_per_s=peak.output_token_throughput_per_s if peak else 0.0,
                       peak_phase_index=peak.index if peak else None)


def cost_point(basis: str, phase_index: int | None, output_tps: float, input_tps: float, usd_per_hour: float,
               utilisation_fraction: float) -> CostPoint:
    return CostPoint(
        basis=basis, phase_index=phase_index, output_tokens_per_s=output_tps, input_tokens_per_s=input_tps,
        usd_per_million_output_tokens=usd_per_million_tokens(usd_per_hour, output_tps, utilisation_fraction),
        usd_per_million_input_tokens=usd_per_million_tokens(usd_per_hour, input_tps, utilisation_fraction),
        usd_per_million_total_tokens=usd_per_million_tokens(usd_per_hour, output_tps + input_tps, utilisation_fraction),
    )


def cost_result(quote: PriceQuote, phases: Sequence[PhaseResult], sweep: bool,
                utilisation_fraction: float) -> CostResult:
    """Cost at the measured sustained throughput and at the throughput the SLOs allow.

    One phase: measured = its token throughput; SLO-limited = the token throughput of the requests that met
    every SLO (goodput). A sweep: measured = the step with the highest output token throughput; SLO-limited =
    the step at the highest load that met the SLOs (None when no step did).
    """
    u = utilisation_fraction
    assumption = (f"The instance is paid for every hour and serves at the stated throughput {u:.0%} of the time "
                  "(utilisation_fraction). Each per-token figure charges the whole hourly price to that token "
                  "type; 'total' spreads it over input and output tokens together.")
    if sweep:
        peak = max(phases, key=lambda p: p.output_token_throughput_per_s)
        measured = cost_point(f"sweep step with the highest output token throughput ({peak.label})", peak.index,
                              peak.output_token_throughput_per_s, peak.input_token_throughput_per_s,
                              quote.usd_per_hour, u)
        best = highest_load_meeting_slo(phases)
        slo_pt = None if best is None else cost_point(
            f"sweep step at the highest load meeting the SLOs ({best.label})", best.index,
            best.output_token_throughput_per_s, best.input_token_throughput_per_s, quote.usd_per_hour, u)
    else:
        ph = phases[0]
        measured = cost_point(f"measured throughput at {ph.label}", ph.index, ph.output_token_throughput_per_s,
                              ph.input_token_throughput_per_s, quote.usd_per_hour, u)
        slo_pt = cost_point(f"throughput of the requests meeting every SLO at {ph.label} (goodput)", ph.index,
                            ph.goodput_output_tokens_per_s, ph.goodput_input_tokens_per_s, quote.usd_per_hour, u)
    return CostResult(instance=quote.instance, usd_per_hour=quote.usd_per_hour, price_source=quote.source,
                      utilisation_fraction=u, assumption=assumption, at_measured_throughput=measured,
                      at_slo_limited_throughput=slo_pt)
