"""Percentiles, TPOT, goodput, phase summaries, sweeps and cost from known inputs (no server)."""
from __future__ import annotations

import numpy as np
import pytest

from packager.config import SLOConfig
from packager.loadtest.metrics import (
    cost_result,
    goodput_requests_per_s,
    highest_load_meeting_slo,
    meets_slo,
    percentile,
    slo_ratio,
    slo_ratio_at_target,
    summarize_latencies,
    summarize_phase,
    sweep_result,
    tpot_ms,
)
from packager.loadtest.pricing import PriceQuote, usd_per_million_tokens


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy_linear(q):
    rng = np.random.default_rng(0)
    v = rng.lognormal(3, 1, size=137).tolist()
    assert percentile(v, q) == pytest.approx(float(np.percentile(v, q)), rel=1e-12)


def test_percentile_known_values_and_edges():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10], 99) == 10
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1], 101)
    s = summarize_latencies([100, 200, None, 300, 400, 500])
    assert (s.count, s.p50_ms, s.mean_ms, s.max_ms) == (5, 300, 300, 500)
    assert s.p90_ms == pytest.approx(460)
    assert summarize_latencies([]).p50_ms is None


def test_tpot_definition():
    assert tpot_ms(e2e_ms=1000, ttft_ms=100, output_tokens=10) == pytest.approx(100)
    assert tpot_ms(500, 100, 1) is None  # one token: no TPOT
    assert tpot_ms(500, None, 5) is None


def _req(ttft, e2e, out, ok=True, inp=10, t0=0.0, phase=0):
    return {"type": "request", "phase": phase, "ok": ok, "ttft_ms": ttft, "e2e_ms": e2e, "output_tokens": out,
            "input_tokens": inp, "usage_present": True, "itl_ms": [], "t_start_unix": t0,
            "t_end_unix": t0 + e2e / 1000.0, "error_kind": None if ok else "http_500", "dispatch_lag_ms": None}


def test_meets_slo_and_goodput():
    slo = SLOConfig(ttft_ms=200, tpot_ms=50)
    good = _req(ttft=150, e2e=150 + 9 * 40, out=10)  # TPOT 40
    slow_first = _req(ttft=250, e2e=300, out=2)
    slow_tokens = _req(ttft=100, e2e=100 + 9 * 60, out=10)  # TPOT 60
    one_token = _req(ttft=100, e2e=100, out=1)  # judged on TTFT alone (as vllm bench serve)
    failed = _req(ttft=10, e2e=20, out=5, ok=False)
    recs = [good, slow_first, slow_tokens, one_token, failed]
    assert [meets_slo(r, slo) for r in recs] == [True, False, False, True, False]
    assert goodput_requests_per_s(recs, slo, duration_s=4.0) == pytest.approx(0.5)
    assert goodput_requests_per_s(recs, slo, duration_s=0) == 0.0


def test_summarize_phase_counts_rates_and_attainment():
    slo = SLOConfig(ttft_ms=200, tpot_ms=50)
    recs = [_req(100, 100 + 9 * 10, 10, inp=20, t0=i * 0.5) for i in range(8)]  # 8 good, 10 out / 20 in tokens
    recs += [_req(300, 400, 10, inp=20, t0=1.0)]  # misses TTFT
    recs += [_req(None, 5, None, ok=False, t0=2.0)]  # failed
    share = [{"start_unix": 0.0, "dispatch_end_unix": 4.0, "dropped_arrivals": 2, "request_cap_reached": False,
              "cancelled_at_drain_timeout": 0}]
    ph = summarize_phase(0, "x", {"requests_per_s": 2.0}, recs, share, slo, 0.9, 4.0)
    # phase start -> max(dispatch end, last completion): the last request ends at 3.69 s, dispatch at 4 s
    assert ph.duration_s == pytest.approx(4.0)
    assert ph.dispatch_s == pytest.approx(4.0)
    assert (ph.requests_sent, ph.requests_ok, ph.requests_failed, ph.dropped_arrivals) == (10, 9, 1, 2)
    assert ph.errors_by_kind == {"dropped_arrival": 2, "http_500": 1}
    assert ph.output_tokens_total == 90 and ph.input_tokens_total == 180
    assert ph.output_token_throughput_per_s == pytest.approx(90 / ph.duration_s)
    assert ph.request_throughput_per_s == pytest.approx(9 / ph.duration_s)
    assert ph.goodput_requests_per_s == pytest.approx(8 / ph.duration_s)
    assert ph.goodput_output_tokens_per_s == pytest.approx(80 / ph.duration_s)
    assert ph.slo_attainment_fraction == pytest.approx(8 / 12)  # 8 good of 10 sent + 2 dropped
    assert ph.meets_slo is False
    assert ph.ttft.p50_ms == 100 and ph.tpot.p50_ms == pytest.approx(10)
    # the 11th of 12 ranked (ceil(0.9 x 12)): past the 8 good, the TTFT miss (1.5), then the failed and dropped
    assert ph.slo_ratio_at_target is None
    assert summarize_phase(0, "x", {"users": 2}, recs[:9], [], slo, 0.9, 4.0).slo_ratio_at_target == \
        pytest.approx(300 / 200)


