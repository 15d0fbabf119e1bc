"""A bounded load test against the real vLLM server on the bundled model (real locust, real vLLM)."""
from __future__ import annotations

import json

import pytest

from packager.config import PricingConfig, SLOConfig
from packager.loadtest.config import LoadTestConfig
from packager.loadtest.runner import read_records, run_loadtest


@pytest.mark.slow
def test_loadtest_against_vllm(vllm_default_server, tmp_path):
    cfg = LoadTestConfig.model_validate({
        "profile": {"kind": "concurrency", "users": 2, "duration_s": 60},
        "prompts": {"kind": "synthetic", "input_tokens": {"mean": 32}, "output_tokens": {"mean": 16}},
        "max_requests": 12, "max_duration_s": 60, "request_timeout_s": 120, "drain_timeout_s": 60,
        "ramp_fraction": 0})  # both users at once, every request judged: the figures below are each request's
    out = tmp_path / "lt"
    r = run_loadtest(vllm_default_server.base_url, cfg, SLOConfig(), PricingConfig(instance="c7i.xlarge"), out)
    ph = r.phases[0]
    assert r.model == "default"  # discovered from GET /v1/models
    assert ph.requests_sent == 12 and ph.request_cap_reached
    assert ph.requests_ok == 12 and ph.errors_by_kind == {}
    assert ph.request_throughput_per_s > 0 and ph.output_token_throughput_per_s > 0
    # token counts are the server's (usage): ignore_eos/min_tokens make vLLM generate exactly max_tokens
    reqs = read_records(out / "records.jsonl")[0]
    assert all(q["usage_present"] for q in reqs)
    assert {q["output_tokens"] for q in reqs} == {16} and ph.output_tokens_total == 12 * 16
    assert all(q["input_tokens"] >= 32 for q in reqs)  # the prompt plus the chat template's tokens
    for s in (ph.ttft, ph.tpot, ph.itl, ph.e2e):
        assert s.count > 0 and 0 < s.p50_ms <= s.p90_ms <= s.p99_ms
    assert ph.ttft.p50_ms < ph.e2e.p50_ms
    # TPOT is (E2E - TTFT) / (out - 1) of each request, whatever the speed; its ITL gaps are those between
    # consecutive content chunks, so they add up to at most E2E - TTFT
    import numpy as np

    tpots = [(q["e2e_ms"] - q["ttft_ms"]) / (q["output_tokens"] - 1) for q in reqs]
    assert ph.tpot.p50_ms == pytest.approx(float(np.percentile(tpots, 50)), rel=1e-6)
    for q in reqs:
        assert len(q["itl_ms"]) == q["content_chunks"] - 1, q
        assert sum(q["itl_ms"]) <= q["e2e_ms"] - q["ttft_ms"] + 1e-6, q
    c = r.cost
    assert c is not None and c.usd_per_hour == pytest.approx(0.1785)
    assert c.at_measured_throughput.usd_per_million_output_tokens == pytest.approx(
        0.1785 / (ph.output_token_throughput_per_s * 3600) * 1e6)
    assert json.loads((out / "loadtest.json").read_text())["phases"][0]["requests_ok"] == 12
