"""The packager_* series: names, labels, buckets, and what one request adds."""
from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from packager.serve.metrics import (E2E_BUCKETS_S, OUTCOMES, TPOT_BUCKETS_S, TTFT_BUCKETS_S,
                                    USD_PER_MILLION_OUTPUT_TOKENS_PROMQL, ServiceMetrics)

LABELS = {"model": "m", "registry_version": "2", "backend": "vllm", "hardware": "cpu"}


def test_one_streamed_request_adds_to_every_series():
    reg = CollectorRegistry()
    m = ServiceMetrics(LABELS, usd_per_hour=0.1785, registry=reg)
    m.observe("success", e2e_s=2.0, ttft_s=0.5, input_tokens=12, output_tokens=31)
    g = lambda name, **kw: reg.get_sample_value(name, {**LABELS, **kw})  # noqa: E731
    assert g("packager_requests_total", outcome="success") == 1
    assert g("packager_input_tokens_total") == 12 and g("packager_output_tokens_total") == 31
    assert g("packager_ttft_seconds_sum") == 0.5 and g("packager_e2e_seconds_sum") == 2.0
    assert g("packager_tpot_seconds_sum") == pytest.approx((2.0 - 0.5) / 30)
    assert g("packager_usd_per_hour") == 0.1785
    text = generate_latest(reg).decode()
    for name in ("packager_ttft_seconds_bucket", "packager_tpot_seconds_bucket", "packager_e2e_seconds_bucket"):
        assert name in text
    # every outcome is exported from the start (rates of zero, not missing series)
    for o in OUTCOMES:
        assert g("packager_requests_total", outcome=o) is not None


def test_a_single_token_answer_has_no_tpot_and_unknown_price_has_no_gauge():
    reg = CollectorRegistry()
    m = ServiceMetrics(LABELS, usd_per_hour=None, registry=reg)
    m.observe("success", e2e_s=0.3, ttft_s=0.3, input_tokens=5, output_tokens=1)
    assert reg.get_sample_value("packager_tpot_seconds_count", LABELS) == 0
    assert reg.get_sample_value("packager_usd_per_hour", LABELS) is None


def test_missing_labels_are_refused():
    with pytest.raises(ValueError, match="hardware"):
        ServiceMetrics({k: v for k, v in LABELS.items() if k != "hardware"}, None, registry=CollectorRegistry())


def test_buckets_span_milliseconds_to_minutes():
    assert TTFT_BUCKETS_S[0] <= 0.005 and TTFT_BUCKETS_S[-1] >= 120
    assert TPOT_BUCKETS_S[0] <= 0.001 and TPOT_BUCKETS_S[-1] >= 2
    assert E2E_BUCKETS_S[0] <= 0.05 and E2E_BUCKETS_S[-1] >= 600
    for b in (TTFT_BUCKETS_S, TPOT_BUCKETS_S, E2E_BUCKETS_S):
        assert list(b) == sorted(set(b))


def test_cost_promql_divides_price_by_output_token_rate():
    q = USD_PER_MILLION_OUTPUT_TOKENS_PROMQL
    assert "packager_usd_per_hour" in q and "rate(packager_output_tokens_total[5m])" in q
    assert "* 3600" in q and "* 1e6" in q