def test_warmup_requests_are_left_out_and_retries_counted():
    slo = SLOConfig(ttft_ms=200, tpot_ms=50)
    warm = [_req(900, 1000, 10, t0=t) for t in (0.0, 0.4, 0.9)]  # slow and inside the first second
    steady = [_req(100, 190, 10, t0=1.0 + i * 0.5) for i in range(6)]
    steady[0]["retried"] = True
    warm[0]["retried"] = True  # a retry during the warm-up is left out with its request
    share = [{"start_unix": 0.0, "dispatch_end_unix": 4.0, "dropped_arrivals": 0, "request_cap_reached": False,
              "cancelled_at_drain_timeout": 0}]
    ph = summarize_phase(0, "x", {"users": 1}, warm + steady, share, slo, 0.9, 4.0, warmup_s=1.0)
    assert ph.requests_warmup_excluded == 3 and ph.requests_sent == 6 and ph.requests_retried == 1
    assert ph.duration_s == pytest.approx(3.0) and ph.dispatch_s == pytest.approx(3.0)
    assert ph.ttft.max_ms == 100 and ph.meets_slo is True
    # the steady requests' 60 tokens, and the warm-up's generated after 1 s: the first one ended at 1.0 s; the
    # other two gave their first token (at 1.3 and 1.8 s) and all of their 10 after it
    assert ph.output_token_throughput_per_s == pytest.approx((60 + 20) / 3.0)
    assert ph.output_tokens_total == 60  # totals and means stay those of the measured requests
    whole = summarize_phase(0, "x", {"users": 1}, warm + steady, share, slo, 0.9, 4.0)
    assert whole.requests_warmup_excluded == 0 and whole.requests_sent == 9 and whole.requests_retried == 2
    assert whole.meets_slo is False


def test_goodput_counts_the_warmups_good_requests_as_the_throughput_does():
    """Every request meets the SLO: goodput in tokens equals the output throughput, the warm-up's requests
    counted by the tokens they generated inside the measured time; one that misses the SLO is not counted."""
    slo = SLOConfig(ttft_ms=200, tpot_ms=50)
    warm = [_req(100, 1000, 10, t0=t) for t in (0.2, 0.5)]  # TPOT 100 ms: misses the TPOT limit
    warm[1]["e2e_ms"], warm[1]["t_end_unix"] = 460, 0.5 + 0.46  # TPOT 40 ms, but over before 1.0 s
    warm_good = [_req(100, 460, 10, t0=0.8)]  # first token at 0.9 s, end at 1.26 s: 10 x 0.26 / 0.36 after 1.0 s
    steady = [_req(100, 190, 10, t0=1.0 + i * 0.5) for i in range(6)]
    share = [{"start_unix": 0.0, "dispatch_end_unix": 4.0, "dropped_arrivals": 0, "request_cap_reached": False,
              "cancelled_at_drain_timeout": 0}]
    ph = summarize_phase(0, "x", {"users": 2}, warm + warm_good + steady, share, slo, 0.9, 4.0, warmup_s=1.0)
    in_window_good = 10 * 0.26 / 0.36
    in_window_bad = 10 * (1.2 - 1.0) / 0.9  # the slow one's first token at 0.3 s, end at 1.2 s
    assert ph.requests_sent == 6 and ph.duration_s == pytest.approx(3.0)
    assert ph.output_token_throughput_per_s == pytest.approx((60 + in_window_good + in_window_bad) / 3.0)
    assert ph.goodput_output_tokens_per_s == pytest.approx((60 + in_window_good) / 3.0)
    assert ph.goodput_requests_per_s == pytest.approx(6 / 3.0)  # requests: the measured ones alone
    every_good = summarize_phase(0, "x", {"users": 2}, warm_good + steady, share, slo, 0.9, 4.0, warmup_s=1.0)
    assert every_good.goodput_output_tokens_per_s == pytest.approx(every_good.output_token_throughput_per_s)


