"""The real locustfile, run by packager in locust subprocesses, against the local OpenAI fake.

Tolerances: the fake sleeps exactly the set delays, so a measurement may only come out LATER than the set
value, by scheduling and parsing overhead. On a busy 2-core machine single requests can stall for ~100 ms,
so assertions use medians with a one-sided margin, never single samples.
"""
from __future__ import annotations

import json
import statistics

import pytest

from packager.config import SLOConfig
from packager.loadtest.runner import load_result, read_records

MARGIN_MS = 30.0


def _requests(out):
    return read_records(out / "records.jsonl")[0]


def test_measured_percentiles_recover_the_set_delays(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=80, itl_ms=20, output_tokens=6)
    out = tmp_path / "lt"
    r = run_lt(fake_server.base_url, out, profile={"kind": "concurrency", "users": 2, "duration_s": 2.5},
               prompts={"kind": "synthetic", "input_tokens": {"mean": 12}, "output_tokens": {"mean": 6}})
    ph = r.phases[0]
    assert ph.requests_ok >= 8 and ph.requests_failed == 0
    assert 80 <= ph.ttft.p50_ms <= 80 + MARGIN_MS
    assert 20 <= ph.itl.p50_ms + 1 <= 20 + MARGIN_MS / 2  # gaps measured between chunks arriving ~20 ms apart
    assert 20 <= ph.tpot.p50_ms + 1 <= 20 + MARGIN_MS / 2
    assert 80 + 5 * 20 <= ph.e2e.p50_ms <= 80 + 5 * 20 + 2 * MARGIN_MS
    assert ph.ttft.p50_ms <= ph.ttft.p90_ms <= ph.ttft.p99_ms
    # token counts come from the server's usage: the fake counts one token per word and honours max_tokens
    reqs = _requests(out)
    assert {q["output_tokens"] for q in reqs} == {6} and {q["input_tokens"] for q in reqs} == {12}
    assert all(len(q["itl_ms"]) == 5 and q["usage_present"] for q in reqs)
    assert ph.output_tokens_total == 6 * ph.requests_ok
    # the result on disk is the one returned, and every file it names exists
    assert load_result(out) == r
    assert all((out / f).exists() for f in r.files.values())
    assert r.complete and r.model == "fake-model"
    assert r.generator.processes and r.generator.processes[0].cpu_seconds > 0


def _gaps_cv(reqs):
    starts = sorted(q["t_start_unix"] for q in reqs)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    return statistics.pstdev(gaps) / statistics.mean(gaps)


def test_poisson_arrivals_hit_the_rate(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=5, itl_ms=1, output_tokens=2)
    r = run_lt(fake_server.base_url, tmp_path / "p", seed=3,
               profile={"kind": "rate", "requests_per_s": 40, "duration_s": 4, "arrival": "poisson"})
    ph = r.phases[0]
    assert ph.dropped_arrivals == 0 and ph.requests_failed == 0
    assert 0.8 * 160 <= ph.requests_sent <= 1.2 * 160
    achieved = ph.requests_sent / ph.dispatch_s
    assert achieved == pytest.approx(40, rel=0.2)
    assert 0.7 <= _gaps_cv(_requests(tmp_path / "p")) <= 1.3  # exponential gaps: coefficient of variation ~1
    assert ph.dispatch_lag.p50_ms < 10


def test_constant_arrivals_are_evenly_spaced(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=5, itl_ms=1, output_tokens=2)
    r = run_lt(fake_server.base_url, tmp_path / "c",
               profile={"kind": "rate", "requests_per_s": 20, "duration_s": 2, "arrival": "constant"})
    assert r.phases[0].requests_sent == 40
    assert _gaps_cv(_requests(tmp_path / "c")) < 0.5


def test_open_loop_is_not_slowed_by_a_slow_server_and_caps_in_flight(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=1500, itl_ms=1, output_tokens=2)
    r = run_lt(fake_server.base_url, tmp_path / "o",
               profile={"kind": "rate", "requests_per_s": 20, "duration_s": 1, "arrival": "constant",
                        "max_in_flight": 5})
    ph = r.phases[0]
    # 20 arrivals offered within 1 s although nothing completes for 1.5 s: 5 sent (the cap), 15 dropped
    assert ph.requests_sent == 5 and ph.dropped_arrivals == 15
    assert ph.requests_ok == 5 and ph.errors_by_kind == {"dropped_arrival": 15}
    assert fake_server.stats()["max_in_flight_seen"] == 5
    assert ph.slo_attainment_fraction == pytest.approx(5 / 20)


def test_request_cap_bounds_the_run_and_errors_are_counted_by_kind(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=5, itl_ms=1, output_tokens=3, fail_every_n=3)
    r = run_lt(fake_server.base_url, tmp_path / "e", max_requests=9,
               profile={"kind": "rate", "requests_per_s": 30, "duration_s": 2, "arrival": "constant"})
    ph = r.phases[0]
    assert ph.requests_sent == 9 and ph.request_cap_reached
    assert ph.dispatch_s < 1.0  # the phase ended when the cap was reached, not after its 2 s
    assert ph.errors_by_kind == {"http_500": 3} and ph.requests_ok == 6
    failed = [q for q in _requests(tmp_path / "e") if not q["ok"]]
    assert all(q["status"] == 500 and "injected failure" in q["error"] for q in failed)


