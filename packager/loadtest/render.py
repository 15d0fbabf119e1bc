"""Renderers of a LoadTestResult: a rich summary for the terminal and a sweep plot. They only read the result."""
from __future__ import annotations

from pathlib import Path

from packager.core.formatting import DASH, fmt_usd, ms, usd_hour
from packager.loadtest.result import LatencySummary, LoadTestResult


def _triple(s: LatencySummary) -> str:
    return f"{ms(s.p50_ms)} / {ms(s.p90_ms)} / {ms(s.p99_ms)}"


def _usd(x: float | None, hourly: bool = False) -> str:
    if x is None:
        return DASH
    return "$" + (usd_hour(x) if hourly else fmt_usd(x))


def _table(title: str):
    """Compact (no frame, one space between columns: nine figures fit an 80-column console); its columns fold,
    so on a narrower console a long figure (1898.12 req/s) breaks over two lines and is never cut to "1898.…"."""
    from rich import box
    from rich.table import Table

    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                 collapse_padding=True)


def _prompt_stats_line(s: dict) -> str:
    """'Requests from <source>: N unique, input ~p50/p90/max words, max_tokens p50/p90/max' (markup-escaped)."""
    from rich.markup import escape

    def trio(d: dict | None) -> str:
        d = d or {}
        return "/".join(DASH if d.get(k) is None else f"{d[k]:.0f}" for k in ("p50", "p90", "max"))

    line = (f"Requests from {s.get('source', 'the plan')}: {s.get('count', 0)} unique, input "
            f"~{trio(s.get('input_words'))} words, max_tokens {trio(s.get('max_tokens'))}")
    if s.get("skipped_without_user_turn"):
        line += f" ({s['skipped_without_user_turn']} conversation(s) without a user turn skipped)"
    return escape(line + ".")


def summary_renderables(r: LoadTestResult) -> list:
    """Rich renderables: the per-phase table, then cost, generator and warnings."""
    from rich.text import Text

    t = _table(f"Load test of {r.model} at {r.target_url}")
    for col in ("load", "sent", "ok", "failed", "dropped", "req/s", "out tok/s", "goodput req/s", "SLO met"):
        t.add_column(col, justify="left" if col == "load" else "right", no_wrap=False, overflow="fold")
    lat = _table("Latency (ms), p50 / p90 / p99")
    for col in ("load", "TTFT", "TPOT", "ITL", "E2E"):
        lat.add_column(col, justify="left" if col == "load" else "right", no_wrap=False, overflow="fold")
    for p in r.phases:
        mark = "[green]yes[/]" if p.meets_slo else "[red]no[/]"
        t.add_row(p.label, str(p.requests_sent), str(p.requests_ok), str(p.requests_failed), str(p.dropped_arrivals),
                  f"{p.request_throughput_per_s:.2f}", f"{p.output_token_throughput_per_s:.1f}",
                  f"{p.goodput_requests_per_s:.2f}", f"{mark} {p.slo_attainment_fraction:.0%}")
        lat.add_row(p.label, _triple(p.ttft), _triple(p.tpot), _triple(p.itl), _triple(p.e2e))
    out: list = [t, lat]
    fmt = {"completion": "raw prompts through /v1/completions (no chat template)",
           "chat": "chat messages through /v1/chat/completions"}.get(r.prompt_format or "chat")
    lines = [f"Requests sent as {fmt}.",
             f"SLOs: TTFT <= {r.slo.ttft_ms:g} ms, TPOT <= {r.slo.tpot_ms:g} ms; a load meets them when "
             f">= {r.slo_attainment_target:.0%} of its requests do. Summary: {r.summary_basis}."]
    if r.prompt_stats:
        lines.append(_prompt_stats_line(r.prompt_stats))
    errs = {k: v for p in r.phases for k, v in p.errors_by_kind.items()}
    if errs:
        lines.append("Errors by kind: " + ", ".join(f"{k}={sum(p.errors_by_kind.get(k, 0) for p in r.phases)}"
                                                    for k in sorted(errs)))
    retried = sum(p.requests_retried for p in r.phases)
    if retried:
        lines.append(f"Retried once on a fresh connection: {retried} request(s) whose pooled keep-alive connection "
                     "the server had closed while idle (no answer byte arrived); not counted as failures.")
    warm = sum(p.requests_warmup_excluded for p in r.phases)
    if warm:
        lines.append(f"Warm-up: {warm} request(s) started in the first {r.config.get('warmup_s', 0):g} s of a phase "
                     "were sent and left out of every figure.")
    firsts = sum(p.requests_first_excluded for p in r.phases)
    if firsts:
        lines.append(f"Warm-up: the first request of each closed-loop user ({firsts} in all) was sent, counted in the "
                     "token rates, and left out of the latencies and the SLO verdicts (the users start one by one "
                     f"over the first {r.config.get('ramp_fraction', 0):.0%} of each phase).")
    if r.sweep is not None:
        unit = ("requests/s offered, open loop" if r.sweep.mode == "rate" else "concurrent users, closed loop")
        lines.append(f"Sweep mode {r.sweep.mode}: each step's load is {unit}.")
        hl = r.sweep.highest_load_meeting_slo
        lines.append(f"Highest load meeting the SLOs: {hl if hl else 'none'}; peak output throughput "
                     f"{r.sweep.peak_output_token_throughput_per_s:.1f} tok/s.")
    if r.knee is not None:
        lines.append(knee_line(r))
    if r.cost is not None:
        c = r.cost
        where = f"{c.instance}; " if c.instance else ""
        lines.append(f"Price: {_usd(c.usd_per_hour, hourly=True)}/h ({where}{c.price_source}); "
                     f"utilisation assumed {c.utilisation_fraction:.0%}.")
        for name, pt in (("measured", c.at_measured_throughput), ("SLO-limited", c.at_slo_limited_throughput)):
            if pt is None:
                lines.append(f"  {name}: no load met the SLOs, no SLO-limited cost")
                continue
            lines.append(f"  {name} ({pt.output_tokens_per_s:.1f} out tok/s, {pt.input_tokens_per_s:.1f} in tok/s): "
                         f"{_usd(pt.usd_per_million_output_tokens)} per 1M output tokens, "
                         f"{_usd(pt.usd_per_million_input_tokens)} per 1M input tokens")
    if r.telemetry is not None:
        from packager.loadtest.telemetry import telemetry_line

        lines.append(telemetry_line(r.telemetry))
    g = r.generator
    cpu = "-" if g.cpu_fraction_of_core_max is None else f"{g.cpu_fraction_of_core_max:.0%}"
    lag = "-" if g.dispatch_lag_ms_p99 is None else f"{g.dispatch_lag_ms_p99:.1f} ms"
    lines.append(f"Generator: busiest locust process {cpu} of a core (limit {g.cpu_limit_fraction:.0%}), "
                 f"dispatch lag p99 {lag}" + (" [bold red]BOTTLENECK SUSPECTED[/]" if g.bottleneck_suspected else ""))
    out.append(Text.from_markup("\n".join(lines)))
    if r.warnings:
        out.append(Text.from_markup("\n".join(f"[yellow]warning:[/] {w}" for w in r.warnings)))
    return out


