"""The real locustfile, run by packager in locust subprocesses, against the local OpenAI fake.

Tolerances: the fake sleeps exactly the set delays, so a measurement may only come out LATER than the set
value, by scheduling and parsing overhead, and how much later depends on the machine's load (CI runs on a
busy 2-core machine). So no assertion bounds a latency, rate or lag tightly from above: lower bounds are the
set delays (minus a tiny clock tolerance), upper bounds are generous ones that only a gross bug (wrong unit,
double counting, a phase that never ends) breaks, and the rest are consistency checks between figures.
When arrivals happened is checked on the generator's schedule, not on wall-clock spacing: every open-loop
record holds its start time and its lag behind its scheduled time, so start - lag is the time it was
scheduled for, whatever the machine's load.
"""
from __future__ import annotations

import json
import statistics

import pytest

from packager.config import SLOConfig
from packager.loadtest.runner import load_result, read_records

CLOCK_TOL_MS = 1.0  # a measured gap may come out this much below the fake's sleep (clock and read granularity)


def _requests(out):
    return read_records(out / "records.jsonl")[0]


def _generous_max_ms(set_ms: float) -> float:
    """An upper bound that only a gross bug exceeds, however loaded the machine (never a performance check)."""
    return 3 * set_ms + 250.0


def _scheduled_offsets_s(out) -> list[float]:
    """Sorted times (s after the phase's start) at which the generator scheduled each open-loop request:
    t_start_unix - dispatch_lag_ms. Independent of machine load, unlike the spacing of the real start times."""
    reqs, sums, _ = read_records(out / "records.jsonl")
    t0 = min(s["start_unix"] for s in sums)
    return sorted(q["t_start_unix"] - q["dispatch_lag_ms"] / 1000.0 - t0 for q in reqs)


def test_measured_percentiles_recover_the_set_delays(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=80, itl_ms=20, output_tokens=6)
    out = tmp_path / "lt"
    r = run_lt(fake_server.base_url, out, profile={"kind": "concurrency", "users": 2, "duration_s": 2.5},
               prompts={"kind": "synthetic", "input_tokens": {"mean": 12}, "output_tokens": {"mean": 6}})
    ph = r.phases[0]
    # each of the 2 closed-loop users sends at least one request (how many more depends on machine speed)
    assert ph.requests_ok == ph.requests_sent >= 2 and ph.requests_failed == 0
    # lower bounds: the fake sleeps the set delays; upper bounds only catch a gross bug (unit, double count)
    assert 80 <= ph.ttft.p50_ms <= _generous_max_ms(80)
    assert 20 - CLOCK_TOL_MS <= ph.itl.p50_ms <= _generous_max_ms(20)  # gaps between chunks sent 20 ms apart
    assert 20 - CLOCK_TOL_MS <= ph.tpot.p50_ms <= _generous_max_ms(20)
    assert 80 + 5 * 20 <= ph.e2e.p50_ms <= _generous_max_ms(80 + 5 * 20)
    assert ph.ttft.p50_ms <= ph.ttft.p90_ms <= ph.ttft.p99_ms
    reqs = _requests(out)
    assert len(reqs) == ph.requests_sent + ph.requests_first_excluded  # each user's first: its warm-up
    # per request, consistency between the measured figures (holds whatever the machine's speed)
    for q in reqs:
        assert 80 <= q["ttft_ms"] < q["e2e_ms"] and 80 + 5 * 20 <= q["e2e_ms"]  # the fake's sleeps, strictly
        assert sum(q["itl_ms"]) <= q["e2e_ms"] - q["ttft_ms"] + 1e-6  # the gaps lie between first and last token
    # the summary's TPOT is (E2E - TTFT) / (tokens - 1) of each request judged (not a user's first), summarised
    assert sum(1 for q in reqs if q.get("first_of_user")) == ph.requests_first_excluded == 2
    reqs = [q for q in reqs if not q.get("first_of_user")]
    tpots = [(q["e2e_ms"] - q["ttft_ms"]) / (q["output_tokens"] - 1) for q in reqs]
    assert ph.tpot.count == len(reqs) and ph.tpot.p50_ms == pytest.approx(statistics.median(tpots))
    assert ph.e2e.p50_ms == pytest.approx(statistics.median(q["e2e_ms"] for q in reqs))
    assert ph.ttft.p50_ms == pytest.approx(statistics.median(q["ttft_ms"] for q in reqs))
    # token counts come from the server's usage: the fake counts one token per word and honours max_tokens
    assert {q["output_tokens"] for q in reqs} == {6} and {q["input_tokens"] for q in reqs} == {12}
    assert all(len(q["itl_ms"]) == 5 and q["usage_present"] for q in reqs)
    assert ph.output_tokens_total == 6 * ph.requests_ok
    # the result on disk is the one returned, and every file it names exists
    assert load_result(out) == r
    assert all((out / f).exists() for f in r.files.values())
    assert r.complete and r.model == "fake-model"
    assert r.generator.processes and r.generator.processes[0].cpu_seconds > 0


