"""CLI commands of packager.monitor: `packager monitor` and `packager canary`; packager.cli.app adds them to the
top-level `packager` command. Heavy libraries are imported inside the commands."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from packager.cli.guard import console
from packager.cli.options import (
    api_key_env_flag,
    api_key_file_flag,
    ca_bundle_flag,
    header_flag,
    insecure_flag,
    run_with_access,
)


def monitor(
    url: str = typer.Argument(..., help="Endpoint base URL (http://host:3000) or its /metrics URL."),
    interval_s: float = typer.Option(2.0, "--interval-s", help="Seconds between scrapes; rates and percentiles are "
                                     "over this window."),
    once: bool = typer.Option(False, "--once", help="Scrape twice, print one snapshot and exit."),
    usd_per_hour: Optional[float] = typer.Option(None, "--usd-per-hour", help="Hourly price of the endpoint; default: "
                                                 "its packager_usd_per_hour gauge."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one object; without --once, one line per "
                                 "interval)."),
    ttft_slo_ms: Optional[float] = typer.Option(None, "--ttft-slo-ms", help="TTFT p95 limit shown in the view "
                                                "(default: SLOConfig, 2000)."),
    tpot_slo_ms: Optional[float] = typer.Option(None, "--tpot-slo-ms", help="TPOT p95 limit shown in the view "
                                                "(default: SLOConfig, 250)."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Stop after this many intervals (default: "
                                             "until Ctrl-C)."),
    timeout_s: float = typer.Option(10.0, "--timeout-s", help="Longest a scrape may take, connection to last byte; a "
                                    "slower one is a failed scrape."),
    api_key_env: Optional[str] = api_key_env_flag(),
    api_key_file: Optional[Path] = api_key_file_flag(),
    header: list[str] = header_flag(),
    ca_bundle: Optional[Path] = ca_bundle_flag(),
    insecure: bool = insecure_flag(),
) -> None:
    """Live view of an endpoint: request rate, tokens/s, TTFT/TPOT/E2E percentiles, errors, USD per 1M output tokens.

    Reads a packager bento's packager_* series, or a bare vLLM server's vllm:* series. A bento whose /metrics
    asks for a token gets PACKAGER_METRICS_TOKEN.
    """
    from packager.config import SLOConfig
    from packager.monitor.scrape import ScrapeError

    def go() -> None:
        if usd_per_hour is not None and usd_per_hour < 0:
            raise ScrapeError(f"--usd-per-hour must be >= 0, got {usd_per_hour}.")
        if iterations is not None and iterations < 1:
            raise ScrapeError(f"--iterations must be >= 1, got {iterations}.")
        if not timeout_s > 0:
            raise ScrapeError(f"--timeout-s must be > 0 seconds, got {timeout_s}.")
        slo_kw = {k: v for k, v in (("ttft_ms", ttft_slo_ms), ("tpot_ms", tpot_slo_ms)) if v is not None}
        try:
            slo = SLOConfig(**slo_kw)
        except Exception as e:
            raise ScrapeError(f"Bad SLO limit: {e}") from None
        if once:
            from packager.monitor.live import render_snapshot, take_snapshot
            from packager.monitor.snapshot import snapshot_json

            snap = take_snapshot(url, interval_s, usd_per_hour=usd_per_hour, slo=slo, timeout_s=timeout_s)
            if as_json:
                typer.echo(snapshot_json(snap))
            else:
                from rich.console import Console

                Console().print(render_snapshot(snap))
            return
        if as_json:
            from packager.monitor.live import iter_snapshots

            printed = 0
            for item in iter_snapshots(url, interval_s, usd_per_hour=usd_per_hour, slo=slo, iterations=iterations,
                                       timeout_s=timeout_s):
                if isinstance(item, ScrapeError):
                    console.print(f"[red]scrape failed:[/] {item}", highlight=False)
                else:
                    typer.echo(item.model_dump_json())
                    printed += 1
            if not printed:
                raise ScrapeError(f"No snapshot of {url} in {iterations} intervals: every scrape failed (see above).")
            return
        from packager.monitor.live import run_live

        last = run_live(url, interval_s, usd_per_hour=usd_per_hour, slo=slo, iterations=iterations,
                        timeout_s=timeout_s)
        if last is None:
            raise ScrapeError(f"No snapshot of {url} in {iterations} intervals: every scrape failed (see above).")

    run_with_access(go, api_key_env, api_key_file, header, ca_bundle, insecure)


def canary(
    url: str = typer.Argument(..., help="Endpoint base URL serving /v1/chat/completions (http://host:3000)."),
    suite: str = typer.Option("default", "--suite", help="Built-in suite name or a JSONL suite file."),
    interval_s: float = typer.Option(60.0, "--interval-s", help="Seconds from the start of one run to the start of the "
                                     "next."),
    iterations: int = typer.Option(0, "--iterations", help="Runs before exiting; 0 runs until Ctrl-C."),
    port: int = typer.Option(9490, "--port", help="Port of the canary's own /metrics (0 picks a free port)."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address the canary's /metrics listens on."),
    max_items: int = typer.Option(16, "--max-items", help="Items taken from the suite (round-robin over its "
                                  "categories)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name to ask; default: the first of /v1/models."),
    min_pass_ratio: float = typer.Option(0.5, "--min-pass-ratio", help="Exported as packager_canary_min_pass_ratio; "
                                         "the alert fires below it. Set it from the release evaluation."),
    pass_score: float = typer.Option(0.5, "--pass-score", help="An item passes when its score is at least this (graded "
                                     "scorers: f1, rouge_l)."),
    timeout_s: float = typer.Option(60.0, "--timeout-s", help="Per-request timeout in seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print each run's full result as one JSON line."),
    prompt_format: str = typer.Option("chat", "--prompt-format", help="chat (/v1/chat/completions) or completion "
                                      "(raw prompts through /v1/completions, for a base model without a chat "
                                      "template)."),
    api_key_env: Optional[str] = api_key_env_flag(),
    api_key_file: Optional[Path] = api_key_file_flag(),
    header: list[str] = header_flag(),
    ca_bundle: Optional[Path] = ca_bundle_flag(),
    insecure: bool = insecure_flag(),
) -> None:
    """Quality canary: send a small golden set at an interval and export its pass rate on /metrics. Sends the
    API key (--api-key-env/--api-key-file, else PACKAGER_API_KEY) as `Authorization: Bearer` and the --header
    headers."""

    def go() -> None:
        from packager.errors import ConfigError
        from packager.evaluate.suite import load_suite
        from packager.monitor.canary import CanaryExporter, CanaryResult, run_canary, select_canary_items
        from packager.monitor.scrape import metrics_url

        metrics_url(url)  # validates the scheme
        if prompt_format not in ("chat", "completion"):
            raise ConfigError(f"--prompt-format must be chat or completion, got {prompt_format!r}.")
        s = load_suite(suite)
        items = select_canary_items(s.items, max_items)
        exporter = CanaryExporter(endpoint=url.rstrip("/"), suite=s.name, min_pass_ratio=min_pass_ratio)
        bound = exporter.serve(port, host)
        console.print(f"canary: {len(items)} items of suite {s.name!r} against {url} every {interval_s:g}s; "
                      f"metrics on http://{host}:{bound}/metrics", highlight=False)

        def show(r: CanaryResult) -> None:
            if as_json:
                typer.echo(r.model_dump_json())
            style = "green" if r.pass_ratio >= min_pass_ratio else "bold red"
            console.print(f"[{style}]pass {r.pass_ratio:.0%}[/] ({r.n_pass} pass, {r.n_fail} fail, {r.n_error} error) "
                          f"model={r.model} in {r.wall_time_s:.1f}s", highlight=False)
            for it in r.items:
                if it.result == "error":
                    console.print(f"  [red]error[/] {it.id}: {it.error}", highlight=False)
                    break

        try:
            run_canary(url, items, exporter, interval_s=interval_s, iterations=iterations or None, model=model,
                       timeout_s=timeout_s, pass_score=pass_score, on_result=show, prompt_format=prompt_format)
        finally:
            exporter.close()

    run_with_access(go, api_key_env, api_key_file, header, ca_bundle, insecure)
