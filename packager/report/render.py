"""Renderers of a release Report: JSON (the data), Markdown (for a PR or a wiki) and one self-contained HTML page
with plots (inline CSS and inline SVG; no script, no external file, font or network access).

They only read the Report. `write_report(report, out_dir)` writes report.json, report.md and report.html, each
atomically (a temporary file renamed into place), after rendering all three, so a failure leaves the previous
set untouched.
"""
from __future__ import annotations

import html
import io
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from packager.fsutil import atomic_write_text
from packager.report.analysis import effective_recovery, fmt_usd, load_failure, load_words
from packager.report.model import LoadSummary, Report, VariantResult

REPORT_FILES = {"json": "report.json", "markdown": "report.md", "html": "report.html"}
PLOT_IDS = ("plot-pareto", "plot-latency", "plot-sweep", "plot-categories")
DASH = "—"


# ------------------------------------------------------------------------------------------------------------ JSON
def to_json(report: Report) -> str:
    """The report as JSON; `Report.model_validate_json(to_json(r)) == r`."""
    return report.model_dump_json(indent=2)


# ------------------------------------------------------------------------------------------------------ formatting
def _num(x: float | int | None, spec: str = ".1f") -> str:
    if x is None:
        return DASH
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec)


def _pct(x: float | None, decimals: int = 1) -> str:
    return DASH if x is None else f"{x * 100:.{decimals}f}%"


def _mb(n: int | float | None) -> str:
    return DASH if n is None else f"{n / 1e6:,.1f}"


def _mparams(n: int | None) -> str:
    return DASH if n is None else f"{n / 1e6:,.1f}M"


def _secs(x: float | None) -> str:
    if x is None:
        return DASH
    if x >= 120:
        return f"{x:,.0f} s ({x / 60:.1f} min)"
    return f"{x:.1f} s"


def _usd_hour(x: float | None) -> str:
    """Hourly prices as list prices print them (0.1785), not rounded to 3 significant digits."""
    return DASH if x is None else (f"{x:,.2f}" if x >= 100 else f"{x:.4g}")


# ----------------------------------------------------------------------------------------------- the summary table
class Column:
    def __init__(self, header: str, get: Callable[[VariantResult], str], load: bool = False, numeric: bool = True):
        self.header, self.get, self.load, self.numeric = header, get, load, numeric


def _l(v: VariantResult) -> LoadSummary:
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
    def score(v: VariantResult) -> str:
        return _num(v.score, ".3f")

    def recovery(v: VariantResult) -> str:
        return _pct(effective_recovery(v))

    return [
        Column("size (MB)", lambda v: _mb(v.size_bytes)),
        Column("params", lambda v: _mparams(v.parameters)),
        Column("task score", score),
        Column("recovery", recovery),
        Column("perplexity", lambda v: _num(v.perplexity, ".2f")),
        Column("agreement", lambda v: _pct(v.fidelity_agreement)),
        Column("mean KL", lambda v: _num(v.fidelity_mean_kl, ".4f")),
        Column("TTFT p50 (ms)", lambda v: _num(_l(v).ttft_ms_p50, ".0f"), load=True),
        Column("TTFT p95 (ms)", lambda v: _num(_l(v).ttft_ms_p95, ".0f"), load=True),
        Column("TPOT p50 (ms)", lambda v: _num(_l(v).tpot_ms_p50, ".1f"), load=True),
        Column("TPOT p95 (ms)", lambda v: _num(_l(v).tpot_ms_p95, ".1f"), load=True),
        Column("output tok/s", lambda v: _num(_l(v).output_tokens_per_s, ".1f"), load=True),
        Column("goodput (req/s)", lambda v: _num(_l(v).goodput_requests_per_s, ".2f"), load=True),
        Column("within SLO", lambda v: _pct(_l(v).goodput_fraction, 0), load=True),
        Column("USD / 1M output tokens", lambda v: fmt_usd(_l(v).usd_per_million_output_tokens), load=True),
        Column("verdict", lambda v: verdict(v, report), numeric=False),
    ]


def _marks(v: VariantResult, report: Report) -> str:
    m = []
    if report.recommendation.variant == v.name:
        m.append("★")
    if v.name in report.pareto:
        m.append("◆")
    if v.is_baseline:
        m.append("(baseline)")
    return " ".join(m)


def _load_error_text(v: VariantResult) -> str | None:
    if v.load is None:
        return "not load-tested" + (f": {'; '.join(v.errors)}" if v.errors else "")
    err = load_failure(v)
    return f"load test failed: {err}" if err else None


def _stage_rows(report: Report) -> list[list[str]]:
    rows = []
    for v in report.variants:
        if not v.stages:
            rows.append([v.name, DASH, "source (no compression)" if v.is_baseline else "no stage record", DASH,
                         _secs(v.compression_wall_time_s), _mb(v.size_bytes), _mparams(v.parameters), DASH])
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
                         _secs(st.get("wall_time_s")), _mb(size), _mparams(st.get("parameter_count")),
                         _num(st.get("peak_rss_mb"), ",.0f")])
    return rows


STAGE_HEADERS = ["variant", "#", "stage", "method", "wall time", "size (MB)", "params", "peak RSS (MB)"]