def test_tokens_between_two_times_spread_over_each_request_decode():
    from packager.loadtest.metrics import tokens_between

    straddling = _req(100, 1000, 9, t0=0.5)  # first token at 0.6 s, end at 1.5 s: 5 of its 9 tokens after 1.0 s
    later = _req(400, 500, 10, t0=0.8)  # first token at 1.2 s: all of it, its prompt too
    done = _req(100, 200, 10, t0=0.0)  # over by 0.2 s
    failed = _req(100, 900, 10, t0=0.5, ok=False)
    tin, tout = tokens_between([straddling, later, done, failed], 1.0, 10.0)
    assert tin == 10 and tout == pytest.approx(9 * 0.5 / 0.9 + 10)
    # and no further than the measured time's end: half of `later`'s decode (1.2 to 1.3 s) lies before 1.25 s
    tin, tout = tokens_between([later], 1.0, 1.25)
    assert tin == 10 and tout == pytest.approx(5)


def test_warmup_must_be_shorter_than_a_phase():
    from packager.errors import ConfigError
    from packager.loadtest.config import parse_loadtest_config

    with pytest.raises(ConfigError, match="leaves nothing"):
        parse_loadtest_config({"warmup_s": 5, "profile": {"kind": "concurrency", "duration_s": 5}})
    with pytest.raises(ConfigError, match="leaves nothing"):
        parse_loadtest_config({"warmup_s": 10, "profile": {"kind": "sweep", "step_duration_s": 8}})
    assert parse_loadtest_config({"warmup_s": 2, "profile": {"kind": "rate", "duration_s": 5}}).warmup_s == 2


def _phase(load, meets, out_tps):
    slo = SLOConfig(ttft_ms=200, tpot_ms=50)
    ttft = 100 if meets else 1000
    recs = [_req(ttft, ttft + 90, 10, t0=0.0)]
    ph = summarize_phase(int(load), f"{load} req/s", {"requests_per_s": load}, recs,
                         [{"start_unix": 0.0, "dispatch_end_unix": 1.0}], slo, 0.9, 1.0)
    return ph.model_copy(update={"output_token_throughput_per_s": out_tps, "input_token_throughput_per_s": out_tps * 2})


def test_sweep_highest_load_meeting_slo_and_cost():
    phases = [_phase(1, True, 100.0), _phase(2, True, 180.0), _phase(4, False, 250.0), _phase(3, True, 200.0)]
    best = highest_load_meeting_slo(phases)
    assert best is not None and best.load == {"requests_per_s": 3.0}
    sw = sweep_result("rate", phases, 0.9)
    assert sw.highest_load_meeting_slo == {"requests_per_s": 3.0} and sw.peak_output_token_throughput_per_s == 250.0
    quote = PriceQuote(usd_per_hour=3.6, instance="x", source="test")
    c = cost_result(quote, phases, sweep=True, utilisation_fraction=1.0)
    # 3.6 $/h over 250 tok/s = 900,000 tok/h -> $4 per 1M; over 200 tok/s -> $5 per 1M
    assert c.at_measured_throughput.usd_per_million_output_tokens == pytest.approx(4.0)
    assert c.at_measured_throughput.usd_per_million_input_tokens == pytest.approx(2.0)
    assert c.at_measured_throughput.usd_per_million_total_tokens == pytest.approx(3.6 / (750 * 3600) * 1e6)
    assert c.at_slo_limited_throughput is not None
    assert c.at_slo_limited_throughput.usd_per_million_output_tokens == pytest.approx(5.0)
    assert c.at_slo_limited_throughput.phase_index == 3
    none_ok = [_phase(1, False, 10.0)]
    assert highest_load_meeting_slo(none_ok) is None
    assert cost_result(quote, none_ok, sweep=True, utilisation_fraction=1.0).at_slo_limited_throughput is None


