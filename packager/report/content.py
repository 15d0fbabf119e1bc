"""What the report says, renderer-neutral: the rows of its tables and its sentences, read from a Report.

The section builders (packager.report.sections) arrange these into sections; the plots (packager.report.plots)
share the labels. Nothing here knows Markdown or HTML: every value is plain text, escaped by the renderer.
"""
from __future__ import annotations

from typing import Callable

from packager.core.formatting import DASH, fmt_usd, load_words, mb, mparams, num, pct, secs, usd_hour
from packager.loadtest.knee import replicas_needed
from packager.report.analysis import effective_recovery, load_failure
from packager.report.model import LoadSummary, Report, VariantResult


# ----------------------------------------------------------------------------------------------- the summary table
class Column:
    def __init__(self, header: str, get: Callable[[VariantResult], str], load: bool = False, numeric: bool = True):
        self.header, self.get, self.load, self.numeric = header, get, load, numeric


def load_or_empty(v: VariantResult) -> LoadSummary:
    """The variant's load summary, or an empty one (every figure None or 0) when it was not load-tested."""
    return v.load if v.load is not None else LoadSummary()


def verdict(v: VariantResult, report: Report) -> str:
    if report.recommendation.variant == v.name:
        return "recommended"
    parts = []
    if v.meets_quality_floor is False:
        parts.append("below quality floor")
    elif v.meets_quality_floor is None:
        parts.append("quality unknown")
    if v.meets_slo is False:
        parts.append("misses SLO")
    elif v.meets_slo is None:
        parts.append("load test failed" if v.load is not None else "not load-tested")
    if not parts and v.name in report.recommendation.rejected:
        parts.append("passes, not cheapest")
    return ", ".join(parts) if parts else DASH


def summary_columns(report: Report) -> list[Column]:
    _l = load_or_empty

    def score(v: VariantResult) -> str:
        return num(v.score, ".3f")

    def recovery(v: VariantResult) -> str:
        shown = pct(effective_recovery(v))
        if v.recovery_ci is not None and not v.is_baseline:
            shown += f" ({v.recovery_ci[0] * 100:.1f}–{v.recovery_ci[1] * 100:.1f})"
        return shown

    nf_kl = (report.noise_floor or {}).get("mean_kl")

    def kl(v: VariantResult) -> str:
        shown = num(v.fidelity_mean_kl, ".4f")
        if v.fidelity_mean_kl is not None and nf_kl:
            shown += f" ({v.fidelity_mean_kl / nf_kl:.0f}×)"
        return shown

    return [
        Column("size (MB)", lambda v: mb(v.size_bytes)),
        Column("params", lambda v: mparams(v.parameters)),
        Column("task score", score),
        Column("recovery", recovery),
        Column("perplexity", lambda v: num(v.perplexity, ".2f")),
        Column("agreement", lambda v: pct(v.fidelity_agreement)),
        Column("prefix match (tokens)", lambda v: num(v.fidelity_prefix_match_mean, ".1f")),
        Column("mean KL", kl),
        Column("TTFT p50 (ms)", lambda v: num(_l(v).ttft_ms_p50, ".0f"), load=True),
        Column("TTFT p95 (ms)", lambda v: num(_l(v).ttft_ms_p95, ".0f"), load=True),
        Column("TPOT p50 (ms)", lambda v: num(_l(v).tpot_ms_p50, ".1f"), load=True),
        Column("TPOT p95 (ms)", lambda v: num(_l(v).tpot_ms_p95, ".1f"), load=True),
        Column("output tok/s", lambda v: num(_l(v).output_tokens_per_s, ".1f"), load=True),
        Column("goodput (req/s)", lambda v: num(_l(v).goodput_requests_per_s, ".2f"), load=True),
        Column("within SLO", lambda v: pct(_l(v).goodput_fraction, 0), load=True),
        Column("USD / 1M output tokens", lambda v: fmt_usd(_l(v).usd_per_million_output_tokens), load=True),
        Column("verdict", lambda v: verdict(v, report), numeric=False),
    ]


def load_error_text(v: VariantResult) -> str | None:
    """What stands in for a variant's load figures when it has none, or None when it has them."""
    if v.load is None:
        return "not load-tested" + (f": {'; '.join(v.errors)}" if v.errors else "")
    err = load_failure(v)
    return f"load test failed: {err}" if err else None


DEFINITIONS = [
    "TTFT: request sent to first content token. TPOT: (end-to-end latency − TTFT) / (output tokens − 1).",
    "Goodput: requests per second that met every SLO (TTFT and TPOT limits); 'within SLO' is their share.",
    "USD per 1M output tokens = price per hour / (sustained output tokens per second × 3600) × 10⁶.",
    "Recovery: task score / the baseline's task score, with its 95% paired bootstrap interval (items resampled "
    "2,000 times). Agreement: share of greedy outputs identical to the baseline's. Mean KL: mean KL divergence of "
    "next-token distributions from the baseline's along its own outputs (0 = identical), with its multiple of the "
    "noise floor: the KL of the baseline itself served in the other dtype.",
]


