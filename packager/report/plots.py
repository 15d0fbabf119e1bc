"""The report's plots: each a function from a Report to an inline <svg> element (matplotlib, imported only when a
plot is drawn), or None when the report has nothing to plot. PLOTS lists them in page order with their titles
and captions; the HTML page (packager.report.html) shows them in the Plots section.
"""
from __future__ import annotations

import io
import math
import re
from typing import Any, Callable, Sequence

from packager.report.analysis import effective_recovery
from packager.report.content import categories, load_or_empty, sweep_label, timing_total
from packager.report.model import Report, VariantResult


# --------------------------------------------------------------------------------------------------------- helpers
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
        y, x = q(v), load_or_empty(v).usd_per_million_output_tokens if v.load else None
        if x is None or y is None or not math.isfinite(x) or not math.isfinite(y):
            missing.append(v.name)
        else:
            pts.append((v, x, y))
    if not pts:
        return None
    colors = _variant_colors(report)
    pts_ci: list[float] = []  # interval ends: the y range must show them
    with _rc():
        fig = _new_figure(7.2, 4.6)
        ax = fig.add_subplot()
        ci_drawn = False
        for v, x, y in pts:
            ax.scatter([x], [y], s=70, color=colors[v.name], edgecolor="black", linewidth=0.6, zorder=3,
                       label=v.name + (" (baseline)" if v.is_baseline else ""))
            if floor is not None and v.recovery_ci is not None and not v.is_baseline:
                lo_ci, hi_ci = v.recovery_ci[0] * 100.0, v.recovery_ci[1] * 100.0
                ax.errorbar([x], [y], yerr=[[max(y - lo_ci, 0.0)], [max(hi_ci - y, 0.0)]], fmt="none",
                            ecolor=colors[v.name], elinewidth=1.4, capsize=5, zorder=2,
                            label=None if ci_drawn else "95% recovery interval")
                ci_drawn = True
                pts_ci.extend([lo_ci, hi_ci])
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
        ys = [y for _, _, y in pts] + pts_ci
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
        handles = [Patch(facecolor="#cccccc", edgecolor="black",
                         label="box: p25–p75 · line: median · whiskers: 1.5×IQR"),
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
    xlabel = sweep_label(units.pop()) if len(units) == 1 else "offered load (units differ per variant)"
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
            _mark_knees(ax_l, swept, colors, slo)
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


def _mark_knees(ax, swept: list[VariantResult], colors: dict[str, str], slo: float) -> None:
    """A star on the SLO line at each variant's capacity at the SLO, where the capacity search found it."""
    knees = [(v, v.load.max_load_meeting_slo) for v in swept if v.load and v.load.knee_probes
             and v.load.max_load_meeting_slo]
    for v, k in knees:
        ax.plot([k], [slo], marker="*", markersize=13, color=colors[v.name], linestyle="none", zorder=5,
                markeredgecolor="#333333", markeredgewidth=0.6)
    if knees:
        ax.plot([], [], marker="*", markersize=11, color="#bbbbbb", markeredgecolor="#333333", linestyle="none",
                label="capacity at the SLO (search)")


def plot_categories(report: Report) -> str | None:
    """Grouped bars: task score per category, one bar per variant."""
    cats = categories(report)
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


def plot_gate(report: Report) -> str | None:
    """The quality gate at a glance, one row per compressed variant: its recovery with the 95% interval against
    the floor and the interval's bound, and its mean KL to the baseline against the noise floor and the KL limit
    (log scale). A filled marker passes the gate, a hollow one does not. A variant whose suite was not scored (its
    KL settled above the limit first) has its KL marker and no recovery marker."""
    shown = [v for v in report.variants
             if not v.is_baseline and (effective_recovery(v) is not None or v.fidelity_mean_kl)]
    if not shown:
        return None
    gate, colors = report.gate or {}, _variant_colors(report)
    floor = report.quality_floor * 100.0
    bound = gate.get("lower_bound_floor") if gate.get("use_lower_bound") else None
    nf, max_kl = (report.noise_floor or {}).get("mean_kl"), gate.get("max_kl")
    with_kl = any(v.fidelity_mean_kl for v in shown)
    rows = list(range(len(shown)))[::-1]  # the first variant on top

    def mark(ax, x: float, y: int, v: VariantResult) -> None:
        ax.scatter([x], [y], s=70, zorder=3, linewidth=1.4, edgecolor=colors[v.name],
                   facecolor=colors[v.name] if v.meets_quality_floor else "white")

    with _rc():
        fig = _new_figure(7.2, 1.6 + 0.45 * len(shown))
        axes = fig.subplots(1, 2 if with_kl else 1, sharey=True, squeeze=False)[0]
        ax = axes[0]
        xs = [floor] + ([bound * 100.0] if bound is not None else [])
        for y, v in zip(rows, shown):
            rec = effective_recovery(v)
            if rec is None:
                continue
            r = rec * 100.0
            if v.recovery_ci is not None:
                lo, hi = v.recovery_ci[0] * 100.0, v.recovery_ci[1] * 100.0
                ax.plot([lo, hi], [y, y], color=colors[v.name], linewidth=2.0, solid_capstyle="butt", zorder=2)
                xs += [lo, hi]
            mark(ax, r, y, v)
            xs.append(r)
        ax.axvline(floor, color="#c0392b", linestyle=":", linewidth=1.5, label=f"floor {floor:g}%")
        if bound is not None:
            ax.axvline(bound * 100.0, color="#e67e22", linestyle="--", linewidth=1.2,
                       label=f"interval's lower bound ≥ {bound * 100.0:g}%")
        pad = max((max(xs) - min(xs)) * 0.08, 1.0)
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax.set_yticks(rows, [v.name for v in shown])
        ax.set_ylim(-0.7, len(shown) - 0.3)
        ax.set_xlabel("recovery, % of the baseline's score (bar: 95% interval)")
        if with_kl:
            ax2 = axes[1]
            kls = [k for k in (nf, max_kl) if k]
            for y, v in zip(rows, shown):
                if v.fidelity_mean_kl:
                    mark(ax2, v.fidelity_mean_kl, y, v)
                    kls.append(v.fidelity_mean_kl)
            ax2.set_xscale("log")
            ax2.set_xlim(min(kls) / 2.0, max(kls) * 2.0)
            if nf:
                ax2.axvline(nf, color="#7f7f7f", linestyle="--", linewidth=1.2, label=f"noise floor {nf:.2g}")
            if max_kl:
                ax2.axvline(max_kl, color="#8e44ad", linestyle=":", linewidth=1.5, label=f"KL limit {max_kl:.2g}")
            ax2.set_xlabel("mean KL to the baseline (log scale)")
        handles, labels = [], []
        for a in axes:
            h, lab = a.get_legend_handles_labels()
            handles += h
            labels += lab
        from matplotlib.lines import Line2D

        for filled, text in ((True, "passes the gate"), (False, "rejected")):
            handles.append(Line2D([], [], linestyle="none", marker="o", markersize=8, markeredgecolor="#333333",
                                  markerfacecolor="#333333" if filled else "white"))
            labels.append(text)
        fig.suptitle("Quality gate", x=0.02, ha="left", fontsize=11)
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
        return _fig_to_svg(fig, "plot-gate")


# step name -> the kind it is drawn as (in this order); anything else is "other" (register, build, ...)
_STEP_KINDS = {"compress": "compression", "engine_search": "engine search", "serve_start": "engine start",
               "evaluate": "evaluation", "evaluate_behaviour": "evaluation", "noise_floor": "noise floor",
               "loadtest": "load test"}


def timing_bars(report: Report) -> dict[str, dict[str, float]]:
    """Seconds per row and kind of step: a row per variant, in report order, from the "variant/step" timings (a
    step without a variant goes to a row "run"); the total is left out."""
    rows: dict[str, dict[str, float]] = {v.name: {} for v in report.variants}
    for key, sec in report.timings_s.items():
        if key == "total":
            continue
        who, _, step = key.rpartition("/")
        kind = _STEP_KINDS.get(step, "other")
        row = rows.setdefault(who or "run", {})
        row[kind] = row.get(kind, 0.0) + sec
    return {who: kinds for who, kinds in rows.items() if kinds}


def plot_timings(report: Report) -> str | None:
    """Where the run's time went: one stacked bar per variant, a segment per kind of step, its total at the end."""
    bars = timing_bars(report)
    if not bars:
        return None
    kinds = [k for k in dict.fromkeys([*_STEP_KINDS.values(), "other"]) if any(k in b for b in bars.values())]
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#8c8c8c"]
    names = list(bars)[::-1]  # the first variant on top
    with _rc():
        fig = _new_figure(7.2, 1.4 + 0.42 * len(names))
        ax = fig.add_subplot()
        left = [0.0] * len(names)
        for i, kind in enumerate(kinds):
            width = [bars[n].get(kind, 0.0) / 60.0 for n in names]
            ax.barh(names, width, left=left, color=palette[i % len(palette)], label=kind, edgecolor="white",
                    linewidth=0.5)
            left = [a + b for a, b in zip(left, width)]
        for y, total in enumerate(left):
            ax.text(total, y, f" {total:.1f} min", va="center", fontsize=8.5)
        ax.set_xlim(0, max(left) * 1.15)
        ax.set_xlabel("minutes")
        ax.set_title(f"Where the time went ({timing_total(report) / 60.0:.1f} min in all)", loc="left")
        fig.legend(loc="outside lower center", ncols=min(len(kinds), 4), fontsize=8)
        return _fig_to_svg(fig, "plot-timings")


# (id, title, draw, caption, what to say when there is nothing to plot)
PlotSpec = tuple[str, str, Callable[[Report], str | None], str, str]
PLOTS: list[PlotSpec] = [
    ("plot-pareto", "Quality vs cost", plot_pareto,
     "Each point is a variant. The dashed line joins the Pareto frontier (no other variant is both better and "
     "cheaper); the star marks the recommendation; the dotted line is the quality floor.",
     "No variant has both a quality score and a cost figure."),
    ("plot-gate", "Quality gate", plot_gate,
     "Each row is a compressed variant: its recovery with the 95% interval against the floor and the bound the "
     "interval must reach, and its mean KL to the baseline against the baseline's noise floor and the KL limit. "
     "A filled marker passes the gate; a hollow one is rejected.",
     "No compressed variant has a recovery or KL figure."),
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
    ("plot-timings", "Where the time went", plot_timings,
     "One bar per variant: the minutes of each kind of step (compression, engine start, evaluation, load test, "
     "...); the baseline's bar holds the noise floor. Steps a cache answered take no time.",
     "No timings were recorded."),
]
PLOT_IDS = tuple(pid for pid, *_ in PLOTS)


def render_plots(report: Report) -> dict[str, str | None]:
    """plot id -> inline <svg>, or None where there is nothing to plot. Exceptions propagate."""
    return {pid: fn(report) for pid, _, fn, _, _ in PLOTS}


def render_plots_safely(report: Report,
                        plots: Sequence[PlotSpec] | None = None) -> dict[str, str | None | Exception]:
    """Like render_plots, but a plot that raises is recorded as its exception rather than sinking the whole
    report (the page then says that plot could not be drawn, and why). `plots`: the specs to draw (PLOTS)."""
    out: dict[str, str | None | Exception] = {}
    for pid, _, fn, _, _ in (PLOTS if plots is None else plots):
        try:
            out[pid] = fn(report)
        except Exception as exc:  # noqa: BLE001 - shown on the page; every other figure stays usable
            out[pid] = exc
    return out
