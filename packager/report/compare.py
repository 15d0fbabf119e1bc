"""Two saved runs side by side: two load tests (loadtest.json) or two releases (report.json), e.g. before and
after an engine upgrade.

    comparison = compare_runs(Path("runs/before"), Path("runs/after"))
    render_markdown(comparison); render_html(comparison); comparison.to_json()  # packager.report.compare_render

Each input is a loadtest.json or the directory holding it, or a release's report.json or the release's output
directory; both must be of the same kind. Every figure is a row: A, B, the difference B - A, the relative
difference (B - A) / |A|, and whether the difference is beyond noise, with the reason.

Noise, and only where it was computed:
  * Latency percentiles (TTFT, TPOT, ITL, E2E; p50/p95/p99): a percentile bootstrap of the difference B - A of
    the percentile. The successful requests of each run are resampled with replacement, independently for A and
    B (N_RESAMPLES draws, seeded), and the percentile recomputed; the 2.5th and 97.5th percentiles of the
    resampled differences are the 95% interval. Beyond noise when it excludes 0. The unit resampled is the
    request: ITL gaps are resampled as whole requests (a cluster bootstrap), as gaps within one request are not
    independent. Values come from records.jsonl next to loadtest.json (a release: the variant's
    variants/NAME/loadtest/records.jsonl, else the per-request TTFT/TPOT samples the report stores, thinned to
    at most 2000 order statistics, which widens the interval). The records must reproduce the stored
    percentile, or no interval is given. A percentile needs at least 5 expected values beyond it (p95: 100
    requests, p99: 500), else no interval is given. The work is bounded: fewer resamples for very large runs.
  * Throughput, goodput, failures, SLO attainment and cost: one run each gives no noise estimate; these say
    None ("one run each: no noise estimate"). Repeat the runs to judge them.
  * Release quality: a paired bootstrap over the suite items both releases answered (their items.jsonl, when
    both are still on disk and the suite is the same), else whether the 95% intervals the releases stored
    (score_ci, recovery_ci) overlap: beyond noise when they do not. Overlapping intervals are a conservative
    check: the row then says False (no difference shown), not that the figures are equal.

Each interval is 95% on its own: among many rows, about one in twenty excludes 0 by chance alone.

This module reads the inputs (detect_run), compares two load tests and hands two releases to
packager.report.compare_release. The result's data is packager.report.compare_model; what both kinds share
(records, latency rows, environment differences) is packager.report.compare_common; the bootstrap is
packager.report.compare_stats; Markdown, HTML and the files are packager.report.compare_render.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from pydantic import ValidationError

from packager.errors import ConfigError
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
from packager.report.compare_model import ONE_RUN, Comparison, EnvDiff, Group, Kind, Row, RunInfo, make_row
from packager.report.compare_release import compare_releases
from packager.report.compare_stats import N_RESAMPLES, QUANTILES, SEED, Bootstrap, Sample

# ------------------------------------------------------------------------------------------------ the inputs
EXPECTED = ("a load test (loadtest.json, or the directory `packager loadtest` wrote) or a release "
            "(report.json, or the output directory of `packager release`)")


def _describe_dir(p: Path) -> str:
    names = sorted(x.name + ("/" if x.is_dir() else "") for x in p.iterdir())
    if not names:
        return "an empty directory"
    more = f", ... ({len(names)} entries)" if len(names) > 8 else ""
    return "a directory holding " + ", ".join(names[:8]) + more


def _kind_of(data: Any) -> Kind | None:
    if not isinstance(data, dict):
        return None
    if {"phases", "summary", "target_url"} <= data.keys():
        return "loadtest"
    if {"variants", "recommendation", "baseline"} <= data.keys():
        return "release"
    return None


def _hint(data: Any) -> str:
    if not isinstance(data, dict):
        return f"JSON of type {type(data).__name__}"
    keys = sorted(data)
    what = "a JSON object with keys " + ", ".join(keys[:10]) + (", ..." if len(keys) > 10 else "")
    if {"phases", "target_url"} <= data.keys():
        what += " (a load-test plan without its result: analyse it with `packager loadtest-analyse DIR`)"
    elif {"name", "is_baseline"} <= data.keys():
        what += " (one variant of a release: give the release's output directory, which holds report.json)"
    return what


def detect_run(path: Path | str) -> RunInput:
    """What a path holds: a load test or a release. Raises ConfigError naming what was found and what is expected."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p} does not exist; expected {EXPECTED}.")
    if p.is_dir():
        lt, rep = p / "loadtest.json", p / "report.json"
        if lt.is_file() and rep.is_file():
            raise ConfigError(f"{p} holds both loadtest.json and report.json; give the file to compare.")
        if lt.is_file() or rep.is_file():
            p = lt if lt.is_file() else rep
        elif (p / "variants").is_dir():
            raise ConfigError(f"{p} looks like a release directory without report.json (did the release finish?); "
                              f"expected {EXPECTED}.")
        else:
            raise ConfigError(f"{p} is {_describe_dir(p)}; expected {EXPECTED}.")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"{p} is not JSON; expected {EXPECTED}.") from None
    kind = _kind_of(data)
    if kind is None:
        raise ConfigError(f"{p} is {_hint(data)}; expected {EXPECTED}.")
    return RunInput(kind, p, _validate(kind, p, data))