# ------------------------------------------------------------------------------------------------ recommendation
def headline(report: Report) -> str:
    rec = report.recommendation
    return f"Deploy {rec.variant}." if rec.variant else "No variant is recommended."


def knee_note(s: LoadSummary) -> str:
    """' (capacity search: 12 missed, 4 probes)' after the capacity, when a search found it."""
    if not s.knee_probes and s.knee_resolved is None:
        return ""
    missed = DASH if s.knee_first_failing is None else f"{s.knee_first_failing:g}"
    return (f" (capacity search: {missed} missed, {s.knee_probes} probe{'s' if s.knee_probes != 1 else ''}"
            f"{'' if s.knee_resolved else ', not narrowed to its precision'})")


def replicas_line(report: Report) -> str | None:
    """Replicas each variant needs for the expected load at its capacity at the SLO, and their hourly price."""
    rec = report.recommendation
    if rec.expected_load is None:
        return None
    parts = []
    for v in report.variants:
        s = v.load
        if s is None or not s.max_load_meeting_slo:
            parts.append(f"{v.name} {DASH}")
            continue
        n = replicas_needed(rec.expected_load, s.max_load_meeting_slo)
        price = "" if s.usd_per_hour is None else f", USD {usd_hour(n * s.usd_per_hour)}/h"
        parts.append(f"{v.name} {n}{price}")
    return (f"Replicas for {load_words(rec.expected_load, rec.expected_load_unit)}, each at the capacity of its "
            f"variant at the SLO: {'; '.join(parts)}.")


def expected_load_line(report: Report) -> str | None:
    """What the variants cost at the traffic the user expects, when the recommendation was ranked there."""
    rec = report.recommendation
    if rec.expected_load is None:
        return None
    costs = ", ".join(f"{name} {fmt_usd(c) if c is not None else 'not measured there'}"
                      for name, c in rec.usd_per_million_output_tokens_at_expected_load.items())
    return (f"Ranked at the expected load of {load_words(rec.expected_load, rec.expected_load_unit)} (the sweep step "
            f"it falls on). USD per 1M output tokens there: {costs}. The Variants table shows each variant at "
            f"the highest load it sustained.")


def criteria_line(report: Report) -> str:
    """The quality floor, the SLO and the price the variants were judged against."""
    slo, price = report.slo, report.pricing
    gate, nf = report.gate or {}, report.noise_floor or {}
    floor = f"Quality floor: recovery ≥ {report.quality_floor * 100:g}%"
    if gate.get("use_lower_bound"):
        bound = gate.get("lower_bound_floor")
        bound = report.quality_floor if bound is None else bound  # reports written before it was a setting
        floor += f", its lower 95% bound ≥ {bound * 100:g}%"
    if gate.get("max_kl") is not None:
        floor += (f", mean KL ≤ {num(gate['max_kl'], '.2g')} ({num(gate.get('max_kl_vs_noise'), 'g')}× the noise "
                  f"floor {num(nf.get('mean_kl'), '.2g')}: the baseline in {nf.get('reference_dtype', DASH)} "
                  f"against {nf.get('served_dtype', DASH)}"
                  + (f", over {nf['items']} answers" if nf.get("items") else "") + ")")
    sources = sorted({v.fidelity_source for v in report.variants if v.fidelity_source})
    if sources:
        floor += " · fidelity along the baseline's greedy answers to " + ", ".join(
            "its suite items" if s == "suite" else f"the {s.removeprefix('corpus:')} fidelity corpus" for s in sources)
    return (f"{floor} · SLO: TTFT p95 ≤ "
            f"{num(slo.get('ttft_ms'), 'g')} ms, TPOT p95 ≤ {num(slo.get('tpot_ms'), 'g')} ms · "
            f"price: {price.get('instance', DASH)} at USD {usd_hour(price.get('usd_per_hour'))}/hour"
            + (f" ({price['source']})" if price.get("source") else ""))


# ---------------------------------------------------------------------------------------- scores and compression
def categories(report: Report) -> list[str]:
    return sorted({c for v in report.variants for c in v.score_by_category})


def behaviours(report: Report) -> list[str]:
    return sorted({c for v in report.variants for c in v.behaviour})


STAGE_HEADERS = ["variant", "#", "stage", "method", "wall time", "size (MB)", "params", "peak RSS (MB)"]