def test_poisson_arrivals_hit_the_rate(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=5, itl_ms=1, output_tokens=2)
    r = run_lt(fake_server.base_url, tmp_path / "p", seed=3,
               profile={"kind": "rate", "requests_per_s": 40, "duration_s": 4, "arrival": "poisson"})
    ph = r.phases[0]
    assert ph.dropped_arrivals == 0 and ph.requests_failed == 0
    # the seeded schedule (not wall-clock spacing): ~40/s over 4 s, exponential gaps (coefficient of variation ~1)
    sched = _scheduled_offsets_s(tmp_path / "p")
    assert len(sched) == ph.requests_sent and 0.8 * 160 <= ph.requests_sent <= 1.2 * 160
    assert -0.05 <= sched[0] and sched[-1] < 4.0
    gaps = [b - a for a, b in zip(sched, sched[1:])]
    assert 0.7 <= statistics.pstdev(gaps) / statistics.mean(gaps) <= 1.3
    # the phase lasts its whole 4 s window (a late end on a loaded machine is fine; twice as long is a bug)
    assert 4.0 - 0.05 <= ph.dispatch_s < 2 * 4.0
    # every open-loop request has its lag behind schedule recorded; its size depends on the machine's load,
    # so only a gross failure to keep the schedule (sending a second late) fails here
    assert ph.dispatch_lag.count == ph.requests_sent and 0 <= ph.dispatch_lag.p50_ms < 1000


def test_constant_arrivals_are_evenly_spaced(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=5, itl_ms=1, output_tokens=2)
    r = run_lt(fake_server.base_url, tmp_path / "c",
               profile={"kind": "rate", "requests_per_s": 20, "duration_s": 2, "arrival": "constant"})
    assert r.phases[0].requests_sent == 40
    # request j was scheduled at j / 20 s: evenly spaced (checked on the schedule, not on wall-clock gaps)
    sched = _scheduled_offsets_s(tmp_path / "c")
    assert sched == pytest.approx([j / 20 for j in range(40)], abs=0.01)
    assert 0 <= r.phases[0].dispatch_lag.p50_ms < 1000  # only a gross failure to keep the schedule