def test_sweep_finds_the_highest_rate_meeting_the_slos(fake_server, run_lt, tmp_path):
    # The fake serves 2 streams at once, each ~120 ms: ~16 req/s capacity. 4 req/s is comfortable; at 60 req/s
    # the queue (up to max_in_flight=30) grows and TTFT leaves the 300 ms SLO far behind.
    fake_server.configure(ttft_ms=20, itl_ms=10, output_tokens=10, max_concurrent_streams=2)
    r = run_lt(fake_server.base_url, tmp_path / "s", slo=SLOConfig(ttft_ms=300, tpot_ms=50),
               slo_attainment_target=0.85,  # one stalled request of 8 (a busy CI machine) may miss
               profile={"kind": "sweep", "mode": "rate", "values": [4, 60], "step_duration_s": 2,
                        "arrival": "constant", "max_in_flight": 30},
               prompts={"kind": "synthetic", "input_tokens": {"mean": 4}, "output_tokens": {"mean": 10}})
    low, high = r.phases
    assert low.requests_sent == 8 and high.requests_sent + high.dropped_arrivals == 120
    assert low.meets_slo and not high.meets_slo
    assert high.ttft.p50_ms > 300 > low.ttft.p50_ms
    assert r.sweep is not None and r.sweep.highest_load_meeting_slo == {"requests_per_s": 4.0}
    assert r.summary.index == 0 and "highest load" in r.summary_basis
    assert high.request_throughput_per_s < 25  # capped near the fake's capacity, not the offered 60
    assert r.cost is None  # no price given
    assert (tmp_path / "s" / "sweep.png").stat().st_size > 10_000


def test_burst_and_replay_shapes(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=10, itl_ms=2, output_tokens=4)
    r = run_lt(fake_server.base_url, tmp_path / "b",
               profile={"kind": "burst", "burst_size": 6, "interval_s": 0.8, "bursts": 2})
    reqs = _requests(tmp_path / "b")
    starts = sorted(q["t_start_unix"] for q in reqs)
    assert len(starts) == 12
    assert starts[5] - starts[0] < 0.2 and starts[6] - starts[0] == pytest.approx(0.8, abs=0.2)
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(json.dumps({"timestamp_s": 10 + 0.3 * i, "input_tokens": 3 + i, "output_tokens": 2 + i})
                               for i in range(6)))
    r = run_lt(fake_server.base_url, tmp_path / "r", profile={"kind": "replay", "trace": str(trace), "speedup": 3})
    reqs = sorted(_requests(tmp_path / "r"), key=lambda q: q["t_start_unix"])
    assert [q["output_tokens"] for q in reqs] == [2, 3, 4, 5, 6, 7]  # forced lengths (ignore_eos/min_tokens)
    assert [q["input_tokens"] for q in reqs] == [3, 4, 5, 6, 7, 8]
    span = reqs[-1]["t_start_unix"] - reqs[0]["t_start_unix"]
    assert span == pytest.approx(1.5 / 3, abs=0.15)
    assert r.phases[0].requests_ok == 6


def test_distributed_run_matches_single_process(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=60, itl_ms=10, output_tokens=6)
    common = {"profile": {"kind": "rate", "requests_per_s": 16, "duration_s": 2.5, "arrival": "constant"},
              "prompts": {"kind": "synthetic", "input_tokens": {"mean": 5}, "output_tokens": {"mean": 6}}}
    single = run_lt(fake_server.base_url, tmp_path / "w0", **common)
    dist = run_lt(fake_server.base_url, tmp_path / "w2", workers=2, **common)
    a, b = single.phases[0], dist.phases[0]
    assert a.requests_sent == b.requests_sent == 40
    assert a.requests_ok == b.requests_ok == 40
    assert a.output_tokens_total == b.output_tokens_total == 240
    for name in ("ttft", "tpot", "e2e"):
        pa, pb = getattr(a, name).p50_ms, getattr(b, name).p50_ms
        assert abs(pa - pb) <= 25, (name, pa, pb)
    # both shares of the distributed run sent requests, and their records reached the master's file
    assert {q["share"] for q in _requests(tmp_path / "w2")} == {0, 1}
    assert [p.role for p in dist.generator.processes] == ["master", "worker", "worker"]
    assert dist.complete and (tmp_path / "w2" / "locust-worker-1.log").exists()


def test_suite_prompts_through_locust(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=5, itl_ms=1, output_tokens=50)
    suite = tmp_path / "s.jsonl"
    suite.write_text('{"id": "a", "prompt": "one two three", "reference": "x", "scorer": "exact", "max_tokens": 4}\n'
                     '{"id": "b", "prompt": "one two", "reference": "x", "scorer": "exact", "max_tokens": 7}\n')
    run_lt(fake_server.base_url, tmp_path / "o", max_requests=4, prompts={"kind": "suite", "suite": str(suite)},
           profile={"kind": "concurrency", "users": 1, "duration_s": 2})
    reqs = _requests(tmp_path / "o")
    assert sorted((q["input_tokens"], q["output_tokens"]) for q in reqs) == [(2, 7), (2, 7), (3, 4), (3, 4)]
