"""The `packager monitor` terminal view: scrape an endpoint every interval, show a `MonitorSnapshot`."""
from __future__ import annotations

import time
from typing import Callable, Iterator

from packager.config import SLOConfig
from packager.core.formatting import num
from packager.monitor.scrape import Scrape, ScrapeError, fetch_metrics, scrape_client
from packager.monitor.snapshot import LatencyPercentilesMs, MonitorSnapshot, compute_snapshot


def _check_interval(interval_s: float) -> None:
    if not interval_s > 0:
        raise ScrapeError(f"--interval-s must be > 0 seconds, got {interval_s}.")


def take_snapshot(url: str, interval_s: float = 2.0, usd_per_hour: float | None = None,
                  slo: SLOConfig | None = None, timeout_s: float = 10.0,
                  sleep: Callable[[float], None] = time.sleep) -> MonitorSnapshot:
    """Scrape `url` twice, `interval_s` apart, and compute the snapshot between the two reads."""
    _check_interval(interval_s)
    with scrape_client() as client:
        prev = fetch_metrics(url, timeout_s=timeout_s, client=client)
        sleep(interval_s)
        cur = fetch_metrics(url, timeout_s=timeout_s, client=client)
    return compute_snapshot(prev, cur, usd_per_hour=usd_per_hour, slo=slo)


def iter_snapshots(url: str, interval_s: float, usd_per_hour: float | None = None, slo: SLOConfig | None = None,
                   timeout_s: float = 10.0, iterations: int | None = None,
                   sleep: Callable[[float], None] = time.sleep) -> Iterator[MonitorSnapshot | ScrapeError]:
    """Yield a snapshot per interval (between consecutive scrapes); a failed scrape yields its ScrapeError
    and the next good scrape starts a new pair, so a restarting endpoint does not end the view."""
    _check_interval(interval_s)
    prev: Scrape | None = None
    done = 0
    with scrape_client() as client:
        while iterations is None or done < iterations:
            try:
                cur = fetch_metrics(url, timeout_s=timeout_s, client=client)
            except ScrapeError as e:
                prev = None
                done += 1
                yield e
                sleep(interval_s)
                continue
            if prev is not None:
                done += 1
                try:
                    yield compute_snapshot(prev, cur, usd_per_hour=usd_per_hour, slo=slo)
                except ScrapeError as e:
                    yield e
            prev = cur
            if iterations is None or done < iterations:
                sleep(interval_s)


def _lat_row(name: str, w: LatencyPercentilesMs, limit_ms: float | None):
    from rich.text import Text

    cells = []
    for v, is_p95 in ((w.p50_ms, False), (w.p90_ms, False), (w.p95_ms, True), (w.p99_ms, False)):
        style = ""
        if is_p95 and v is not None and limit_ms is not None:
            style = "bold red" if v > limit_ms else "green"
        cells.append(Text(num(v), style=style))
    return [name, *cells, num(w.mean_ms), f"{w.observations:.0f}",
            "" if limit_ms is None else f"p95 ≤ {limit_ms:.0f}"]


def render_snapshot(snap: MonitorSnapshot, error: str | None = None):
    """A rich renderable: throughput and cost, then a latency table (window and since start)."""
    from rich.console import Group, RenderableType
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    w, life = snap.window, snap.lifetime
    variants = ", ".join(" ".join(f"{k}={v}" for k, v in d.items()) for d in snap.variants) or "(no series yet)"
    head = Text.assemble(("endpoint ", "dim"), snap.metrics_url, ("  source ", "dim"), snap.source,
                         ("  variants ", "dim"), variants,
                         ("  window ", "dim"), f"{w.elapsed_s:.1f}s",
                         ("  at ", "dim"), time.strftime("%H:%M:%S", time.localtime(snap.scraped_at_s)))

    # Every column folds: on a narrow console a long figure breaks over two lines, it is never cut to "…".
    t = Table(show_header=True, header_style="bold", expand=False, box=None, pad_edge=False)
    t.add_column("throughput", overflow="fold")
    t.add_column("now", justify="right", overflow="fold")
    t.add_column("since start", justify="right", overflow="fold")
    t.add_row("requests/s", num(w.request_rate_per_s, ".2f"), num(life.requests_total, ".0f", " req"))
    err_style = "bold red" if (w.error_ratio or 0) > 0.05 else ""
    err_pct = None if w.error_ratio is None else w.error_ratio * 100
    t.add_row("errors", Text(num(err_pct, ".1f", " %"), style=err_style), num(life.errors_total, ".0f", " err"))
    t.add_row("output tokens/s", num(w.output_tokens_per_s, ".1f"), num(life.output_tokens_total, ".0f", " tok"))
    t.add_row("input tokens/s", num(w.input_tokens_per_s, ".1f"), num(life.input_tokens_total, ".0f", " tok"))
    price = ("no price: pass --usd-per-hour" if snap.usd_per_hour is None
             else f"at ${snap.usd_per_hour:.4f}/h ({snap.usd_per_hour_from})")
    cost = ("— (no output tokens in the window)"
            if snap.usd_per_hour is not None and snap.usd_per_million_output_tokens is None
            else num(snap.usd_per_million_output_tokens, ".3f"))
    t.add_row("USD / 1M output tokens", cost, price)

    lat = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for c in ("latency (ms)", "p50", "p90", "p95", "p99", "mean", "n", "SLO"):
        lat.add_column(c, justify="left" if c in ("latency (ms)", "SLO") else "right", overflow="fold")
    lat.add_row(*_lat_row("TTFT (window)", w.ttft, snap.slo.ttft_ms_p95_limit))
    lat.add_row(*_lat_row("TPOT (window)", w.tpot, snap.slo.tpot_ms_p95_limit))
    lat.add_row(*_lat_row("E2E  (window)", w.e2e, None))
    lat.add_row(*_lat_row("TTFT (since start)", life.ttft, snap.slo.ttft_ms_p95_limit), style="dim")
    lat.add_row(*_lat_row("TPOT (since start)", life.tpot, snap.slo.tpot_ms_p95_limit), style="dim")
    lat.add_row(*_lat_row("E2E  (since start)", life.e2e, None), style="dim")

    parts: list[RenderableType] = [head, Text(""), t, Text(""), lat]
    if w.ttft.observations == 0:
        parts.append(Text("no request finished in this window: percentiles need traffic", style="yellow"))
    if error:
        parts.append(Text(f"last scrape failed: {error}", style="bold red"))
    return Panel(Group(*parts), title="packager monitor", border_style="cyan")


def run_live(url: str, interval_s: float, usd_per_hour: float | None = None, slo: SLOConfig | None = None,
             iterations: int | None = None, console=None, timeout_s: float = 10.0) -> MonitorSnapshot | None:
    """The live terminal view (rich Live); returns the last snapshot when `iterations` runs out."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = console or Console()
    last: MonitorSnapshot | None = None
    waiting = Text(f"scraping {url} every {interval_s:g}s ... (Ctrl-C to stop)", style="dim")
    with Live(waiting, console=console, refresh_per_second=4, transient=False) as live:
        for item in iter_snapshots(url, interval_s, usd_per_hour=usd_per_hour, slo=slo, iterations=iterations,
                                   timeout_s=timeout_s):
            if isinstance(item, ScrapeError):
                live.update(render_snapshot(last, error=str(item)) if last
                            else Text(f"scrape failed: {item}", style="bold red"))
            else:
                last = item
                live.update(render_snapshot(item))
    return last