def _validate(kind: Kind, p: Path, data: dict) -> Any:
    if kind == "loadtest":
        from packager.loadtest.result import RESULT_SCHEMA_VERSION as version
        from packager.loadtest.result import LoadTestResult as model
    else:
        from packager.report.model import REPORT_SCHEMA_VERSION as version
        from packager.report.model import Report as model  # type: ignore[assignment]
    what = "load-test result" if kind == "loadtest" else "release report"
    if int(data.get("schema_version", 1)) > version:
        raise ConfigError(f"{p} has {what} schema version {data['schema_version']}, newer than this packager "
                          f"understands ({version}); upgrade packager to compare it.")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()[:5])
        raise ConfigError(f"{p} looks like a {what} but does not validate ({e.error_count()} problem(s): "
                          f"{first}).") from None


def compare_runs(a: Path | str, b: Path | str, *, resamples: int = N_RESAMPLES, seed: int = SEED) -> Comparison:
    """Compare two load tests or two releases (see the module's docstring). Raises ConfigError for an input that
    is neither, or for a load test against a release."""
    ia, ib = detect_run(a), detect_run(b)
    if ia.kind != ib.kind:
        raise ConfigError(f"Cannot compare a {_KIND_WORDS[ia.kind]} ({ia.json_path}) with a "
                          f"{_KIND_WORDS[ib.kind]} ({ib.json_path}); give two load tests or two releases.")
    boot = Bootstrap(resamples=resamples, seed=seed)
    if ia.kind == "loadtest":
        return _compare_loadtests(ia, ib, boot)
    return compare_releases(ia, ib, boot)


_KIND_WORDS = {"loadtest": "load test", "release": "release"}


# ------------------------------------------------------------------------------------------------- load tests
def _usd_per_million(usd_per_hour: float | None, tokens_per_s: float, utilisation: float) -> float | None:
    from packager.report.loadsummary import usd_per_million

    return usd_per_million(usd_per_hour, tokens_per_s, utilisation)


def _phase_stored(ph: Any) -> dict[str, list[float | None]]:
    return {key: [getattr(getattr(ph, key), f"p{q}_ms") for q in QUANTILES] for _, key in LATENCIES}


def _load_words(ph: Any) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(ph.load.items()))


def match_phases(pa: Sequence[Any], pb: Sequence[Any]) -> tuple[list[tuple[Any, Any]], list[Any], list[Any]]:
    """Pairs of phases: same label and load first, then the same load alone where it is unique on both sides
    (e.g. one rate with another arrival process). Returns (pairs in A's order, only in A, only in B)."""
    rest_a, rest_b = list(pa), list(pb)
    pairs = []
    for x in list(rest_a):
        y = next((y for y in rest_b if y.label == x.label and y.load == x.load), None)
        if y is not None:
            pairs.append((x, y))
            rest_a.remove(x)
            rest_b.remove(y)
    for x in list(rest_a):
        ys = [y for y in rest_b if y.load == x.load]
        if x.load and len(ys) == 1 and sum(1 for z in rest_a if z.load == x.load) == 1:
            pairs.append((x, ys[0]))
            rest_a.remove(x)
            rest_b.remove(ys[0])
    pairs.sort(key=lambda p: p[0].index)
    return pairs, rest_a, rest_b


def _phase_group(title: str, note: str, pa: Any, pb: Any, ra: Any, rb: Any, samples: tuple[dict, dict],
                 why: tuple[str, str], boot: Bootstrap, cache: dict) -> Group:
    slo_note = "" if ra.slo == rb.slo and ra.slo_attainment_target == rb.slo_attainment_target else \
        "; the SLOs differ (see the environment), so this is not like for like"
    rows = [
        make_row("throughput", pa.request_throughput_per_s, pb.request_throughput_per_s, fmt="rate", unit="req/s",
                 better="higher"),
        make_row("output throughput", pa.output_token_throughput_per_s, pb.output_token_throughput_per_s, fmt="rate",
                 unit="tok/s", better="higher"),
        make_row("goodput", pa.goodput_requests_per_s, pb.goodput_requests_per_s, fmt="rate", unit="req/s",
                 better="higher", reason=ONE_RUN + slo_note),
    ]
    rows += latency_rows(_phase_stored(pa), _phase_stored(pb), samples[0], samples[1], why[0], why[1], boot,
                          (pa.index, pb.index), cache)
    rows.append(make_row("failed requests", pa.requests_failed, pb.requests_failed, fmt="count", better="lower"))
    if pa.dropped_arrivals or pb.dropped_arrivals:
        rows.append(make_row("dropped arrivals", pa.dropped_arrivals, pb.dropped_arrivals, fmt="count",
                             better="lower"))
    rows.append(make_row("SLO attainment", pa.slo_attainment_fraction, pb.slo_attainment_fraction, fmt="pct",
                         better="higher", reason=ONE_RUN + slo_note))
    if ra.cost is not None and rb.cost is not None:
        ca = _usd_per_million(ra.cost.usd_per_hour, pa.output_token_throughput_per_s, ra.cost.utilisation_fraction)
        cb = _usd_per_million(rb.cost.usd_per_hour, pb.output_token_throughput_per_s, rb.cost.utilisation_fraction)
        if ca is not None or cb is not None:
            rows.append(make_row("USD per 1M output tokens", ca, cb, fmt="usd", better="lower"))
    return Group(title=title, note=note, rows=rows)