def test_open_loop_is_not_slowed_by_a_slow_server_and_caps_in_flight(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=1500, itl_ms=1, output_tokens=2)
    r = run_lt(fake_server.base_url, tmp_path / "o", slo=SLOConfig(ttft_ms=30_000),  # every answer meets the SLO
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
    # the phase ended when the cap was reached (the 10th arrival, at 0.3 s), not after its 2 s window;
    # the margin allows a loaded machine's lag, only a phase running its whole window fails
    assert ph.dispatch_s < 1.5
    assert ph.errors_by_kind == {"http_500": 3} and ph.requests_ok == 6
    failed = [q for q in _requests(tmp_path / "e") if not q["ok"]]
    assert all(q["status"] == 500 and "injected failure" in q["error"] for q in failed)


def test_sweep_finds_the_highest_rate_meeting_the_slos(fake_server, run_lt, tmp_path):
    # The fake serves 2 streams at once, each ~110 ms for 10 tokens: ~20 req/s capacity, fixed by its sleeps (a slower
    # machine only lowers it). 4 req/s is comfortable; at 60 req/s the in-flight cap of 30 is reached and
    # most arrivals are dropped, so the high step misses the attainment target whatever the latencies. The SLO
    # limits are ~40x / 10x the fake's delays, so only a gross stall makes the low step miss them.
    fake_server.configure(ttft_ms=20, itl_ms=10, output_tokens=10, max_concurrent_streams=2)
    r = run_lt(fake_server.base_url, tmp_path / "s", slo=SLOConfig(ttft_ms=1000, tpot_ms=100),
               slo_attainment_target=0.85,  # one stalled request of 8 may miss
               profile={"kind": "sweep", "mode": "rate", "values": [4, 60], "step_duration_s": 2,
                        "arrival": "constant", "max_in_flight": 30},
               prompts={"kind": "synthetic", "input_tokens": {"mean": 4}, "output_tokens": {"mean": 10}})
    low, high = r.phases
    assert low.requests_sent == 8 and high.requests_sent + high.dropped_arrivals == 120
    assert low.meets_slo and not high.meets_slo
    assert high.dropped_arrivals > 0 and high.slo_attainment_fraction <= high.requests_sent / 120 < 0.85
    assert high.ttft.p50_ms > low.ttft.p50_ms >= 20  # queueing behind the 2 slots delays the first token
    assert r.sweep is not None and r.sweep.highest_load_meeting_slo == {"requests_per_s": 4.0}
    assert r.summary.index == 0 and "highest load" in r.summary_basis
    # capped by the fake's 2 slots (~20 req/s at most, whatever the machine), not the offered 60
    assert high.request_throughput_per_s < 30
    assert r.cost is None  # no price given
    assert (tmp_path / "s" / "sweep.png").stat().st_size > 10_000


def test_burst_and_replay_shapes(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=10, itl_ms=2, output_tokens=4)
    r = run_lt(fake_server.base_url, tmp_path / "b",
               profile={"kind": "burst", "burst_size": 6, "interval_s": 0.8, "bursts": 2})
    assert len(_requests(tmp_path / "b")) == 12 and r.phases[0].requests_ok == 12
    # 6 requests scheduled at 0 s and 6 at 0.8 s (the schedule; wall-clock spacing depends on the machine)
    assert _scheduled_offsets_s(tmp_path / "b") == pytest.approx([0.0] * 6 + [0.8] * 6, abs=0.01)
    assert r.phases[0].dispatch_lag.p50_ms < 1000  # only a gross failure to keep the schedule
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(json.dumps({"timestamp_s": 10 + 0.3 * i, "input_tokens": 3 + i, "output_tokens": 2 + i})
                               for i in range(6)))
    r = run_lt(fake_server.base_url, tmp_path / "r", profile={"kind": "replay", "trace": str(trace), "speedup": 3})
    reqs = sorted(_requests(tmp_path / "r"), key=lambda q: q["t_start_unix"])
    assert [q["output_tokens"] for q in reqs] == [2, 3, 4, 5, 6, 7]  # forced lengths (ignore_eos/min_tokens)
    assert [q["input_tokens"] for q in reqs] == [3, 4, 5, 6, 7, 8]
    # trace timestamps 0.3 s apart, replayed 3x faster: scheduled 0.1 s apart
    assert _scheduled_offsets_s(tmp_path / "r") == pytest.approx([0.1 * i for i in range(6)], abs=0.01)
    assert r.phases[0].requests_ok == 6 and r.phases[0].dispatch_lag.p50_ms < 1000


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
    # both runs measure the same fake: each median at least the set delay, neither grossly off (a unit or
    # merge bug); how far above the set delay each lands depends on the machine's load, so no tight match
    for name, set_ms, tol in (("ttft", 60, 0), ("tpot", 10, CLOCK_TOL_MS), ("e2e", 60 + 5 * 10, 0)):
        pa, pb = getattr(a, name).p50_ms, getattr(b, name).p50_ms
        assert set_ms - tol <= pa <= _generous_max_ms(set_ms), (name, pa)
        assert set_ms - tol <= pb <= _generous_max_ms(set_ms), (name, pb)
        assert getattr(a, name).count == getattr(b, name).count == 40
    # the two shares together kept the single process's schedule: request j at j / 16 s
    assert _scheduled_offsets_s(tmp_path / "w2") == pytest.approx(_scheduled_offsets_s(tmp_path / "w0"), abs=0.01)
    assert _scheduled_offsets_s(tmp_path / "w2") == pytest.approx([j / 16 for j in range(40)], abs=0.01)
    # both shares of the distributed run sent requests, and their records reached the master's file
    assert {q["share"] for q in _requests(tmp_path / "w2")} == {0, 1}
    assert [p.role for p in dist.generator.processes] == ["master", "worker", "worker"]
    assert dist.complete and (tmp_path / "w2" / "locust-worker-1.log").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_closed_loop_users_start_one_by_one_over_the_ramp(fake_server, run_lt, tmp_path, workers):
    """4 users, a ramp of 1 s: user g starts no earlier than g/4 s into the phase (both shares together keep
    the order), and every request of the ramp counts. Requests last over 1 s, so no user's second request comes
    before the last user's first: the k-th start is at least k/4 s in. With every user started at once (the
    default before the ramp) the 4 first starts lie within milliseconds of each other and this fails."""
    fake_server.configure(ttft_ms=1000, itl_ms=20, output_tokens=5)
    out = tmp_path / "lt"
    r = run_lt(fake_server.base_url, out, workers=workers, ramp_fraction=0.5,
               profile={"kind": "concurrency", "users": 4, "duration_s": 2.0},
               prompts={"kind": "synthetic", "input_tokens": {"mean": 5}, "output_tokens": {"mean": 5}})
    reqs, sums, _ = read_records(out / "records.jsonl")
    t0 = min(s["start_unix"] for s in sums)
    starts = sorted(q["t_start_unix"] - t0 for q in reqs)
    assert len(starts) >= 4
    for k in range(4):
        assert starts[k] >= k * 0.25 - CLOCK_TOL_MS / 1000, (k, starts)
    assert r.phases[0].requests_sent + r.phases[0].requests_first_excluded == len(reqs)
    assert {q["user"] for q in reqs} == {0, 1, 2, 3}  # each record names its user
    if workers:  # user g runs in share g % 2
        assert {q["share"] for q in reqs} == {0, 1} and all(q["share"] == q["user"] % 2 for q in reqs)

