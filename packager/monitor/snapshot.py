"""What `packager monitor` shows: one `MonitorSnapshot` computed from two scrapes of an endpoint.

Two kinds of endpoint are understood, by the series they expose (`SOURCES`, looked up by name):

* `packager`: a packager bento (`packager_ttft_seconds`, `packager_output_tokens_total`,
  `packager_requests_total{outcome}`, `packager_usd_per_hour`, ...);
* `vllm`: a bare vLLM OpenAI server (`vllm:time_to_first_token_seconds`, `vllm:generation_tokens_total`,
  `http_requests_total{handler,status}` from its HTTP instrumentation, ...).

A bento exposes both (it merges vLLM's series into its own page); the packager series win.

`window` figures are between the two scrapes (rates and percentiles of what happened in the interval);
`lifetime` figures are since the endpoint started (counter totals and percentiles of the cumulative
histograms, which equal Prometheus's `histogram_quantile(q, sum by (le) (<name>_bucket))`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict

from packager.config import SLOConfig
from packager.core.plugins import Registry
from packager.monitor.scrape import (
    Scrape,
    ScrapeError,
    finite_or_none,
    histogram_buckets,
    histogram_buckets_increase,
    histogram_quantile,
    rate_per_s,
    series_increase,
    usd_per_million_output_tokens,
)

QUANTILES = (0.5, 0.9, 0.95, 0.99)
# Outcomes of packager_requests_total (packager.serve.metrics.OUTCOMES: success, client_error, server_error,
# timeout, rejected, cancelled) that are errors of the endpoint: it failed (5xx), answered too late (504) or
# shed the request (429). client_error (4xx: the caller sent a bad request) and cancelled (the caller went
# away) are not. The recording rule packager:request_errors:rate5m uses the same list.
ERROR_OUTCOMES = ("server_error", "timeout", "rejected")


def is_error_outcome(outcome: str) -> bool:
    return outcome in ERROR_OUTCOMES
INFERENCE_HANDLERS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")

Match = dict[str, "str | tuple[str, ...] | Callable[[str], bool]"]


@dataclass(frozen=True)
class SeriesSource:
    """Which sample names and label filters give each figure for one kind of endpoint."""

    name: str
    detect: str  # the family whose presence identifies this kind of endpoint
    requests_total: str | None
    requests_match: Match | None
    errors_match: Match | None
    input_tokens_total: str
    output_tokens_total: str
    ttft_histogram: str
    tpot_histogram: str
    e2e_histogram: str
    usd_per_hour_gauge: str | None
    variant_labels: tuple[str, ...]
    fallback_requests_total: str | None = None  # when requests_total is absent (no error figures then)
    fallback_tpot_histogram: str | None = None  # when tpot_histogram is absent


SOURCES: Registry[SeriesSource] = Registry("metrics source")


def _register(src: SeriesSource) -> SeriesSource:
    SOURCES.register(src.name)(src)
    return src


PACKAGER_SOURCE = _register(SeriesSource(
    name="packager",
    detect="packager_output_tokens",
    requests_total="packager_requests_total",
    requests_match=None,
    errors_match={"outcome": ERROR_OUTCOMES},
    input_tokens_total="packager_input_tokens_total",
    output_tokens_total="packager_output_tokens_total",
    ttft_histogram="packager_ttft_seconds",
    tpot_histogram="packager_tpot_seconds",
    e2e_histogram="packager_e2e_seconds",
    usd_per_hour_gauge="packager_usd_per_hour",
    variant_labels=("model", "registry_version", "backend", "hardware"),
))

VLLM_SOURCE = _register(SeriesSource(
    name="vllm",
    detect="vllm:generation_tokens",
    requests_total="http_requests_total",
    requests_match={"handler": INFERENCE_HANDLERS},
    errors_match={"handler": INFERENCE_HANDLERS, "status": ("5xx",)},
    input_tokens_total="vllm:prompt_tokens_total",
    output_tokens_total="vllm:generation_tokens_total",
    ttft_histogram="vllm:time_to_first_token_seconds",
    tpot_histogram="vllm:request_time_per_output_token_seconds",
    e2e_histogram="vllm:e2e_request_latency_seconds",
    usd_per_hour_gauge=None,
    variant_labels=("model_name",),
    fallback_requests_total="vllm:request_success_total",
    fallback_tpot_histogram="vllm:inter_token_latency_seconds",
))


def detect_source(scrape: Scrape) -> SeriesSource:
    """The packager series when present, else vLLM's; ScrapeError naming what was found otherwise."""
    for name in ("packager", "vllm"):
        src = SOURCES.get(name)
        if scrape.has_family(src.detect) or scrape.series(src.output_tokens_total):
            return src
    found = sorted(scrape.samples)
    some = ", ".join(found[:8]) + (" ..." if len(found) > 8 else "")
    raise ScrapeError(
        f"{scrape.url or 'The metrics page'} exposes neither packager_* nor vllm:* series "
        f"({len(found)} series found{': ' + some if found else ''}). Point `packager monitor` at a packager "
        "bento (its /metrics) or a vLLM OpenAI server."
    )


