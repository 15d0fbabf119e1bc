"""packager.loadtest: drive locust headless (in subprocesses), analyse per-request records, SLO goodput, cost.

Public API (imported lazily, so `import packager.loadtest` stays cheap and never imports locust):

    run_loadtest(target_url, cfg: LoadTestConfig, slo: SLOConfig, pricing: PricingConfig, out_dir, model=None)
        -> LoadTestResult                                             (packager.loadtest.runner)
    LoadTestConfig, parse_loadtest_config                             (packager.loadtest.config)
    LoadTestResult, PhaseResult, LatencySummary, CostResult            (packager.loadtest.result)
    percentile, summarize_latencies, tpot_ms, meets_slo, goodput_requests_per_s,
    highest_load_meeting_slo, cost_result                             (packager.loadtest.metrics)
    usd_per_million_tokens, load_price_table, resolve_price            (packager.loadtest.pricing)
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_loadtest": "runner", "write_plan": "runner", "analyse_run_dir": "runner", "load_result": "runner",
    "normalize_target": "runner",
    "LoadTestConfig": "config", "parse_loadtest_config": "config",
    "LoadTestResult": "result", "PhaseResult": "result", "LatencySummary": "result", "CostResult": "result",
    "percentile": "metrics", "summarize_latencies": "metrics", "tpot_ms": "metrics", "meets_slo": "metrics",
    "goodput_requests_per_s": "metrics", "highest_load_meeting_slo": "metrics", "cost_result": "metrics",
    "usd_per_million_tokens": "pricing", "load_price_table": "pricing", "resolve_price": "pricing",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'packager.loadtest' has no attribute {name!r}")
    return getattr(importlib.import_module(f"packager.loadtest.{mod}"), name)
