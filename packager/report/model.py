"""The release report: data first. A versioned pydantic model holds the run configuration, versions and every
figure; renderers (JSON, Markdown, HTML with plots) only read it."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from packager.provenance import now_iso, package_versions, platform_info

REPORT_SCHEMA_VERSION = 1


class SweepPoint(BaseModel):
    """One step of a load sweep: the offered load and what the server sustained there."""

    offered: float  # concurrency (users) or arrival rate (requests/s), see LoadSummary.sweep_unit
    requests_per_s: float
    output_tokens_per_s: float
    ttft_ms_p95: float | None = None
    tpot_ms_p95: float | None = None
    goodput_requests_per_s: float | None = None


class LoadSummary(BaseModel):
    """Headline load-test figures of one variant (the full result lives in `raw`)."""

    requests: int = 0
    errors: int = 0
    duration_s: float = 0.0
    requests_per_s: float = 0.0
    output_tokens_per_s: float = 0.0
    input_tokens_per_s: float = 0.0
    ttft_ms_p50: float | None = None
    ttft_ms_p90: float | None = None
    ttft_ms_p95: float | None = None
    ttft_ms_p99: float | None = None
    tpot_ms_p50: float | None = None
    tpot_ms_p90: float | None = None
    tpot_ms_p95: float | None = None
    tpot_ms_p99: float | None = None
    itl_ms_p50: float | None = None
    itl_ms_p95: float | None = None
    e2e_ms_p50: float | None = None
    e2e_ms_p95: float | None = None
    e2e_ms_p99: float | None = None
    goodput_requests_per_s: float | None = None
    goodput_fraction: float | None = None  # share of requests meeting every SLO
    usd_per_hour: float | None = None
    usd_per_million_output_tokens: float | None = None
    usd_per_million_input_tokens: float | None = None
    usd_per_million_output_tokens_at_slo: float | None = None
    utilization_assumed: float | None = None
    sweep_unit: str | None = None  # "concurrency" or "requests_per_s"
    sweep: list[SweepPoint] = Field(default_factory=list)
    max_load_meeting_slo: float | None = None  # the capacity search's knee when one ran, else the highest sweep step
    # The capacity search (packager.loadtest.knee): the lowest load found to miss the SLOs, whether the two are within
    # its precision, and how many probes it ran; None / 0: no search ran
    knee_first_failing: float | None = None
    knee_resolved: bool | None = None
    knee_probes: int = 0
    generator_bottleneck: bool = False
    # the server's own figures during the summary phase (packager.loadtest.telemetry); None: not reported
    server_kv_cache_max: float | None = None  # share of the KV cache in use, highest scrape
    server_requests_waiting_max: float | None = None
    server_preemptions: float | None = None
    prompt_format: str | None = None  # chat or completion (raw prompts: a base model)
    # per-request samples for latency distribution plots (ms)
    ttft_ms_samples: list[float] = Field(default_factory=list)
    tpot_ms_samples: list[float] = Field(default_factory=list)
    raw: dict[str, Any] = Field(default_factory=dict)


class VariantResult(BaseModel):
    name: str
    recipe: str | None = None  # None for the uncompressed baseline
    is_baseline: bool = False
    engine: str = "vllm"
    dtype: str | None = None
    model_dir: str | None = None
    model_digest: str | None = None
    size_bytes: int | None = None
    parameters: int | None = None
    compression_wall_time_s: float | None = None
    stages: list[dict[str, Any]] = Field(default_factory=list)
    # the engine-argument search before its bento was built (packager.engines.tune.EngineSearch as JSON), or None
    engine_search: dict[str, Any] | None = None
    # quality
    score: float | None = None
    score_by_category: dict[str, float] = Field(default_factory=dict)
    recovery: float | None = None
    recovery_ci: tuple[float, float] | None = None  # 95% paired bootstrap interval (packager.evaluate.stats)
    score_ci: tuple[float, float] | None = None
    p_value: float | None = None  # paired sign-flip test against the baseline's items
    perplexity: float | None = None
    fidelity_agreement: float | None = None
    fidelity_mean_kl: float | None = None
    fidelity_p95_kl: float | None = None
    fidelity_top1_agreement: float | None = None
    fidelity_prefix_match_mean: float | None = None  # leading tokens of the baseline's greedy answers kept, mean
    fidelity_source: str | None = None  # "corpus:<name>" or "suite"
    behaviour: dict[str, float] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    # serving and load
    bento_tag: str | None = None
    registry_name: str | None = None
    registry_version: str | None = None
    load: LoadSummary | None = None
    # verdicts
    meets_quality_floor: bool | None = None
    meets_slo: bool | None = None
    errors: list[str] = Field(default_factory=list)


class EngineComparison(BaseModel):
    """Serving engines side by side over the load sweep: at each offered load, the best output tokens/s any
    variant of each engine sustained (variants below the quality floor left out), and where the lead changes."""

    sweep_unit: str | None = None
    offered: list[float] = Field(default_factory=list)
    best_output_tokens_per_s: dict[str, list[float | None]] = Field(default_factory=dict)  # engine -> per offered
    best_variant: dict[str, list[str | None]] = Field(default_factory=dict)  # engine -> per offered
    leader: list[str | None] = Field(default_factory=list)  # per offered: the engine with the most tokens/s
    crossovers: list[dict[str, Any]] = Field(default_factory=list)  # {from_engine, to_engine, after, at}
    summary: str = ""


class Recommendation(BaseModel):
    variant: str | None
    reason: str
    considered: list[str] = Field(default_factory=list)
    rejected: dict[str, str] = Field(default_factory=dict)  # variant -> why not
    # Set when the variants were ranked at the traffic the user expects (RunConfig.expected_load), not at the
    # highest load each sustained: the offered load, its unit (concurrency | requests_per_s) and each
    # variant's USD per 1M output tokens at the sweep step that load falls on (None: not measured there).
    expected_load: float | None = None
    expected_load_unit: str | None = None
    usd_per_million_output_tokens_at_expected_load: dict[str, float | None] = Field(default_factory=dict)


class Report(BaseModel):
    schema_version: int = REPORT_SCHEMA_VERSION
    title: str = "packager release report"
    created_at: str = Field(default_factory=now_iso)
    model: str
    baseline: str
    quality_floor: float
    # the quality tests of the recommendation (packager.report.quality_gate): use_lower_bound, max_kl,
    # max_kl_vs_noise; and the baseline's noise floor (packager.evaluate.noise_floor) the KL limit derives from
    gate: dict[str, Any] = Field(default_factory=dict)
    noise_floor: dict[str, Any] | None = None
    slo: dict[str, float] = Field(default_factory=dict)  # ttft_ms, tpot_ms
    pricing: dict[str, Any] = Field(default_factory=dict)  # instance, usd_per_hour, source
    variants: list[VariantResult]
    pareto: list[str] = Field(default_factory=list)  # names on the quality-vs-cost frontier
    engines: EngineComparison | None = None  # set when variants of more than one engine were load-swept
    recommendation: Recommendation
    timings_s: dict[str, float] = Field(default_factory=dict)
    time_budget_s: float | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=package_versions)
    platform: dict[str, str] = Field(default_factory=platform_info)
    notes: list[str] = Field(default_factory=list)

    def variant(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)