class LatencyPercentilesMs(BaseModel):
    """Percentiles in milliseconds of one latency histogram; None where there was no observation."""

    model_config = ConfigDict(extra="forbid")
    observations: float
    mean_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class WindowStats(BaseModel):
    """What happened between the two scrapes."""

    model_config = ConfigDict(extra="forbid")
    elapsed_s: float
    request_rate_per_s: float | None
    error_rate_per_s: float | None
    error_ratio: float | None
    input_tokens_per_s: float | None
    output_tokens_per_s: float | None
    ttft: LatencyPercentilesMs
    tpot: LatencyPercentilesMs
    e2e: LatencyPercentilesMs


class LifetimeStats(BaseModel):
    """Since the endpoint started: counter totals and percentiles of the cumulative histograms."""

    model_config = ConfigDict(extra="forbid")
    requests_total: float | None
    errors_total: float | None
    input_tokens_total: float | None
    output_tokens_total: float | None
    ttft: LatencyPercentilesMs
    tpot: LatencyPercentilesMs
    e2e: LatencyPercentilesMs


class SLOStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttft_ms_p95_limit: float
    tpot_ms_p95_limit: float
    ttft_ok: bool | None  # None: no request in the window
    tpot_ok: bool | None


class MonitorSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = 1
    metrics_url: str
    source: Literal["packager", "vllm"]
    scraped_at_s: float
    variants: list[dict[str, str]]
    usd_per_hour: float | None
    usd_per_hour_from: Literal["flag", "endpoint", "none"]
    usd_per_million_output_tokens: float | None
    window: WindowStats
    lifetime: LifetimeStats
    slo: SLOStatus


def _percentiles(buckets: list[tuple[float, float]], sum_s: float | None) -> LatencyPercentilesMs:
    n = buckets[-1][1] if buckets else 0.0
    vals = {}
    for q in QUANTILES:
        v = finite_or_none(histogram_quantile(q, buckets)) if n > 0 else None
        vals[q] = None if v is None else v * 1000.0
    mean = sum_s / n * 1000.0 if (sum_s is not None and n > 0) else None
    return LatencyPercentilesMs(observations=n, mean_ms=finite_or_none(mean), p50_ms=vals[0.5], p90_ms=vals[0.9],
                                p95_ms=vals[0.95], p99_ms=vals[0.99])


def _hist_window(prev: Scrape, cur: Scrape, base: str) -> LatencyPercentilesMs:
    b = histogram_buckets_increase(prev.series(base + "_bucket"), cur.series(base + "_bucket"))
    s = series_increase(prev.series(base + "_sum"), cur.series(base + "_sum")) if cur.series(base + "_sum") else None
    return _percentiles(b, s)


def _hist_lifetime(cur: Scrape, base: str) -> LatencyPercentilesMs:
    return _percentiles(histogram_buckets(cur.series(base + "_bucket")), cur.total(base + "_sum"))


def _variants(cur: Scrape, src: SeriesSource) -> list[dict[str, str]]:
    seen: dict[tuple, dict[str, str]] = {}
    for ls in cur.series(src.output_tokens_total):
        d = dict(ls)
        v = {k: d[k] for k in src.variant_labels if k in d}
        seen[tuple(sorted(v.items()))] = v
    return [seen[k] for k in sorted(seen)]