def _loadtest_samples(inp: RunInput, indices: Iterable[int]) -> tuple[dict[int, dict[str, Sample]], str]:
    res = inp.data
    path = inp.root / res.files.get("records", "records.jsonl")
    rec = read_records(path)
    if not rec.present:
        return {}, f"no {path.name} next to {inp.json_path.name}"
    warmup = float((res.config or {}).get("warmup_s") or 0.0)
    return {i: phase_samples(rec, i, warmup) for i in set(indices)}, f"{path.name} holds no request of that phase"


def _compare_loadtests(ia: RunInput, ib: RunInput, boot: Bootstrap) -> Comparison:
    ra, rb = ia.data, ib.data
    pairs, only_a, only_b = match_phases(ra.phases, rb.phases)
    sa, why_a = _loadtest_samples(ia, [p.index for p, _ in pairs] + [ra.summary.index])
    sb, why_b = _loadtest_samples(ib, [p.index for _, p in pairs] + [rb.summary.index])
    cache: dict = {}
    groups = []
    sx, sy = ra.summary, rb.summary
    title = f"summary: {sx.label}" if sx.label == sy.label else f"summary: A {sx.label}, B {sy.label}"
    groups.append(_phase_group(title, f"A: {ra.summary_basis}; B: {rb.summary_basis}", sx, sy, ra, rb,
                               (sa.get(sx.index, {}), sb.get(sy.index, {})), (why_a, why_b), boot, cache))
    for x, y in pairs:
        title = f"phase {x.index}: {x.label}" if (x.index, x.label) == (y.index, y.label) else \
            f"phase A {x.index}: {x.label} / B {y.index}: {y.label}"
        note = "" if x.label == y.label else f"matched by load ({_load_words(x)})"
        groups.append(_phase_group(title, note, x, y, ra, rb, (sa.get(x.index, {}), sb.get(y.index, {})),
                                   (why_a, why_b), boot, cache))
    from datetime import datetime, timezone

    def info(inp: RunInput) -> RunInfo:
        r = inp.data
        when = datetime.fromtimestamp(r.created_unix, timezone.utc).isoformat(timespec="seconds")
        return RunInfo(kind="loadtest", path=str(inp.json_path), model=r.model, created=when,
                       description=f"{r.target_url}; {len(r.phases)} phase(s); summary: {r.summary_basis}")

    notes = list(_NOTES)
    for side, r in (("A", ra), ("B", rb)):
        if not r.complete:
            notes.append(f"{side} is incomplete: not every generator share reported its phases")
        if r.generator.bottleneck_suspected:
            notes.append(f"{side}: the load generator may have been the bottleneck ({'; '.join(r.generator.reasons)})")
    if (ra.cost is None) != (rb.cost is None):
        notes.append(f"only {'A' if ra.cost is not None else 'B'} has a price: no cost row")
    return Comparison(kind="loadtest", a=info(ia), b=info(ib), groups=groups,
                      only_in_a=[f"phase {p.index}: {p.label} ({_load_words(p)})" for p in only_a],
                      only_in_b=[f"phase {p.index}: {p.label} ({_load_words(p)})" for p in only_b],
                      environment=_loadtest_env(ra, rb), notes=notes)


_NOTES = (
    LATENCY_NOTE,
    "Throughput, goodput, failures, SLO attainment and cost: one run each, no noise estimate; repeat the runs "
    "to judge them.",
)


def _loadtest_env(ra: Any, rb: Any) -> list[EnvDiff]:
    def env(r: Any) -> dict[str, Any]:
        return {"model": r.model, "target_url": r.target_url, "versions": r.versions,
                "config": r.config, "slo": r.slo.model_dump(mode="json"),
                "slo_attainment_target": r.slo_attainment_target,
                "pricing": {"usd_per_hour": r.cost.usd_per_hour if r.cost else None,
                            "instance": r.cost.instance if r.cost else r.pricing.instance}}
    return cap_env(env_differences(env(ra), env(rb)))


__all__ = ["compare_runs", "detect_run", "match_phases", "phase_samples", "Comparison", "Group", "Row", "RunInfo",
           "EnvDiff", "make_row"]