def knee_line(r: LoadTestResult) -> str:
    """'Capacity at the SLO (search): 11 users (12 missed; 4 probes, 40 s), 120.3 output tok/s, $0.41 per 1M.'"""
    k = r.knee
    assert k is not None
    unit = "users" if k.mode == "concurrency" else "requests/s"
    n = sum(1 for p in k.probes if p.source == "probe")
    if k.knee is None:
        return f"Capacity at the SLO (search): none; the lowest load tried missed the SLOs ({k.stopped_because})."
    missed = "none missed" if k.first_failing is None else f"{k.first_failing:g} missed"
    cost = ("" if k.usd_per_million_output_tokens_at_knee is None
            else f", {_usd(k.usd_per_million_output_tokens_at_knee)} per 1M output tokens")
    return (f"Capacity at the SLO (search): {k.knee:g} {unit} ({missed}; {n} probes, {k.dispatch_s:g} s; "
            f"{k.stopped_because}), {k.output_tokens_per_s_at_knee or 0:.1f} output tok/s{cost}.")


def plot_sweep(r: LoadTestResult, path: Path) -> None:
    """Throughput and goodput (left) and TTFT/TPOT p90 with the SLO limits (right) against the load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from packager.loadtest.metrics import load_value

    x = [load_value(p) for p in r.phases]
    unit = "requests/s offered" if r.sweep and r.sweep.mode == "rate" else "concurrent users"
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(x, [p.request_throughput_per_s for p in r.phases], "o-", label="throughput (req/s)")
    a.plot(x, [p.goodput_requests_per_s for p in r.phases], "s--", label="goodput (req/s)")
    a.set_xlabel(unit)
    a.set_ylabel("requests/s")
    a.grid(alpha=0.3)
    a.legend()
    b.plot(x, [p.ttft.p90_ms for p in r.phases], "o-", label="TTFT p90 (ms)")
    b.plot(x, [p.tpot.p90_ms for p in r.phases], "s-", label="TPOT p90 (ms)")
    b.axhline(r.slo.ttft_ms, color="C0", ls=":", label=f"TTFT SLO {r.slo.ttft_ms:g} ms")
    b.axhline(r.slo.tpot_ms, color="C1", ls=":", label=f"TPOT SLO {r.slo.tpot_ms:g} ms")
    b.set_yscale("log")
    _mark_knee(r, a, b)
    b.set_xlabel(unit)
    b.set_ylabel("ms")
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.suptitle(f"{r.model}: load sweep" + (f", capacity at the SLO {r.knee.knee:g}" if r.knee and r.knee.knee
                                               else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mark_knee(r: LoadTestResult, a, b) -> None:
    """The capacity search's probes (met: filled, missed: open) and the knee, a vertical line on both panels."""
    k = r.knee
    if k is None:
        return
    probes = [p for p in k.probes if p.source == "probe"]
    for p in probes:
        style = {"color": "C2" if p.meets_slo else "C3", "mfc": None if p.meets_slo else "none"}
        b.plot([p.load], [p.ttft_ms_p95 or float("nan")], "D", ms=6, **style)
    if probes:
        b.plot([], [], "D", color="C2", label="knee probe: met the SLOs")
        b.plot([], [], "D", color="C3", mfc="none", label="knee probe: missed")
    if k.knee:
        for ax in (a, b):
            ax.axvline(k.knee, color="C2", ls="--", lw=1.2)
        a.plot([], [], color="C2", ls="--", label=f"knee: {k.knee:g}")
        a.legend()
        b.legend(fontsize=8)