LOAD_ROWS: list[tuple[str, Callable[[LoadSummary], str]]] = [
    ("requests completed", lambda l: str(l.requests)),
    ("errors", lambda l: str(l.errors)),
    ("duration (s)", lambda l: _num(l.duration_s, ".1f")),
    ("requests/s", lambda l: _num(l.requests_per_s, ".2f")),
    ("input tok/s", lambda l: _num(l.input_tokens_per_s, ".1f")),
    ("output tok/s", lambda l: _num(l.output_tokens_per_s, ".1f")),
    ("TTFT p50 / p90 / p95 / p99 (ms)",
     lambda l: " / ".join(_num(x, ".0f") for x in (l.ttft_ms_p50, l.ttft_ms_p90, l.ttft_ms_p95, l.ttft_ms_p99))),
    ("TPOT p50 / p90 / p95 / p99 (ms)",
     lambda l: " / ".join(_num(x, ".1f") for x in (l.tpot_ms_p50, l.tpot_ms_p90, l.tpot_ms_p95, l.tpot_ms_p99))),
    ("ITL p50 / p95 (ms)", lambda l: " / ".join(_num(x, ".1f") for x in (l.itl_ms_p50, l.itl_ms_p95))),
    ("E2E p50 / p95 / p99 (ms)", lambda l: " / ".join(_num(x, ".0f") for x in (l.e2e_ms_p50, l.e2e_ms_p95, l.e2e_ms_p99))),
    ("goodput (req/s)", lambda l: _num(l.goodput_requests_per_s, ".2f")),
    ("requests within SLO", lambda l: _pct(l.goodput_fraction)),
    ("max load meeting SLO", lambda l: DASH if l.max_load_meeting_slo is None
     else f"{l.max_load_meeting_slo:g} {_sweep_unit_short(l.sweep_unit)}"),
    ("USD per hour", lambda l: _usd_hour(l.usd_per_hour)),
    ("utilization assumed", lambda l: _pct(l.utilization_assumed, 0)),
    ("USD / 1M input tokens", lambda l: fmt_usd(l.usd_per_million_input_tokens)),
    ("USD / 1M output tokens", lambda l: fmt_usd(l.usd_per_million_output_tokens)),
    ("USD / 1M output tokens at SLO", lambda l: fmt_usd(l.usd_per_million_output_tokens_at_slo)),
    ("latency samples (TTFT / TPOT)", lambda l: f"{len(l.ttft_ms_samples)} / {len(l.tpot_ms_samples)}"),
    ("load generator was the bottleneck", lambda l: "YES: figures understate the server" if l.generator_bottleneck
     else "no"),
]

def _load_notes(report: Report) -> list[tuple[str, str, str]]:
    """(variant, kind, text): which operating point the figures describe, load-test warnings, failures."""
    out: list[tuple[str, str, str]] = []
    for v in report.variants:
        err = _load_error_text(v)
        if err:
            out.append((v.name, "failed", err))
            continue
        raw = v.load.raw if v.load is not None and isinstance(v.load.raw, dict) else {}
        if raw.get("summary_basis"):
            out.append((v.name, "figures at", str(raw["summary_basis"])))
        for w in raw.get("warnings") or []:
            out.append((v.name, "warning", str(w)))
    return out


SWEEP_HEADERS = ["offered", "requests/s", "output tok/s", "TTFT p95 (ms)", "TPOT p95 (ms)", "goodput (req/s)"]


def _sweep_unit_short(unit: str | None) -> str:
    return {"concurrency": "users", "requests_per_s": "req/s"}.get(unit or "", unit or "")


def _engine_rows(report: Report) -> tuple[list[str], list[list[str]]]:
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
        cells.append(engine_label(ec.leader[i]) if ec.leader[i] else "-")
        rows.append(cells)
    return headers, rows


def _sweep_label(unit: str | None) -> str:
    return {"concurrency": "offered load (concurrent users)",
            "requests_per_s": "offered load (arrival rate, requests/s)"}.get(unit or "", f"offered load ({unit or 'unit unknown'})")


def _sweep_rows(load: LoadSummary) -> list[list[str]]:
    return [[f"{p.offered:g}", _num(p.requests_per_s, ".2f"), _num(p.output_tokens_per_s, ".1f"),
             _num(p.ttft_ms_p95, ".0f"), _num(p.tpot_ms_p95, ".1f"), _num(p.goodput_requests_per_s, ".2f")]
            for p in load.sweep]


def _categories(report: Report) -> list[str]:
    return sorted({c for v in report.variants for c in v.score_by_category})


def _behaviours(report: Report) -> list[str]:
    return sorted({c for v in report.variants for c in v.behaviour})


def _timing_total(report: Report) -> float:
    """The run's wall time: the recorded "total" when there is one (steps may overlap or leave gaps), else the sum
    of the steps."""
    t = report.timings_s
    return t["total"] if "total" in t else sum(t.values())


def _timing_rows(report: Report) -> tuple[list[tuple[str, float]], str | None]:
    """(step, seconds) rows ending with the total, and a sentence on the budget."""
    budget = report.time_budget_s
    rows = [(step, secs) for step, secs in report.timings_s.items() if step != "total"]
    if not report.timings_s:
        return [], None
    total = _timing_total(report)
    rows.append(("total", total))
    verdict_line = None
    if budget:
        if total <= budget:
            verdict_line = f"Within the time budget: {_secs(total)} of {_secs(budget)} ({_pct(total / budget)})."
        else:
            verdict_line = f"OVER the time budget by {_secs(total - budget)}: {_secs(total)} against {_secs(budget)}."
    return rows, verdict_line


def _timing_cells(report: Report, step: str, secs: float) -> list[str]:
    budget = report.time_budget_s
    return [step, _secs(secs), _pct(secs / budget) if budget else DASH]


def _config_yaml(report: Report) -> str:
    import yaml

    return yaml.safe_dump(report.config, sort_keys=False, default_flow_style=False, allow_unicode=True) \
        if report.config else "# (no configuration recorded)\n"


def _headline(report: Report) -> str:
    rec = report.recommendation
    return f"Deploy {rec.variant}." if rec.variant else "No variant is recommended."


DEFINITIONS = [
    "TTFT: request sent to first content token. TPOT: (end-to-end latency − TTFT) / (output tokens − 1).",
    "Goodput: requests per second that met every SLO (TTFT and TPOT limits); 'within SLO' is their share.",
    "USD per 1M output tokens = price per hour / (sustained output tokens per second × 3600) × 10⁶.",
    "Recovery: task score / the baseline's task score. Agreement: share of greedy outputs identical to the "
    "baseline's. Mean KL: mean KL divergence of next-token distributions from the baseline's (0 = identical).",
]