def test_usd_per_million_tokens_formula():
    assert usd_per_million_tokens(3.6, 1000.0) == pytest.approx(1.0)
    assert usd_per_million_tokens(3.6, 1000.0, utilisation_fraction=0.5) == pytest.approx(2.0)
    assert usd_per_million_tokens(0.1785, 410.0) == pytest.approx(0.1785 / (410 * 3600) * 1e6)
    assert usd_per_million_tokens(1.0, 0.0) is None
    from packager.errors import ConfigError

    with pytest.raises(ConfigError, match="-1"):
        usd_per_million_tokens(-1.0, 10.0)
    with pytest.raises(ConfigError, match="utilisation"):
        usd_per_million_tokens(1.0, 10.0, utilisation_fraction=0.0)


def test_the_slo_ratio_at_the_target_says_whether_a_phase_meets_the_slo():
    """slo_ratio <= 1 exactly when a request meets the SLO, and the ratio at the target's rank <= 1 exactly when
    the attainment reaches the target, for any mix of requests, drops and targets."""
    slo = SLOConfig(ttft_ms=200, tpot_ms=50)
    assert slo_ratio(_req(ttft=100, e2e=100 + 9 * 40, out=10), slo) == pytest.approx(0.8)  # TPOT 40 of 50
    assert slo_ratio(_req(ttft=300, e2e=310, out=2), slo) == pytest.approx(1.5)  # TTFT 300 of 200
    assert slo_ratio(_req(ttft=100, e2e=100, out=1), slo) == pytest.approx(0.5)  # one token: TTFT alone
    assert slo_ratio(_req(ttft=10, e2e=20, out=5, ok=False), slo) == float("inf")
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 30))
        recs = []
        for _ in range(n):
            ttft = float(rng.uniform(50, 300))
            recs.append(_req(ttft=ttft, e2e=ttft + float(rng.uniform(0, 600)), out=int(rng.integers(1, 12)),
                             ok=bool(rng.random() < 0.9)))
        dropped, target = int(rng.integers(0, 3)), float(rng.choice([0.5, 0.9, 0.95, 1.0]))
        ratios = [slo_ratio(r, slo) for r in recs]
        assert [x <= 1 for x in ratios] == [meets_slo(r, slo) for r in recs]
        attained = sum(meets_slo(r, slo) for r in recs) / (n + dropped) >= target
        v = slo_ratio_at_target(ratios, dropped, target)
        assert (v is not None and v <= 1) == attained
    assert slo_ratio_at_target([], 0, 0.9) is None


def test_token_rates_are_read_after_the_ramp_and_latencies_from_every_request():
    """Users started one by one over the first second: the token rates are those of the time after it, when every
    user was in; each request, the ramp's too, is judged on its latencies."""
    slo = SLOConfig(ttft_ms=200, tpot_ms=50)
    ramp = [_req(100, 190, 10, t0=t) for t in (0.0, 0.5)]  # first tokens at 0.1 and 0.6 s: all before 1.0 s
    ramp.append(_req(100, 1000, 10, t0=0.8))  # first token at 0.9 s, end at 1.8 s: 10 x 0.8 / 0.9 after 1.0 s
    later = [_req(100, 190, 10, t0=1.0 + i * 0.5) for i in range(6)]
    share = [{"start_unix": 0.0, "dispatch_end_unix": 4.0, "dropped_arrivals": 0, "request_cap_reached": False,
              "cancelled_at_drain_timeout": 0}]
    ph = summarize_phase(0, "x", {"users": 3}, ramp + later, share, slo, 0.9, 4.0, ramp_s=1.0)
    assert ph.requests_sent == 9 and ph.requests_warmup_excluded == 0 and ph.duration_s == pytest.approx(4.0)
    assert ph.output_token_throughput_per_s == pytest.approx((60 + 10 * 0.8 / 0.9) / 3.0)
    assert ph.input_token_throughput_per_s == pytest.approx(6 * 10 / 3.0)  # prompts whose first token came after
    # the slow one (TPOT 100 ms) is judged and counted out of the goodput, in tokens as in requests
    assert ph.goodput_output_tokens_per_s == pytest.approx(60 / 3.0)
    assert ph.slo_attainment_fraction == pytest.approx(8 / 9) and ph.ttft.max_ms == 100
    flat = summarize_phase(0, "x", {"users": 3}, ramp + later, share, slo, 0.9, 4.0)
    assert flat.output_token_throughput_per_s == pytest.approx(90 / 4.0)


