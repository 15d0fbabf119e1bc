"""The bento's own Prometheus series, per variant, next to BentoML's (bentoml_*) and vLLM's (vllm:*).

Every series carries the variant's identity as labels: model, registry_version, backend, hardware.

    packager_ttft_seconds          histogram  request received -> first content token (streamed requests)
    packager_tpot_seconds          histogram  (E2E - TTFT) / (output tokens - 1) (streamed, >1 token)
    packager_e2e_seconds           histogram  request received -> last byte sent (all inference requests)
    packager_input_tokens_total    counter    prompt tokens (from the backend's usage report)
    packager_output_tokens_total   counter    generated tokens
    packager_requests_total        counter    inference requests by outcome:
                                              success, client_error (4xx from the backend), server_error (5xx or
                                              backend failure), timeout (no answer within traffic.timeout: 504),
                                              rejected (concurrency limit: 429), cancelled (caller went away)
    packager_refused_requests_total counter   requests the front door answered itself, by reason: unauthorized
                                              (401), not_found (404), method_not_allowed (405), too_large (413),
                                              body_timeout (408)
    packager_usd_per_hour          gauge      the configured price of one replica (absent when unknown)

Cost per token is then a PromQL expression (see USD_PER_MILLION_OUTPUT_TOKENS_PROMQL): the fleet's hourly
price over its sustained output token rate. prometheus_client is imported only when the metrics are created
(in the BentoML worker, whose PROMETHEUS_MULTIPROC_DIR makes them part of BentoML's /metrics page).
"""
from __future__ import annotations

from typing import Any, Mapping

LABEL_NAMES = ("model", "registry_version", "backend", "hardware")
OUTCOMES = ("success", "client_error", "server_error", "timeout", "rejected", "cancelled")

# LLM latencies span milliseconds (a token on a GPU) to minutes (a long answer on a CPU).
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
                  7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0)
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
                  0.3, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
                 90.0, 120.0, 180.0, 300.0, 600.0, 1200.0)

# USD per 1M output tokens of the whole fleet over the last 5 minutes (price of every running replica /
# output tokens it produced). Grouping by the variant labels gives one figure per variant.
USD_PER_MILLION_OUTPUT_TOKENS_PROMQL = (
    "sum by (model, registry_version, hardware) (packager_usd_per_hour)"
    " / (sum by (model, registry_version, hardware) (rate(packager_output_tokens_total[5m])) * 3600) * 1e6"
)
USD_PER_MILLION_INPUT_TOKENS_PROMQL = (
    "sum by (model, registry_version, hardware) (packager_usd_per_hour)"
    " / (sum by (model, registry_version, hardware) (rate(packager_input_tokens_total[5m])) * 3600) * 1e6"
)


class ServiceMetrics:
    """The packager_* series of one variant, with the variant labels bound once."""

    def __init__(self, labels: Mapping[str, str], usd_per_hour: float | None, registry: Any = None):
        import prometheus_client as pc

        missing = set(LABEL_NAMES) - set(labels)
        if missing:
            raise ValueError(f"metric labels {sorted(missing)} are missing; give all of {LABEL_NAMES}")
        reg = pc.REGISTRY if registry is None else registry
        names = list(LABEL_NAMES)
        lv = {k: str(labels[k]) for k in LABEL_NAMES}
        self.ttft = pc.Histogram("packager_ttft_seconds", "Time from request received to first content token.",
                                 names, buckets=TTFT_BUCKETS_S, registry=reg).labels(**lv)
        self.tpot = pc.Histogram("packager_tpot_seconds", "Time per output token after the first.",
                                 names, buckets=TPOT_BUCKETS_S, registry=reg).labels(**lv)
        self.e2e = pc.Histogram("packager_e2e_seconds", "Time from request received to last byte sent.",
                                names, buckets=E2E_BUCKETS_S, registry=reg).labels(**lv)
        self.input_tokens = pc.Counter("packager_input_tokens", "Prompt tokens of inference requests.",
                                       names, registry=reg).labels(**lv)
        self.output_tokens = pc.Counter("packager_output_tokens", "Generated tokens of inference requests.",
                                        names, registry=reg).labels(**lv)
        requests = pc.Counter("packager_requests", "Inference requests by outcome.", [*names, "outcome"],
                              registry=reg)
        self.requests = {o: requests.labels(**lv, outcome=o) for o in OUTCOMES}
        refused = pc.Counter("packager_refused_requests", "Requests the front door answered itself, by reason.",
                             [*names, "reason"], registry=reg)
        from packager.serve.frontdoor import REFUSAL_REASONS

        self.refused = {r: refused.labels(**lv, reason=r) for r in REFUSAL_REASONS}
        self.usd_per_hour = None
        if usd_per_hour is not None:
            # "max": one value per variant whatever the number of BentoML worker processes.
            self.usd_per_hour = pc.Gauge("packager_usd_per_hour", "Configured price of one replica in USD per hour.",
                                         names, registry=reg, multiprocess_mode="max").labels(**lv)
            self.usd_per_hour.set(float(usd_per_hour))

    def observe(self, outcome: str, e2e_s: float | None, ttft_s: float | None, input_tokens: int | None,
                output_tokens: int | None) -> None:
        """Record one finished inference request."""
        self.requests[outcome].inc()
        if e2e_s is not None:
            self.e2e.observe(e2e_s)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
            if e2e_s is not None and output_tokens is not None and output_tokens > 1:
                self.tpot.observe(max(e2e_s - ttft_s, 0.0) / (output_tokens - 1))
        if input_tokens:
            self.input_tokens.inc(input_tokens)
        if output_tokens:
            self.output_tokens.inc(output_tokens)