# -------------------------------------------------------------------------------------------------------- Markdown
def _md_text(text: Any) -> str:
    """Text for Markdown: '<' and '&' escaped so nothing in a name or an error message renders as HTML."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;")


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1,
              text_cols: Sequence[int] = ()) -> list[str]:
    """A pipe table; columns from `numeric_from` on are right-aligned except those in `text_cols`."""
    out = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
           "|" + "|".join("---" if i < numeric_from or i in text_cols else "---:" for i in range(len(headers)))
           + "|"]
    for r in rows:
        out.append("| " + " | ".join(_md_cell(c) for c in r) + " |")
    return out


def _expected_load_line(report: Report) -> str | None:
    """What the variants cost at the traffic the user expects, when the recommendation was ranked there."""
    rec = report.recommendation
    if rec.expected_load is None:
        return None
    costs = ", ".join(f"{name} {fmt_usd(c) if c is not None else 'not measured there'}"
                      for name, c in rec.usd_per_million_output_tokens_at_expected_load.items())
    return (f"Ranked at the expected load of {load_words(rec.expected_load, rec.expected_load_unit)} (the sweep step "
            f"it falls on). USD per 1M output tokens there: {costs}. The Variants table shows each variant at "
            f"the highest load it sustained.")


def render_markdown(report: Report) -> str:
    e = _md_text
    rec = report.recommendation
    L: list[str] = [f"# {e(report.title)}", ""]
    L.append(f"Model: `{report.model}` · baseline: `{report.baseline}` · created: {e(report.created_at)} · "
             f"report schema v{report.schema_version}")
    L.append("")
    L.append("## Recommendation")
    L.append("")
    L.append(f"**{e(_headline(report))}** {e(rec.reason)}")
    L.append("")
    if rec.rejected:
        for name, why in rec.rejected.items():
            L.append(f"- `{name}`: {e(why)}")
        L.append("")
    if (line := _expected_load_line(report)) is not None:
        L.append(e(line))
        L.append("")
    slo = report.slo
    price = report.pricing
    L.append(f"Quality floor: recovery ≥ {report.quality_floor * 100:g}% · SLO: TTFT p95 ≤ {_num(slo.get('ttft_ms'), 'g')} ms, "
             f"TPOT p95 ≤ {_num(slo.get('tpot_ms'), 'g')} ms · price: {e(price.get('instance', DASH))} at "
             f"USD {_usd_hour(price.get('usd_per_hour'))}/hour"
             + (f" ({e(price['source'])})" if price.get("source") else ""))
    L.append("")
    L.append("## Variants")
    L.append("")
    cols = summary_columns(report)
    rows = []
    for v in report.variants:
        err = _load_error_text(v)
        cells = []
        first_load = True
        for c in cols:
            if c.load and err:
                cells.append(err if first_load else DASH)
                first_load = False
            else:
                cells.append(c.get(v))
        name = v.name + (" " + _marks(v, report) if _marks(v, report) else "")
        rows.append([name, *cells])
    L += _md_table(["variant", *[c.header for c in cols]], rows, text_cols=[len(cols)])
    L.append("")
    L.append("★ recommended · ◆ on the quality-vs-cost Pareto frontier (higher task score, lower USD per 1M output "
             f"tokens): {', '.join(report.pareto) if report.pareto else 'none'}")
    L.append("")
    for d in DEFINITIONS:
        L.append(f"- {e(d)}")
    L.append("")
    problems = [(v.name, x) for v in report.variants for x in v.errors]
    if problems:
        L.append("### Problems")
        L.append("")
        for name, x in problems:
            L.append(f"- `{name}`: {e(x)}")
        L.append("")

    cats = _categories(report)
    L.append("## Scores by category")
    L.append("")
    if cats:
        L += _md_table(["category", *[v.name for v in report.variants]],
                       [[c, *[_num(v.score_by_category.get(c), ".3f") for v in report.variants]] for c in cats])
    else:
        L.append("No per-category scores were recorded.")
    L.append("")
    beh = _behaviours(report)
    if beh:
        L.append("### Behaviour checks")
        L.append("")
        L += _md_table(["check", *[v.name for v in report.variants]],
                       [[b, *[_num(v.behaviour.get(b), ".3f") for v in report.variants]] for b in beh])
        L.append("")

    L.append("## Compression stages")
    L.append("")
    L += _md_table(STAGE_HEADERS, _stage_rows(report), numeric_from=4)
    L.append("")

    L.append("## Load tests")
    L.append("")
    loaded = [v for v in report.variants if v.load is not None]
    if loaded:
        L += _md_table(["metric", *[v.name for v in loaded]],
                       [[label, *[get(v.load) for v in loaded]] for label, get in LOAD_ROWS])  # type: ignore[arg-type]
        L.append("")
    notes = _load_notes(report)
    for name, kind, text in notes:
        L.append(f"- `{name}` {kind}: {e(text)}")
    if notes:
        L.append("")
    if report.engines is not None:
        L.append(f"### Engines ({e(_sweep_label(report.engines.sweep_unit))})")
        L.append("")
        L.append(e(report.engines.summary))
        L.append("")
        L += _md_table(*_engine_rows(report), numeric_from=0)
        L.append("")
    for v in loaded:
        if v.load is not None and v.load.sweep:
            L.append(f"### Sweep: {e(v.name)} ({e(_sweep_label(v.load.sweep_unit))})")
            L.append("")
            L += _md_table(SWEEP_HEADERS, _sweep_rows(v.load), numeric_from=0)
            L.append("")

    L.append("## Timings")
    L.append("")
    trows, tverdict = _timing_rows(report)
    if trows:
        L += _md_table(["step", "wall time", "share of budget"], [_timing_cells(report, *r) for r in trows])
        L.append("")
    if tverdict:
        L.append(tverdict)
    elif not trows:
        L.append("No timings were recorded.")
    L.append("")

    L.append("## Versions and platform")
    L.append("")
    L += _md_table(["package", "version"], sorted(report.versions.items()), numeric_from=2)
    L.append("")
    L += _md_table(["platform", "value"], list(report.platform.items()), numeric_from=2)
    L.append("")
    if report.notes:
        L.append("## Notes")
        L.append("")
        L += [f"- {e(n)}" for n in report.notes]
        L.append("")
    L.append("## Configuration")
    L.append("")
    L.append("The run configuration, verbatim: `packager release --config` with this file reproduces the run.")
    L.append("")
    y = _config_yaml(report)
    fence = "~~~~" if "```" in y else "```"
    L += [f"{fence}yaml", y.rstrip("\n"), fence, ""]
    return "\n".join(L)


# ----------------------------------------------------------------------------------------------------------- plots
def _variant_colors(report: Report) -> dict[str, str]:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf"]
    return {v.name: palette[i % len(palette)] for i, v in enumerate(report.variants)}


def _fig_to_svg(fig: Any, plot_id: str) -> str:
    """The figure as an <svg> element ready to inline: no XML prolog, no metadata, ids prefixed so that several
    plots on one page never share an id."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    prefix = plot_id + "-"

    def sub(m: re.Match) -> str:
        return m.group(1) + prefix + m.group(2) if m.group(2) in ids else m.group(0)

    svg = re.sub(r'(\bid="|url\(#|href="#)([^")]+)', sub, svg)
    svg = svg.replace("<svg ", '<svg role="img" ', 1)
    return svg