def test_each_users_first_request_is_its_warm_up_unless_no_user_got_further():
    slo = SLOConfig(ttft_ms=200, tpot_ms=50)
    # queued behind each other; the first ends at 0.95 s, before the ramp's end
    firsts = [dict(_req(850, 950, 10, t0=0.0), first_of_user=True), dict(_req(900, 1000, 10, t0=0.5),
                                                                         first_of_user=True)]
    later = [_req(100, 190, 10, t0=1.5 + i * 0.5) for i in range(4)]
    share = [{"start_unix": 0.0, "dispatch_end_unix": 4.0, "dropped_arrivals": 0, "request_cap_reached": False,
              "cancelled_at_drain_timeout": 0}]
    ph = summarize_phase(0, "x", {"users": 2}, firsts + later, share, slo, 0.9, 4.0, ramp_s=1.0)
    assert (ph.requests_sent, ph.requests_first_excluded, ph.requests_warmup_excluded) == (4, 2, 0)
    assert ph.meets_slo is True and ph.ttft.max_ms == 100 and ph.slo_attainment_fraction == 1.0
    # the second first request's 10 tokens came between 1.4 and 1.5 s, after the ramp: they count
    assert ph.output_token_throughput_per_s == pytest.approx((40 + 10) / 3.0)
    assert ph.request_throughput_per_s == pytest.approx(5 / 3.0)  # ended between 1.0 and 4.0 s
    # no user past its first request: those are judged, not nothing
    alone = summarize_phase(0, "x", {"users": 2}, firsts, share, slo, 0.9, 4.0, ramp_s=1.0)
    assert alone.requests_sent == 2 and alone.requests_first_excluded == 0 and alone.meets_slo is False


def test_rates_run_until_the_first_user_stops():
    """Two users of a 2 s phase whose first requests (the warm-up) end after it: each sends one more. The server
    ran at the whole load until user 1's last request ended at 3.2 s, so the rates cover 0.5 to 3.2 s, the first
    wave's tail and the judged requests alike; user 0's last one, alone after 3.2 s, does not count."""
    from packager.loadtest.metrics import full_load_end

    slo = SLOConfig(ttft_ms=1000, tpot_ms=200)
    u0 = [dict(_req(900, 1900, 11, t0=0.0), first_of_user=True, user=0), dict(_req(300, 1800, 16, t0=1.9), user=0)]
    u1 = [dict(_req(900, 1800, 10, t0=0.5), first_of_user=True, user=1), dict(_req(200, 900, 8, t0=2.3), user=1)]
    share = [{"start_unix": 0.0, "dispatch_end_unix": 2.0, "dropped_arrivals": 0, "request_cap_reached": False,
              "cancelled_at_drain_timeout": 0}]
    assert full_load_end(u0 + u1, 2.0) == pytest.approx(3.2)
    assert full_load_end([_req(100, 200, 5)], 2.0) == 2.0  # no user named: the dispatch's end
    ph = summarize_phase(0, "x", {"users": 2}, u0 + u1, share, slo, 0.9, 2.0, ramp_s=0.5)
    assert (ph.requests_sent, ph.requests_first_excluded) == (2, 2)
    # tokens spread over each request's decode (first token to end): u0's first 11 (0.9-1.9 s) and u1's 10
    # (1.4-2.3 s) whole, u0's second 16 (2.2-3.7 s) for 1.0 of its 1.5 s, u1's second 8 (2.5-3.2 s) whole
    assert ph.output_token_throughput_per_s == pytest.approx((11 + 10 + 16 * (1.0 / 1.5) + 8) / 2.7)
    assert ph.request_throughput_per_s == pytest.approx(3 / 2.7)  # ended between 0.5 and 3.2 s: all but u0's last