def stage_rows(report: Report) -> list[list[str]]:
    rows = []
    for v in report.variants:
        if not v.stages:
            rows.append([v.name, DASH, "source (no compression)" if v.is_baseline else "no stage record", DASH,
                         secs(v.compression_wall_time_s), mb(v.size_bytes), mparams(v.parameters), DASH])
            continue
        for i, st in enumerate(v.stages, 1):
            size = st.get("size_bytes")
            if size is None and st.get("size_mb") is not None:
                size = float(st["size_mb"]) * 1e6
            args = st.get("arguments")
            method = str(st.get("method") or st.get("kind") or DASH)
            if isinstance(args, dict) and args:
                method += " (" + ", ".join(f"{k}={args[k]}" for k in list(args)[:6]) + ")"
            rows.append([v.name, str(st.get("index", i)), str(st.get("label") or st.get("stage") or DASH), method,
                         secs(st.get("wall_time_s")), mb(size), mparams(st.get("parameter_count")),
                         num(st.get("peak_rss_mb"), ",.0f")])
    return rows


# ---------------------------------------------------------------------------------------------------- load tests
def sweep_unit_short(unit: str | None) -> str:
    return {"concurrency": "users", "requests_per_s": "req/s"}.get(unit or "", unit or "")


LOAD_ROWS: list[tuple[str, Callable[[LoadSummary], str]]] = [
    ("requests completed", lambda s: str(s.requests)),
    ("errors", lambda s: str(s.errors)),
    ("duration (s)", lambda s: num(s.duration_s, ".1f")),
    ("requests/s", lambda s: num(s.requests_per_s, ".2f")),
    ("input tok/s", lambda s: num(s.input_tokens_per_s, ".1f")),
    ("output tok/s", lambda s: num(s.output_tokens_per_s, ".1f")),
    ("TTFT p50 / p90 / p95 / p99 (ms)",
     lambda s: " / ".join(num(x, ".0f") for x in (s.ttft_ms_p50, s.ttft_ms_p90, s.ttft_ms_p95, s.ttft_ms_p99))),
    ("TPOT p50 / p90 / p95 / p99 (ms)",
     lambda s: " / ".join(num(x, ".1f") for x in (s.tpot_ms_p50, s.tpot_ms_p90, s.tpot_ms_p95, s.tpot_ms_p99))),
    ("ITL p50 / p95 (ms)", lambda s: " / ".join(num(x, ".1f") for x in (s.itl_ms_p50, s.itl_ms_p95))),
    ("E2E p50 / p95 / p99 (ms)",
     lambda s: " / ".join(num(x, ".0f") for x in (s.e2e_ms_p50, s.e2e_ms_p95, s.e2e_ms_p99))),
    ("goodput (req/s)", lambda s: num(s.goodput_requests_per_s, ".2f")),
    ("requests within SLO", lambda s: pct(s.goodput_fraction)),
    ("max load meeting SLO", lambda s: DASH if s.max_load_meeting_slo is None
     else f"{s.max_load_meeting_slo:g} {sweep_unit_short(s.sweep_unit)}" + knee_note(s)),
    ("USD per hour", lambda s: usd_hour(s.usd_per_hour)),
    ("utilization assumed", lambda s: pct(s.utilization_assumed, 0)),
    ("USD / 1M input tokens", lambda s: fmt_usd(s.usd_per_million_input_tokens)),
    ("USD / 1M output tokens", lambda s: fmt_usd(s.usd_per_million_output_tokens)),
    ("USD / 1M output tokens at SLO", lambda s: fmt_usd(s.usd_per_million_output_tokens_at_slo)),
    ("server: KV cache max / waiting max / preemptions",
     lambda s: " / ".join((pct(s.server_kv_cache_max, 0), num(s.server_requests_waiting_max, "g"),
                           num(s.server_preemptions, "g")))),
    ("requests sent as", lambda s: {"completion": "raw prompts (no chat template)", "chat": "chat messages"}.get(
        s.prompt_format or "", DASH)),
    ("latency samples (TTFT / TPOT)", lambda s: f"{len(s.ttft_ms_samples)} / {len(s.tpot_ms_samples)}"),
    ("load generator was the bottleneck", lambda s: "YES: figures understate the server" if s.generator_bottleneck
     else "no"),
]


def load_notes(report: Report) -> list[tuple[str, str, str]]:
    """(variant, kind, text): which operating point the figures describe, load-test warnings, failures."""
    out: list[tuple[str, str, str]] = []
    for v in report.variants:
        err = load_error_text(v)
        if err:
            out.append((v.name, "failed", err))
            continue
        raw = v.load.raw if v.load is not None and isinstance(v.load.raw, dict) else {}
        if raw.get("summary_basis"):
            out.append((v.name, "figures at", str(raw["summary_basis"])))
        for w in raw.get("warnings") or []:
            out.append((v.name, "warning", str(w)))
    return out