def _new_figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")


def _rc():
    import matplotlib

    return matplotlib.rc_context({"svg.hashsalt": "packager-report", "svg.fonttype": "path", "font.size": 10,
                                  "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3,
                                  "legend.fontsize": 8.5, "legend.framealpha": 0.9})


def _quality_axis(report: Report) -> tuple[str, Callable[[VariantResult], float | None], float | None]:
    """(label, value getter, quality floor in the same unit or None): recovery in % when the baseline has a
    positive score, else the raw task score."""
    base = next((v for v in report.variants if v.name == report.baseline), None)
    if base is not None and base.score:
        def rec(v: VariantResult) -> float | None:
            r = effective_recovery(v)
            if r is None and v.score is not None:
                r = v.score / base.score  # type: ignore[operator]
            return None if r is None else r * 100.0
        return "recovery (% of baseline task score)", rec, report.quality_floor * 100.0
    return "task score", lambda v: v.score, None


def _blank_handle(label: str | None = None):
    from matplotlib.patches import Rectangle

    return Rectangle((0, 0), 1, 1, fill=False, edgecolor="none", visible=False, label=label or "")


def _plain_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _pos: f"{x:g}")


def _plain_log_ticks(axis) -> None:
    """Log-scale ticks labelled as plain numbers (20, 50, 100, 200) instead of 2×10¹."""
    from matplotlib.ticker import LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(_plain_formatter())
    axis.set_minor_formatter(NullFormatter())


