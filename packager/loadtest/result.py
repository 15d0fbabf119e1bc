"""The load-test result: data first; every figure is named with its unit. Renderers only read it."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from packager.config import PricingConfig, SLOConfig

RESULT_SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatencySummary(_Strict):
    """Percentiles with linear interpolation between closest ranks (numpy's default, as vLLM's benchmark)."""

    count: int = 0
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None


class PhaseResult(_Strict):
    index: int
    label: str
    load: dict[str, float]  # {"requests_per_s": 4.0} (open loop) or {"users": 8} (closed loop)
    dispatch_s: float  # time requests were being sent
    duration_s: float  # phase start -> its last completion: the denominator of every rate below
    requests_sent: int
    requests_ok: int
    requests_failed: int
    requests_missing_usage: int  # answered without a `usage` block: no token counts for them
    dropped_arrivals: int  # open loop: arrivals that found max_in_flight requests outstanding
    request_cap_reached: bool  # max_requests was reached: the phase stopped sending early (see dispatch_s)
    cancelled_at_drain_timeout: int
    errors_by_kind: dict[str, int]
    request_throughput_per_s: float  # successful requests / duration_s
    input_tokens_total: int
    output_tokens_total: int
    input_tokens_mean: float | None
    output_tokens_mean: float | None
    input_token_throughput_per_s: float
    output_token_throughput_per_s: float
    ttft: LatencySummary
    itl: LatencySummary
    tpot: LatencySummary
    e2e: LatencySummary
    dispatch_lag: LatencySummary  # open loop: actual send time - scheduled arrival time (generator health)
    goodput_requests_per_s: float  # successful requests meeting every SLO / duration_s
    # tokens of those requests / duration_s, plus what the warm-up's requests that met every SLO generated inside
    # the measured time (as the token throughputs count the warm-up's): equal to the throughput when all met it
    goodput_output_tokens_per_s: float
    goodput_input_tokens_per_s: float
    slo_attainment_fraction: float  # requests meeting every SLO / (sent + dropped arrivals)
    meets_slo: bool  # slo_attainment_fraction >= slo_attainment_target
    # Sent again once on a fresh connection after a pooled keep-alive connection turned out closed before any
    # answer byte (the server had closed it while idle): counted here, not as failures.
    requests_retried: int = 0
    # Started within the phase's first warmup_s seconds: sent, recorded, left out of every figure above.
    requests_warmup_excluded: int = 0
    # Each closed-loop user's first request, its warm-up where the users start over a ramp: sent, recorded, left out
    # of the latencies and the SLO verdict, counted in the token rates by what it generated in the measured time.
    requests_first_excluded: int = 0
    # How near the SLO the phase ran: max(TTFT / slo.ttft_ms, TPOT / slo.tpot_ms) of the request at the attainment
    # target's rank (failed requests and dropped arrivals ranked last). At most 1 exactly when the phase meets the
    # SLOs; the capacity search interpolates it to place its probes. None: no such request finished.
    slo_ratio_at_target: float | None = None


class CostPoint(_Strict):
    basis: str
    phase_index: int | None
    output_tokens_per_s: float
    input_tokens_per_s: float
    usd_per_million_output_tokens: float | None  # the whole hourly price charged to output tokens
    usd_per_million_input_tokens: float | None  # the whole hourly price charged to input tokens
    usd_per_million_total_tokens: float | None  # the hourly price over input + output tokens


class CostResult(_Strict):
    instance: str | None
    usd_per_hour: float
    price_source: str
    utilisation_fraction: float
    assumption: str
    at_measured_throughput: CostPoint
    at_slo_limited_throughput: CostPoint | None


class GeneratorProcess(_Strict):
    role: str  # local | master | worker
    pid: int
    cpu_seconds: float
    cpu_fraction_of_core_mean: float | None  # while requests were running
    cpu_fraction_of_core_max: float | None  # highest 0.5 s sample


class GeneratorResult(_Strict):
    processes: list[GeneratorProcess]
    cpu_fraction_of_core_max: float | None  # the busiest process's mean while requests were running
    cpu_limit_fraction: float
    dispatch_lag_ms_p99: float | None
    bottleneck_suspected: bool
    reasons: list[str] = Field(default_factory=list)


class SweepResult(_Strict):
    mode: str  # rate (values are requests/s offered, open loop) | concurrency (values are closed-loop users)
    slo_attainment_target: float
    highest_load_meeting_slo: dict[str, float] | None
    highest_load_phase_index: int | None
    peak_output_token_throughput_per_s: float
    peak_phase_index: int | None


class KneeProbe(_Strict):
    """One load the capacity search looked at: a sweep step, or a probe run of its own."""

    load: float  # users (closed loop) or requests/s offered (open loop)
    source: str  # "sweep" (a step of the sweep) or "probe" (a run of the search)
    meets_slo: bool
    slo_attainment_fraction: float
    output_tokens_per_s: float
    goodput_output_tokens_per_s: float
    ttft_ms_p95: float | None
    tpot_ms_p50: float | None
    run_dir: str | None = None  # a probe's own load-test directory, relative to the sweep's
    slo_ratio_at_target: float | None = None  # the phase's (PhaseResult.slo_ratio_at_target)


class KneeResult(_Strict):
    """The capacity at the SLO: the highest load found to meet the SLOs (the knee), by bisection between the
    sweep's last step that met them and its first that did not (packager.loadtest.knee)."""

    mode: str  # concurrency | rate, as the sweep
    knee: float | None  # highest load measured to meet the SLOs; None: not even the lowest load did
    first_failing: float | None  # lowest load measured to miss them; None: none missed them
    precision: float  # the search stops once first_failing - knee <= precision x knee (1 user at least)
    resolved: bool  # the bracket is within the precision
    stopped_because: str
    probes: list[KneeProbe]  # every load looked at, sweep steps first, in the order measured
    output_tokens_per_s_at_knee: float | None
    usd_per_hour: float | None
    usd_per_million_output_tokens_at_knee: float | None
    dispatch_s: float  # time the probes spent sending load (their cost; the sweep's own is not counted)


class LoadTestResult(_Strict):
    schema_version: int = RESULT_SCHEMA_VERSION
    created_unix: float
    target_url: str
    model: str
    config: dict[str, Any]  # the LoadTestConfig, verbatim
    slo: SLOConfig
    pricing: PricingConfig
    slo_attainment_target: float
    phases: list[PhaseResult]
    summary: PhaseResult  # one phase: that phase; a sweep: the highest load meeting the SLOs, else the peak
    summary_basis: str
    sweep: SweepResult | None = None
    knee: KneeResult | None = None  # the capacity search after a sweep (LoadTestConfig.knee)
    cost: CostResult | None = None
    # chat (/v1/chat/completions) or completion (raw prompts, /v1/completions: a base model); None: older runs
    prompt_format: str | None = None
    # The server's own /metrics during the run, per phase (packager.loadtest.telemetry); None: not scraped
    telemetry: dict[str, Any] | None = None
    generator: GeneratorResult
    complete: bool  # every share of the generator reported its phases
    warnings: list[str] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)  # relative to the output directory
    versions: dict[str, str] = Field(default_factory=dict)
    wall_time_s: float
    # The request pool (the plan's prompt_stats): source, count, input_words and max_tokens distributions
    # (mean, p50, p90, p99, max); None: runs planned before it existed
    prompt_stats: dict[str, Any] | None = None
