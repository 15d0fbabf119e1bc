"""Two releases side by side for `packager compare` (report.json, or a release's output directory), one group
of rows per variant both have: quality (score, recovery, fidelity, perplexity), size, and the headline load test
(capacity at SLO, throughput, goodput, SLO attainment, latency percentiles, errors, cost).

Noise: quality by a paired bootstrap over the suite items both releases answered, else by whether the stored
95% intervals overlap; latency percentiles by the bootstrap of packager.report.compare_stats, from the variant's
records.jsonl or the report's stored samples. packager.report.compare's module doc gives the details.
packager.report.compare calls compare_releases; this module does not import it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from packager.report.compare_common import (
    LATENCIES,
    LATENCY_NOTE,
    RunInput,
    cap_env,
    env_differences,
    latency_rows,
    phase_samples,
    read_records,
)
from packager.report.compare_model import Comparison, EnvDiff, Group, RunInfo, make_row
from packager.report.compare_stats import MIN_RESAMPLES, QUANTILES, Bootstrap, Sample


def _f(x: Any) -> float | None:
    return None if x is None else float(x)


def _variant_samples(inp: RunInput, v: Any) -> tuple[dict[str, Sample], str]:
    """Per-request latencies of a release variant's headline load phase: its records.jsonl when the release's
    variants/NAME/loadtest directory is still there, else the TTFT/TPOT samples the report stores."""
    load = v.load
    if load is None:
        return {}, "no load test"
    raw = load.raw or {}
    if "phases" in raw and "summary" in raw:
        from packager.loadtest.result import LoadTestResult

        try:
            res = LoadTestResult.model_validate(raw)
        except ValidationError:
            res = None
        if res is not None:
            path = inp.root / "variants" / v.name / "loadtest" / res.files.get("records", "records.jsonl")
            rec = read_records(path)
            if rec.present:
                got = phase_samples(rec, res.summary.index, float((res.config or {}).get("warmup_s") or 0.0))
                if got:
                    return got, ""
    src = "the report's per-request samples"
    if len(load.ttft_ms_samples) >= 2000 or len(load.tpot_ms_samples) >= 2000:
        src += " (thinned: a wider interval)"
    out = {}
    if load.ttft_ms_samples:
        out["ttft"] = Sample.of(load.ttft_ms_samples, src)
    if load.tpot_ms_samples:
        out["tpot"] = Sample.of(load.tpot_ms_samples, src)
    return out, "no records.jsonl and no stored samples of this figure"


def _load_stored(load: Any) -> dict[str, list[float | None]]:
    if load is None:
        return {key: [None] * len(QUANTILES) for _, key in LATENCIES}
    return {key: [getattr(load, f"{key}_ms_p{q}", None) for q in QUANTILES] for _, key in LATENCIES}


def _interval_overlap(ci_a: tuple[float, float] | None, ci_b: tuple[float, float] | None,
                      ) -> tuple[bool | None, str]:
    if ci_a is None and ci_b is None:
        return None, "neither run stored an interval"
    if ci_a is None or ci_b is None:
        return None, f"{'A' if ci_a is None else 'B'} stored no interval"
    (la, ha), (lb, hb) = ci_a, ci_b
    text = f"A [{la:.4g}, {ha:.4g}], B [{lb:.4g}, {hb:.4g}]"
    if ha < lb or hb < la:
        return True, f"the stored 95% intervals do not overlap: {text}"
    return False, f"the stored 95% intervals overlap (a conservative check: no difference shown): {text}"


def _paired_items(va: Any, vb: Any, boot: Bootstrap) -> tuple[bool | None, str, tuple[float, float] | None] | None:
    """A paired bootstrap of B - A over the suite items both variants answered, when both items.jsonl files are
    still on disk and the suite is the same; None otherwise."""
    ea, eb = va.eval or {}, vb.eval or {}
    pa, pb = ea.get("items_path"), eb.get("items_path")
    sha_a, sha_b = ea.get("suite_sha256"), eb.get("suite_sha256")
    if not pa or not pb or not sha_a or sha_a != sha_b or not Path(pa).is_file() or not Path(pb).is_file():
        return None
    from packager.evaluate.fidelity import load_items
    from packager.evaluate.stats import bootstrap_stats

    try:
        ia, ib = load_items(Path(pa)), load_items(Path(pb))
    except (OSError, ValueError):
        return None
    ids = sorted(ia.keys() & ib.keys())
    if len(ids) < 10:
        return None
    st = bootstrap_stats([ib[i].score for i in ids], ["all"] * len(ids), [ia[i].score for i in ids],
                         resamples=max(boot.resamples, MIN_RESAMPLES), seed=boot.seed)
    d = st.score_difference
    assert d is not None
    beyond = d.low > 0 or d.high < 0
    words = "excludes 0: beyond noise" if beyond else "includes 0: within noise"
    return beyond, (f"paired bootstrap over {len(ids)} shared suite items: 95% interval of B − A "
                    f"[{d.low:+.4g}, {d.high:+.4g}] {words}; sign-flip p = {st.p_value:.3g}"), (d.low, d.high)


def _variant_group(ia: RunInput, ib: RunInput, va: Any, vb: Any, boot: Bootstrap) -> Group:
    rows = []
    paired = _paired_items(va, vb, boot)
    if paired is not None:
        beyond, reason, interval = paired
    else:
        (beyond, reason), interval = _interval_overlap(va.score_ci, vb.score_ci), None
    rows.append(make_row("score", va.score, vb.score, fmt="score", better="higher", beyond_noise=beyond,
                         reason=reason, interval=interval))
    if va.is_baseline and vb.is_baseline:
        rows.append(make_row("recovery", va.recovery, vb.recovery, fmt="pct", better="higher",
                             reason="the baseline's recovery is 1 by definition"))
    else:
        beyond, reason = _interval_overlap(va.recovery_ci, vb.recovery_ci)
        rows.append(make_row("recovery", va.recovery, vb.recovery, fmt="pct", better="higher", beyond_noise=beyond,
                             reason=reason + "; each against its own release's baseline"))
    single = "one figure each: no stored interval"
    for metric, attr, fmt, better in (("fidelity mean KL", "fidelity_mean_kl", "kl", "lower"),
                                      ("fidelity top-1 agreement", "fidelity_top1_agreement", "pct", "higher"),
                                      ("perplexity", "perplexity", "score", "lower")):
        x, y = getattr(va, attr), getattr(vb, attr)
        if x is not None or y is not None:
            rows.append(make_row(metric, x, y, fmt=fmt, better=better, reason=single))  # type: ignore[arg-type]
    if va.size_bytes is not None or vb.size_bytes is not None:
        rows.append(make_row("size", _f(va.size_bytes), _f(vb.size_bytes), fmt="mb", unit="MB", better="lower",
                             reason="an exact figure, not a measurement with noise"))
    la, lb = va.load, vb.load
    if la is not None or lb is not None:
        ua, ub = (la.sweep_unit if la else None), (lb.sweep_unit if lb else None)
        cap = make_row("capacity at SLO", la.max_load_meeting_slo if la else None,
                       lb.max_load_meeting_slo if lb else None, fmt="load",
                       unit=ua or ub or "", better="higher")
        if ua and ub and ua != ub:
            cap.delta = cap.relative_delta = None
            cap.reason = f"different load units (A: {ua}, B: {ub}): not comparable"
        rows.append(cap)

        def g(load: Any, attr: str) -> float | None:
            return None if load is None else _f(getattr(load, attr))

        for metric, attr, fmt, unit, better in (
                ("throughput", "requests_per_s", "rate", "req/s", "higher"),
                ("output throughput", "output_tokens_per_s", "rate", "tok/s", "higher"),
                ("goodput", "goodput_requests_per_s", "rate", "req/s", "higher"),
                ("SLO attainment", "goodput_fraction", "pct", "", "higher")):
            rows.append(make_row(metric, g(la, attr), g(lb, attr), fmt=fmt, unit=unit,
                                 better=better))  # type: ignore[arg-type]
        sa, why_a = _variant_samples(ia, va)
        sb, why_b = _variant_samples(ib, vb)
        rows += latency_rows(_load_stored(la), _load_stored(lb), sa, sb, why_a, why_b, boot, None, {})
        rows.append(make_row("errors", g(la, "errors"), g(lb, "errors"), fmt="count", better="lower"))
        for metric, attr in (("USD per 1M output tokens", "usd_per_million_output_tokens"),
                             ("USD per 1M output tokens at SLO", "usd_per_million_output_tokens_at_slo")):
            x, y = g(la, attr), g(lb, attr)
            if x is not None and y is not None:
                rows.append(make_row(metric, x, y, fmt="usd", better="lower"))
    notes = [f"{s}: {'; '.join(v.errors)}" for s, v in (("A", va), ("B", vb)) if v.errors]
    return Group(title=f"variant {va.name}", note=" ".join(notes), rows=rows)


def compare_releases(ia: RunInput, ib: RunInput, boot: Bootstrap) -> Comparison:
    """One group per variant both releases have (in A's order); the others listed, the environment compared."""
    ra, rb = ia.data, ib.data
    names_b = {v.name for v in rb.variants}
    names_a = {v.name for v in ra.variants}
    groups = [_variant_group(ia, ib, v, rb.variant(v.name), boot) for v in ra.variants if v.name in names_b]

    def info(inp: RunInput) -> RunInfo:
        r = inp.data
        return RunInfo(kind="release", path=str(inp.json_path), model=r.model, created=r.created_at,
                       description=f"{len(r.variants)} variant(s): {', '.join(v.name for v in r.variants)}")

    env = env_differences(
        {"model": ra.model, "baseline": ra.baseline, "quality_floor": ra.quality_floor, "slo": ra.slo,
         "pricing": ra.pricing, "gate": ra.gate, "versions": ra.versions, "platform": ra.platform,
         "config": ra.config},
        {"model": rb.model, "baseline": rb.baseline, "quality_floor": rb.quality_floor, "slo": rb.slo,
         "pricing": rb.pricing, "gate": rb.gate, "versions": rb.versions, "platform": rb.platform,
         "config": rb.config}, skip=("config.output_dir",))
    for v in ra.variants:
        if v.name in names_b:
            w = rb.variant(v.name)
            for attr in ("engine", "dtype", "recipe", "model_digest"):
                x, y = getattr(v, attr), getattr(w, attr)
                if x != y:
                    env.append(EnvDiff(key=f"variant {v.name}: {attr}", a=str(x), b=str(y)))
    notes = [
        LATENCY_NOTE,
        "Quality: a paired bootstrap over the suite items both releases answered when their items.jsonl files "
        "are on disk, else whether the stored 95% intervals overlap (overlap: no difference shown).",
        "Throughput, goodput, capacity, errors and cost: one run each, no noise estimate.",
    ]
    if ra.recommendation.variant != rb.recommendation.variant:
        notes.append(f"The recommendation changed: A {ra.recommendation.variant or 'none'} "
                     f"({ra.recommendation.reason}); B {rb.recommendation.variant or 'none'} "
                     f"({rb.recommendation.reason}).")
    return Comparison(kind="release", a=info(ia), b=info(ib), groups=groups,
                      only_in_a=[f"variant {v.name}" for v in ra.variants if v.name not in names_b],
                      only_in_b=[f"variant {v.name}" for v in rb.variants if v.name not in names_a],
                      recommended_a=ra.recommendation.variant, recommended_b=rb.recommendation.variant,
                      environment=cap_env(env), notes=notes)