def plot_pareto(report: Report) -> str | None:
    """Quality vs USD per 1M output tokens; Pareto frontier, recommended variant and quality floor marked."""
    label, q, floor = _quality_axis(report)
    pts = []
    missing = []
    for v in report.variants:
        y, x = q(v), _l(v).usd_per_million_output_tokens if v.load else None
        if x is None or y is None or not math.isfinite(x) or not math.isfinite(y):
            missing.append(v.name)
        else:
            pts.append((v, x, y))
    if not pts:
        return None
    colors = _variant_colors(report)
    with _rc():
        fig = _new_figure(7.2, 4.6)
        ax = fig.add_subplot()
        for v, x, y in pts:
            ax.scatter([x], [y], s=70, color=colors[v.name], edgecolor="black", linewidth=0.6, zorder=3,
                       label=v.name + (" (baseline)" if v.is_baseline else ""))
            ax.annotate(v.name, (x, y), textcoords="offset points", xytext=(12, 8), fontsize=9.5,
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        front = [(x, y) for v, x, y in pts if v.name in report.pareto]
        front.sort()
        if front:
            ax.plot([p[0] for p in front], [p[1] for p in front], linestyle="--", color="#444444", linewidth=1.2,
                    marker="D", markersize=11, markerfacecolor="none", markeredgecolor="#444444", zorder=2,
                    label="Pareto frontier")
        rec = next(((x, y) for v, x, y in pts if v.name == report.recommendation.variant), None)
        if rec is not None:
            ax.scatter([rec[0]], [rec[1]], s=420, marker="*", facecolor="none", edgecolor="#d4a017", linewidth=2.0,
                       zorder=4, label=f"recommended: {report.recommendation.variant}")
        ys = [y for _, _, y in pts]
        if floor is not None:
            ax.axhline(floor, color="#c0392b", linestyle=":", linewidth=1.5,
                       label=f"quality floor {floor:g}%")
            ys.append(floor)
        lo, hi = min(ys), max(ys)
        pad = max((hi - lo) * 0.15, 2.0 if floor is not None else 0.02)
        ax.set_ylim(lo - pad, hi + pad)
        xs = [x for _, x, _ in pts]
        xpad = max((max(xs) - min(xs)) * 0.25, max(xs) * 0.1, 1e-9)
        ax.set_xlim(max(0.0, min(xs) - xpad), max(xs) + xpad)
        ax.set_xlabel("USD per 1M output tokens (lower is better)")
        ax.set_ylabel(label + " (higher is better)" if floor is not None else label)
        ax.set_title("Quality vs cost", loc="left")
        from matplotlib.lines import Line2D

        handles, labels = ax.get_legend_handles_labels()
        if rec is not None:  # the scatter's own handle is drawn at its (large) plot size
            i = labels.index(f"recommended: {report.recommendation.variant}")
            handles[i] = Line2D([], [], linestyle="none", marker="*", markersize=14, markerfacecolor="none",
                                markeredgecolor="#d4a017", markeredgewidth=1.8)
        if missing:
            handles.append(_blank_handle())
            labels.append("not plotted (no quality or cost figure): " + ", ".join(missing))
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
        return _fig_to_svg(fig, "plot-pareto")


def plot_latency(report: Report) -> str | None:
    """Box plots of the per-request TTFT and TPOT samples of each variant, with the SLO limits."""
    with_samples = [v for v in report.variants if v.load and (v.load.ttft_ms_samples or v.load.tpot_ms_samples)]
    if not with_samples:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    colors = _variant_colors(report)
    without = [v.name for v in report.variants if v not in with_samples]
    with _rc():
        fig = _new_figure(7.2, 4.8)
        axes = fig.subplots(1, 2)
        for ax, metric, slo_key, title in ((axes[0], "ttft_ms_samples", "ttft_ms", "Time to first token"),
                                           (axes[1], "tpot_ms_samples", "tpot_ms", "Time per output token")):
            data = [(v, [x for x in getattr(v.load, metric) if math.isfinite(x)]) for v in with_samples]
            data = [(v, xs) for v, xs in data if xs]
            slo = report.slo.get(slo_key)
            if data:
                bp = ax.boxplot([xs for _, xs in data], patch_artist=True, widths=0.55,
                                medianprops={"color": "black", "linewidth": 1.4},
                                flierprops={"marker": ".", "markersize": 3, "alpha": 0.5})
                for patch, (v, _) in zip(bp["boxes"], data):
                    patch.set_facecolor(colors[v.name])
                    patch.set_alpha(0.75)
                crowded = len(data) > 3 or max(len(v.name) for v, _ in data) > 14
                if crowded:  # slanted one-line labels never overlap
                    ax.set_xticks(range(1, len(data) + 1), [f"{v.name} (n={len(xs)})" for v, xs in data],
                                  rotation=35, ha="right", rotation_mode="anchor", fontsize=7.5)
                else:
                    ax.set_xticks(range(1, len(data) + 1), [f"{v.name}\n(n={len(xs)})" for v, xs in data],
                                  fontsize=8.5)
                values = [x for _, xs in data for x in xs]
                positive = [x for x in values if x > 0]
                top = max(values + ([slo] if slo else []))
                if positive and top / min(positive) > 20:
                    ax.set_yscale("log")
                    ax.set_ylim(min(positive) / 1.3, top * 1.3)
                    _plain_log_ticks(ax.yaxis)
                else:
                    ax.set_ylim(0, top * 1.1)
            else:
                ax.set_xticks([])
                ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center", va="center", color="#777777")
            if slo:
                ax.axhline(slo, color="#c0392b", linestyle="--", linewidth=1.4)
                ax.annotate(f"SLO {slo:g} ms", (1.0, slo), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                            textcoords="offset points", ha="right", va="bottom", fontsize=8, color="#c0392b")
            ax.set_title(title, loc="left")
            ax.set_ylabel(f"{'TTFT' if slo_key == 'ttft_ms' else 'TPOT'} (ms)")
            ax.set_xlabel("variant")
        handles = [Patch(facecolor="#cccccc", edgecolor="black", label="box: p25–p75 · line: median · whiskers: 1.5×IQR"),
                   Line2D([], [], color="#c0392b", linestyle="--", label="SLO limit")]
        if without:
            handles.append(_blank_handle("no samples: " + ", ".join(without)))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
        fig.suptitle("Latency per request at the tested load", x=0.01, ha="left", fontsize=11)
        return _fig_to_svg(fig, "plot-latency")


def plot_sweep(report: Report) -> str | None:
    """Output tokens/s and p95 TTFT against the offered load, one line per variant."""
    swept = [v for v in report.variants if v.load and v.load.sweep]
    if not swept:
        return None
    colors = _variant_colors(report)
    units = {v.load.sweep_unit for v in swept}  # type: ignore[union-attr]
    xlabel = _sweep_label(units.pop()) if len(units) == 1 else "offered load (units differ per variant)"
    offered = [p.offered for v in swept for p in v.load.sweep]  # type: ignore[union-attr]
    log_x = min(offered) > 0 and max(offered) / min(offered) >= 8
    with _rc():
        fig = _new_figure(7.2, 4.6)
        ax_t, ax_l = fig.subplots(1, 2)
        any_ttft = False
        from packager.engines.select import engine_label

        several_engines = len({v.engine for v in swept}) > 1  # then: one line style per engine, named in the legend
        styles = {e: ls for e, ls in zip(sorted({v.engine for v in swept}), ["-", "--", ":", "-."] * 4)}
        for v in swept:
            pts = sorted(v.load.sweep, key=lambda p: p.offered)  # type: ignore[union-attr]
            label = f"{v.name} ({engine_label(v.engine)})" if several_engines else v.name
            ls = styles[v.engine] if several_engines else "-"
            ax_t.plot([p.offered for p in pts], [p.output_tokens_per_s for p in pts], marker="o",
                      color=colors[v.name], label=label, linestyle=ls)
            lat = [(p.offered, p.ttft_ms_p95) for p in pts if p.ttft_ms_p95 is not None]
            if lat:
                any_ttft = True
                ax_l.plot([a for a, _ in lat], [b for _, b in lat], marker="o", color=colors[v.name], label=label,
                          linestyle=ls)
        for c in (report.engines.crossovers if report.engines else []):
            ax_t.axvline(c["at"], color="#555555", linestyle=":", linewidth=1.0)
            ax_t.annotate(f"{engine_label(c['to_engine'])} leads", (c["at"], 0), xytext=(3, 4),
                          textcoords="offset points", fontsize=7, color="#555555")
        slo = report.slo.get("ttft_ms")
        if slo:
            ax_l.axhline(slo, color="#c0392b", linestyle="--", linewidth=1.4, label=f"SLO TTFT {slo:g} ms")
        if not any_ttft:
            ax_l.text(0.5, 0.5, "no p95 TTFT in the sweep", transform=ax_l.transAxes, ha="center", va="center",
                      color="#777777")
        for ax in (ax_t, ax_l):
            if log_x:
                ax.set_xscale("log", base=2)
                ax.xaxis.set_major_formatter(_plain_formatter())
            ax.set_xlabel(xlabel, fontsize=9)
        # one legend for both panels (a variant has the same colour in each), below them: never over a line
        handles, labels = ax_t.get_legend_handles_labels()
        h2, l2 = ax_l.get_legend_handles_labels()
        handles += [h for h, lab in zip(h2, l2) if lab not in labels]
        labels += [lab for lab in l2 if lab not in labels]
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
        ax_t.set_ylim(bottom=0)
        ax_l.set_ylim(bottom=0)
        ax_t.set_title("Throughput", loc="left")
        ax_t.set_ylabel("output tokens/s")
        ax_l.set_title("Time to first token (p95)", loc="left")
        ax_l.set_ylabel("TTFT p95 (ms)")
        fig.suptitle("Load sweep", x=0.01, ha="left", fontsize=11)
        return _fig_to_svg(fig, "plot-sweep")


def plot_categories(report: Report) -> str | None:
    """Grouped bars: task score per category, one bar per variant."""
    cats = _categories(report)
    shown = [v for v in report.variants if v.score_by_category]
    if not cats or not shown:
        return None
    colors = _variant_colors(report)
    with _rc():
        fig = _new_figure(7.2, 4.6)
        ax = fig.add_subplot()
        n = len(shown)
        width = 0.8 / n
        vals = []
        for i, v in enumerate(shown):
            xs = [j + (i - (n - 1) / 2) * width for j in range(len(cats))]
            ys = [v.score_by_category.get(c, float("nan")) for c in cats]
            vals += [y for y in ys if math.isfinite(y)]
            ax.bar(xs, [0 if not math.isfinite(y) else y for y in ys], width=width * 0.95, color=colors[v.name],
                   label=v.name, edgecolor="white", linewidth=0.5)
        if len(cats) > 4 or max(len(c) for c in cats) > 22:
            ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
        else:
            ax.set_xticks(range(len(cats)), cats, fontsize=8.5)
        top = max(vals) if vals else 1.0
        ax.set_ylim(0, 1.05 if top <= 1.0 else top * 1.1)
        ax.set_ylabel("task score (share of items passed)")
        ax.set_xlabel("category")
        ax.set_title("Task score by category", loc="left")
        fig.legend(loc="outside lower center", ncols=min(n, 4), fontsize=8)
        return _fig_to_svg(fig, "plot-categories")


PLOTS: list[tuple[str, str, Callable[[Report], str | None], str, str]] = [
    ("plot-pareto", "Quality vs cost", plot_pareto,
     "Each point is a variant. The dashed line joins the Pareto frontier (no other variant is both better and "
     "cheaper); the star marks the recommendation; the dotted line is the quality floor.",
     "No variant has both a quality score and a cost figure."),
    ("plot-latency", "Latency distributions", plot_latency,
     "Per-request TTFT and TPOT at the tested load; dashed lines are the SLO limits.",
     "No per-request latency samples were recorded (no load test completed)."),
    ("plot-sweep", "Throughput vs offered load", plot_sweep,
     "Output tokens/s and p95 TTFT as the offered load grows; where TTFT crosses the SLO line is the most load "
     "a variant takes within the SLO.",
     "No load sweep was run (the load test used one load level)."),
    ("plot-categories", "Scores by category", plot_categories,
     "Task score per category of the suite, per variant.",
     "No per-category scores were recorded."),
]


def render_plots(report: Report) -> dict[str, str | None]:
    """plot id -> inline <svg>, or None where there is nothing to plot. Exceptions propagate."""
    return {pid: fn(report) for pid, _, fn, _, _ in PLOTS}


def _render_plots_safely(report: Report) -> dict[str, str | None | Exception]:
    """Like render_plots, but a plot that raises is recorded as its exception rather than sinking the whole
    report (the page then says that plot could not be drawn, and why)."""
    out: dict[str, str | None | Exception] = {}
    for pid, _, fn, _, _ in PLOTS:
        try:
            out[pid] = fn(report)
        except Exception as exc:  # noqa: BLE001 - shown on the page; every other figure stays usable
            out[pid] = exc
    return out


# ------------------------------------------------------------------------------------------------------------ HTML
CSS = """
:root { --fg:#1d2330; --muted:#5b6474; --line:#d9dee7; --ok:#1e7f45; --okbg:#e8f6ee; --bad:#a8321e; --badbg:#fbecea;
        --warnbg:#fff6e0; --head:#f3f5f9; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); background: #fff; }
main { max-width: 1480px; margin: 0 auto; padding: 20px 28px 40px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
.meta { color: var(--muted); margin: 0 0 14px; }
.meta b { color: var(--fg); font-weight: 600; }
.rec { border-radius: 8px; padding: 14px 18px; margin: 10px 0 6px; border: 1px solid; }
.rec.ok { background: var(--okbg); border-color: #9fd3b4; }
.rec.none { background: var(--badbg); border-color: #e8b3aa; }
.rec .headline { font-size: 18px; font-weight: 700; margin: 0 0 6px; }
.rec.ok .headline { color: var(--ok); } .rec.none .headline { color: var(--bad); }
.rec p { margin: 4px 0; } .rec ul { margin: 6px 0 0; padding-left: 20px; }
.criteria { color: var(--muted); margin: 6px 0 0; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; vertical-align: top; }
th { background: var(--head); font-weight: 600; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.summary th { white-space: normal; min-width: 64px; }
tr.recommended td { background: var(--okbg); }
td.failed { background: var(--warnbg); color: var(--bad); text-align: left; }
.badge { display: inline-block; border-radius: 10px; padding: 0 7px; font-size: 12px; margin-left: 4px;
         background: #e9ecf2; color: var(--muted); white-space: nowrap; }
.badge.rec { background: var(--ok); color: #fff; border: 0; margin: 0 0 0 4px; padding: 0 7px; }
.badge.pareto { background: #ddeaff; color: #1b4f9c; }
.v-bad { color: var(--bad); } .v-ok { color: var(--ok); font-weight: 600; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(600px, 1fr)); gap: 18px; }
figure.plot { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; background: #fff; }
figure.plot h3 { margin: 0 0 6px; }
figure.plot svg { display: block; width: 100%; height: auto; }
figure.plot figcaption { color: var(--muted); font-size: 12.5px; margin-top: 6px; }
.empty { color: var(--muted); font-style: italic; padding: 30px 0; text-align: center; }
.bar { background: #e9ecf2; border-radius: 4px; height: 10px; width: 220px; overflow: hidden; }
.bar > span { display: block; height: 100%; background: #4a7bd0; }
.bar.over > span { background: var(--bad); }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; overflow-x: auto;
      font-size: 12.5px; }
.defs { color: var(--muted); font-size: 12.5px; padding-left: 18px; }
.cols { display: flex; flex-wrap: wrap; gap: 24px; }
"""


def _h(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1,
                cls: str = "") -> str:
    out = [f'<div class="table-wrap"><table{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}><thead><tr>']
    out += [f"<th>{_h(h)}</th>" for h in headers]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="num">{_h(c)}</td>' if i >= numeric_from else f"<td>{_h(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _summary_html(report: Report) -> str:
    cols = summary_columns(report)
    n_load = sum(1 for c in cols if c.load)
    out = ['<div class="table-wrap"><table class="summary"><thead><tr><th>variant</th>']
    out += [f"<th>{_h(c.header)}</th>" for c in cols]
    out.append("</tr></thead><tbody>")
    for v in report.variants:
        is_rec = report.recommendation.variant == v.name
        out.append('<tr class="recommended">' if is_rec else "<tr>")
        badges = ""
        if is_rec:
            badges += '<span class="badge rec">★ recommended</span>'
        if v.name in report.pareto:
            badges += '<span class="badge pareto">◆ Pareto</span>'
        if v.is_baseline:
            badges += '<span class="badge">baseline</span>'
        out.append(f"<td><b>{_h(v.name)}</b>{badges}</td>")
        err = _load_error_text(v)
        done_err = False
        for c in cols:
            if c.load and err:
                if not done_err:
                    out.append(f'<td class="failed" colspan="{n_load}">{_h(err)}</td>')
                    done_err = True
                continue
            text = c.get(v)
            if c.header == "verdict":
                klass = "v-ok" if text == "recommended" else ("v-bad" if text != DASH and "passes" not in text
                                                               else "")
                out.append(f'<td class="{klass}">{_h(text)}</td>')
            else:
                out.append(f'<td class="num">{_h(text)}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def render_html(report: Report, plots: dict[str, Any] | None = None) -> str:
    """One self-contained HTML page: the same content as the Markdown, plus four inline SVG plots (each in a
    <figure id="plot-..."> container; a plot without data shows why instead)."""
    if plots is None:
        plots = _render_plots_safely(report)
    rec = report.recommendation
    slo, price = report.slo, report.pricing
    P: list[str] = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                    '<meta name="viewport" content="width=device-width, initial-scale=1">',
                    f"<title>{_h(report.title)}</title>", f"<style>{CSS}</style></head><body><main>"]
    P.append(f"<header><h1>{_h(report.title)}</h1>")
    P.append(f'<p class="meta">Model <b>{_h(report.model)}</b> · baseline <b>{_h(report.baseline)}</b> · created '
             f'<b>{_h(report.created_at)}</b> · report schema v{report.schema_version}</p></header>')

    P.append(f'<section id="recommendation"><div class="rec {"ok" if rec.variant else "none"}">')
    P.append(f'<p class="headline">{_h(_headline(report))}</p><p>{_h(rec.reason)}</p>')
    if rec.rejected:
        P.append("<ul>" + "".join(f"<li><b>{_h(k)}</b>: {_h(w)}</li>" for k, w in rec.rejected.items()) + "</ul>")
    if (line := _expected_load_line(report)) is not None:
        P.append(f'<p class="expected-load">{_h(line)}</p>')
    P.append("</div>")
    P.append(f'<p class="criteria">Quality floor: recovery ≥ {report.quality_floor * 100:g}% · SLO: TTFT p95 ≤ '
             f'{_h(_num(slo.get("ttft_ms"), "g"))} ms, TPOT p95 ≤ {_h(_num(slo.get("tpot_ms"), "g"))} ms · '
             f'price: {_h(price.get("instance", DASH))} at USD {_h(_usd_hour(price.get("usd_per_hour")))}/hour'
             + (f" ({_h(price['source'])})" if price.get("source") else "") + "</p></section>")

    P.append('<section id="variants"><h2>Variants</h2>')
    P.append(_summary_html(report))
    P.append('<ul class="defs">' + "".join(f"<li>{_h(d)}</li>" for d in DEFINITIONS) + "</ul>")
    problems = [(v.name, x) for v in report.variants for x in v.errors]
    if problems:
        P.append("<h3>Problems</h3><ul>" + "".join(f"<li><b>{_h(n)}</b>: {_h(x)}</li>" for n, x in problems)
                 + "</ul>")
    P.append("</section>")

    P.append('<section id="plots"><h2>Plots</h2><div class="plots">')
    for pid, title, _, caption, empty in PLOTS:
        svg = plots.get(pid)
        P.append(f'<figure class="plot" id="{pid}" aria-label="{_h(title)}">')
        if isinstance(svg, Exception):
            P.append(f'<p class="empty v-bad">This plot could not be drawn: {_h(type(svg).__name__)}: {_h(svg)}</p>')
        else:
            P.append(svg if svg else f'<p class="empty">{_h(empty)}</p>')
        P.append(f"<figcaption>{_h(caption)}</figcaption></figure>")
    P.append("</div></section>")

    cats = _categories(report)
    P.append('<section id="categories"><h2>Scores by category</h2>')
    if cats:
        P.append(_html_table(["category", *[v.name for v in report.variants]],
                             [[c, *[_num(v.score_by_category.get(c), ".3f") for v in report.variants]] for c in cats]))
    else:
        P.append('<p class="empty">No per-category scores were recorded.</p>')
    beh = _behaviours(report)
    if beh:
        P.append("<h3>Behaviour checks</h3>")
        P.append(_html_table(["check", *[v.name for v in report.variants]],
                             [[b, *[_num(v.behaviour.get(b), ".3f") for v in report.variants]] for b in beh]))
    P.append("</section>")

    P.append('<section id="stages"><h2>Compression stages</h2>')
    P.append(_html_table(STAGE_HEADERS, _stage_rows(report), numeric_from=4))
    P.append("</section>")

    P.append('<section id="load"><h2>Load tests</h2>')
    loaded = [v for v in report.variants if v.load is not None]
    if loaded:
        P.append(_html_table(["metric", *[v.name for v in loaded]],
                             [[label, *[get(v.load) for v in loaded]] for label, get in LOAD_ROWS]))  # type: ignore[arg-type]
    notes = _load_notes(report)
    if notes:
        P.append("<ul>" + "".join(
            f'<li><b>{_h(n)}</b> {_h(kind)}: <span class="{"v-bad" if kind != "figures at" else ""}">{_h(x)}</span></li>'
            for n, kind, x in notes) + "</ul>")
    if report.engines is not None:
        P.append(f'<div id="engines"><h3>Engines</h3><p class="meta">{_h(_sweep_label(report.engines.sweep_unit))}</p>'
                 f"<p>{_h(report.engines.summary)}</p>" + _html_table(*_engine_rows(report), numeric_from=0) + "</div>")
    sweeps = [v for v in loaded if v.load and v.load.sweep]
    if sweeps:
        P.append('<div class="cols">')
        for v in sweeps:
            P.append(f"<div><h3>Sweep: {_h(v.name)}</h3><p class=\"meta\">{_h(_sweep_label(v.load.sweep_unit))}</p>"  # type: ignore[union-attr]
                     + _html_table(SWEEP_HEADERS, _sweep_rows(v.load), numeric_from=0) + "</div>")  # type: ignore[arg-type]
        P.append("</div>")
    P.append("</section>")

    P.append('<section id="timings"><h2>Timings</h2>')
    trows, tverdict = _timing_rows(report)
    budget = report.time_budget_s
    if trows:
        P.append('<div class="table-wrap"><table><thead><tr><th>step</th><th>wall time</th><th>share of budget</th>'
                 "<th></th></tr></thead><tbody>")
        for step, secs in trows:
            _, wall, share = _timing_cells(report, step, secs)
            frac = secs / budget if budget else 0.0
            bar = (f'<div class="bar{" over" if frac > 1 else ""}"><span style="width:{min(frac, 1.0) * 100:.1f}%">'
                   "</span></div>") if budget else ""
            tag = "th" if step == "total" else "td"
            P.append(f"<tr><{tag}>{_h(step)}</{tag}><td class=\"num\">{_h(wall)}</td><td class=\"num\">{_h(share)}</td>"
                     f"<td>{bar}</td></tr>")
        P.append("</tbody></table></div>")
    P.append(f"<p>{_h(tverdict)}</p>" if tverdict else ("" if trows else '<p class="empty">No timings were recorded.</p>'))
    P.append("</section>")

    P.append('<section id="versions"><h2>Versions and platform</h2><div class="cols">')
    P.append(_html_table(["package", "version"], sorted(report.versions.items()), numeric_from=2))
    P.append(_html_table(["platform", "value"], list(report.platform.items()), numeric_from=2))
    P.append("</div></section>")
    if report.notes:
        P.append('<section id="notes"><h2>Notes</h2><ul>' + "".join(f"<li>{_h(n)}</li>" for n in report.notes)
                 + "</ul></section>")
    P.append('<section id="config"><h2>Configuration</h2><p>The run configuration, verbatim: '
             "<code>packager release --config</code> with this file reproduces the run.</p>")
    P.append(f"<pre>{_h(_config_yaml(report))}</pre></section>")
    P.append("</main></body></html>")
    return "\n".join(P)


# ----------------------------------------------------------------------------------------------------------- write
def write_report(report: Report, out_dir: Path | str) -> dict[str, Path]:
    """Render report.json, report.md and report.html into out_dir (created if needed), each written atomically.
    Returns {"json": path, "markdown": path, "html": path}."""
    out = Path(out_dir)
    texts = {"json": to_json(report), "markdown": render_markdown(report), "html": render_html(report)}
    paths: dict[str, Path] = {}
    for kind, text in texts.items():
        p = out / REPORT_FILES[kind]
        atomic_write_text(p, text)
        os.chmod(p, 0o666 & ~_umask())  # the temp file was private (0600); a report is meant to be read
        paths[kind] = p
    return paths


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