def endpoint_usd_per_hour(cur: Scrape, src: SeriesSource) -> float | None:
    """The endpoint's own price gauge: the largest sample (worker processes may each export a copy)."""
    if src.usd_per_hour_gauge is None:
        return None
    s = cur.series(src.usd_per_hour_gauge)
    return max(s.values()) if s else None


def compute_snapshot(prev: Scrape, cur: Scrape, usd_per_hour: float | None = None,
                     slo: SLOConfig | None = None, source: str | None = None) -> MonitorSnapshot:
    """Figures between two scrapes of the same endpoint (prev taken before cur)."""
    slo = slo or SLOConfig()
    src = SOURCES.get(source) if source else detect_source(cur)
    elapsed = cur.taken_at_s - prev.taken_at_s
    if elapsed <= 0:
        raise ScrapeError(f"The two scrapes are {elapsed:.3f}s apart; the second must be later than the first.")

    def window_rate(name: str | None, match=None) -> float | None:
        if name is None:
            return None
        c = cur.series(name, match)
        if not c and not cur.has_family(name.removesuffix("_total")):
            return None
        return rate_per_s(series_increase(prev.series(name, match), c), elapsed)

    req_name, req_match, err_match = src.requests_total, src.requests_match, src.errors_match
    if req_name is not None and not cur.series(req_name, req_match) and src.fallback_requests_total:
        req_name, req_match, err_match = src.fallback_requests_total, None, None
    req_rate = window_rate(req_name, req_match)
    err_rate = window_rate(req_name, err_match) if err_match is not None else None
    if err_rate is None and err_match is not None and req_rate is not None:
        err_rate = 0.0  # the error outcomes have not happened yet: no series for them
    err_ratio = err_rate / req_rate if (err_rate is not None and req_rate) else None
    out_rate = window_rate(src.output_tokens_total)
    tpot_name = src.tpot_histogram
    if not cur.series(tpot_name + "_bucket") and src.fallback_tpot_histogram:
        tpot_name = src.fallback_tpot_histogram

    price: float | None
    if usd_per_hour is not None:
        price, price_from = float(usd_per_hour), "flag"
    else:
        price = endpoint_usd_per_hour(cur, src)
        price_from = "endpoint" if price is not None else "none"

    window = WindowStats(
        elapsed_s=elapsed, request_rate_per_s=req_rate, error_rate_per_s=err_rate, error_ratio=err_ratio,
        input_tokens_per_s=window_rate(src.input_tokens_total), output_tokens_per_s=out_rate,
        ttft=_hist_window(prev, cur, src.ttft_histogram), tpot=_hist_window(prev, cur, tpot_name),
        e2e=_hist_window(prev, cur, src.e2e_histogram),
    )
    errors_total = cur.total(req_name, err_match) if (req_name and err_match is not None) else None
    if errors_total is None and err_match is not None and cur.series(req_name or "", req_match):
        errors_total = 0.0
    lifetime = LifetimeStats(
        requests_total=cur.total(req_name, req_match) if req_name else None, errors_total=errors_total,
        input_tokens_total=cur.total(src.input_tokens_total), output_tokens_total=cur.total(src.output_tokens_total),
        ttft=_hist_lifetime(cur, src.ttft_histogram), tpot=_hist_lifetime(cur, tpot_name),
        e2e=_hist_lifetime(cur, src.e2e_histogram),
    )
    ttft95, tpot95 = window.ttft.p95_ms, window.tpot.p95_ms
    return MonitorSnapshot(
        metrics_url=cur.url, source=src.name, scraped_at_s=cur.taken_at_s, variants=_variants(cur, src),
        usd_per_hour=price, usd_per_hour_from=price_from,
        usd_per_million_output_tokens=usd_per_million_output_tokens(price, out_rate),
        window=window, lifetime=lifetime,
        slo=SLOStatus(ttft_ms_p95_limit=slo.ttft_ms, tpot_ms_p95_limit=slo.tpot_ms,
                      ttft_ok=None if ttft95 is None else ttft95 <= slo.ttft_ms,
                      tpot_ok=None if tpot95 is None else tpot95 <= slo.tpot_ms),
    )


def snapshot_json(snap: MonitorSnapshot) -> str:
    return snap.model_dump_json(indent=2)