def test_a_user_whose_first_request_outlasts_the_phase_sends_one_more_to_be_judged(fake_server, run_lt, tmp_path):
    """Requests of over 1.2 s in a 1 s phase: each user's first (its warm-up) ends after the phase, so each sends
    exactly one more, during the drain, and the phase is judged on those two."""
    fake_server.configure(ttft_ms=1200, itl_ms=10, output_tokens=3)
    out = tmp_path / "lt"
    r = run_lt(fake_server.base_url, out, profile={"kind": "concurrency", "users": 2, "duration_s": 1.0},
               prompts={"kind": "synthetic", "input_tokens": {"mean": 5}, "output_tokens": {"mean": 3}})
    reqs = _requests(out)
    assert len(reqs) == 4 and sum(1 for q in reqs if q.get("first_of_user")) == 2
    ph = r.phases[0]
    assert (ph.requests_sent, ph.requests_ok, ph.requests_first_excluded) == (2, 2, 2)
    assert ph.ttft.count == 2 and ph.ttft.p50_ms >= 1200

def test_suite_prompts_through_locust(fake_server, run_lt, tmp_path):
    fake_server.configure(ttft_ms=5, itl_ms=1, output_tokens=50)
    suite = tmp_path / "s.jsonl"
    suite.write_text('{"id": "a", "prompt": "one two three", "reference": "x", "scorer": "exact", "max_tokens": 4}\n'
                     '{"id": "b", "prompt": "one two", "reference": "x", "scorer": "exact", "max_tokens": 7}\n')
    run_lt(fake_server.base_url, tmp_path / "o", max_requests=4, prompts={"kind": "suite", "suite": str(suite)},
           profile={"kind": "concurrency", "users": 1, "duration_s": 2})
    reqs = _requests(tmp_path / "o")
    assert sorted((q["input_tokens"], q["output_tokens"]) for q in reqs) == [(2, 7), (2, 7), (3, 4), (3, 4)]