def engine_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Engines side by side: offered load, then per engine its best output tok/s (and which variant), leader."""
    from packager.engines.select import engine_label

    ec = report.engines
    if ec is None:
        return [], []
    engines = list(ec.best_output_tokens_per_s)
    headers = ["offered", *[f"{engine_label(e)}: best output tok/s" for e in engines], "leads"]
    rows = []
    for i, x in enumerate(ec.offered):
        cells = [f"{x:g}"]
        for e in engines:
            val, name = ec.best_output_tokens_per_s[e][i], ec.best_variant[e][i]
            cells.append("-" if val is None else f"{val:,.1f} ({name})")
        lead = ec.leader[i]
        cells.append(engine_label(lead) if lead else "-")
        rows.append(cells)
    return headers, rows


SWEEP_HEADERS = ["offered", "requests/s", "output tok/s", "TTFT p95 (ms)", "TPOT p95 (ms)", "goodput (req/s)"]


def sweep_label(unit: str | None) -> str:
    return {"concurrency": "offered load (concurrent users)",
            "requests_per_s": "offered load (arrival rate, requests/s)"}.get(
        unit or "", f"offered load ({unit or 'unit unknown'})")


def sweep_rows(load: LoadSummary) -> list[list[str]]:
    return [[f"{p.offered:g}", num(p.requests_per_s, ".2f"), num(p.output_tokens_per_s, ".1f"),
             num(p.ttft_ms_p95, ".0f"), num(p.tpot_ms_p95, ".1f"), num(p.goodput_requests_per_s, ".2f")]
            for p in load.sweep]


# ------------------------------------------------------------------------------------------------------- timings
def timing_total(report: Report) -> float:
    """The run's wall time: the recorded "total" when there is one (steps may overlap or leave gaps), else the sum
    of the steps."""
    t = report.timings_s
    return t["total"] if "total" in t else sum(t.values())


def timing_rows(report: Report) -> tuple[list[tuple[str, float]], str | None]:
    """(step, seconds) rows ending with the total, and a sentence on the budget."""
    budget = report.time_budget_s
    rows = [(step, s) for step, s in report.timings_s.items() if step != "total"]
    if not report.timings_s:
        return [], None
    total = timing_total(report)
    rows.append(("total", total))
    verdict_line = None
    if budget:
        if total <= budget:
            verdict_line = f"Within the time budget: {secs(total)} of {secs(budget)} ({pct(total / budget)})."
        else:
            verdict_line = f"OVER the time budget by {secs(total - budget)}: {secs(total)} against {secs(budget)}."
    return rows, verdict_line


def timing_cells(report: Report, step: str, seconds: float) -> list[str]:
    budget = report.time_budget_s
    return [step, secs(seconds), pct(seconds / budget) if budget else DASH]


# ------------------------------------------------------------------------------------------------- configuration
def config_yaml(report: Report) -> str:
    import yaml

    return yaml.safe_dump(report.config, sort_keys=False, default_flow_style=False, allow_unicode=True) \
        if report.config else "# (no configuration recorded)\n"


ENGINE_SEARCH_HEADERS = ["variant", "arguments", "output tok/s", "TTFT p95 (ms)", "SLO", "chosen"]


def _warm(es: dict) -> str:
    return f" after {es['warmup_s']:g} s of warm-up" if es.get("warmup_s") else ""


def engine_search_rows(report: Report) -> tuple[list[list[str]], list[tuple[str, str]]]:
    """(one row per trial of every variant's engine-argument search, (variant, what was chosen and why) each)."""
    rows: list[list[str]] = []
    reasons: list[tuple[str, str]] = []
    for v in report.variants:
        es = v.engine_search
        if not es:
            continue
        chosen = (es.get("chosen") or {}).get("label")
        for t in es.get("trials", []):
            label = t["candidate"]["label"]
            if t.get("error"):
                rows.append([v.name, label, DASH, DASH, t["error"][:80], ""])
                continue
            slo = DASH if t.get("meets_slo") is None else ("met" if t["meets_slo"] else "missed")
            rows.append([v.name, label, num(t.get("output_tokens_per_s"), ".1f"), num(t.get("ttft_ms_p95"), ".0f"),
                         slo, "yes" if label == chosen else ""])
        if es.get("reused_from"):
            reasons.append((v.name, es.get("reason", "")))
            continue
        left = f"; not tried within the {es['budget_s']:g} s budget: {', '.join(es['not_tried'])}" \
            if es.get("not_tried") else ""
        reasons.append((v.name, f"at {load_words(es['load'], es['load_unit'])}, {len(es.get('trials', []))} "
                                f"trial(s) of {es['probe_duration_s']:g} s{_warm(es)} in {secs(es.get('wall_s'))}: "
                                f"{es.get('reason', '')}{left}"))
    return rows, reasons

