"""The capacity search (packager.loadtest.knee): the bisection on made-up phases, and a real search with locust
against the fake server, whose hard limit puts the knee at a known load whatever the machine's speed."""
from __future__ import annotations

import json

import pytest

from packager.config import PricingConfig, SLOConfig
from packager.errors import ConfigError
from packager.loadtest.config import KneeSearch, parse_loadtest_config
from packager.loadtest.knee import bracket, estimate_knee, next_load, replicas_needed, search_knee
from packager.loadtest.result import KneeProbe, LatencySummary, PhaseResult


def _phase(load: float, meets: bool, tps: float = 100.0, mode: str = "users", ratio: float | None = None) -> PhaseResult:
    lat = LatencySummary(count=1, p50_ms=10.0, p95_ms=20.0)
    return PhaseResult(
        index=0, label=f"{load:g}", load={mode: float(load)}, dispatch_s=1.0, duration_s=1.0, requests_sent=10,
        requests_ok=10, requests_failed=0, requests_missing_usage=0, dropped_arrivals=0, request_cap_reached=False,
        cancelled_at_drain_timeout=0, errors_by_kind={}, request_throughput_per_s=1.0, input_tokens_total=1,
        output_tokens_total=1, input_tokens_mean=1.0, output_tokens_mean=1.0, input_token_throughput_per_s=1.0,
        output_token_throughput_per_s=tps, ttft=lat, itl=lat, tpot=lat, e2e=lat, dispatch_lag=LatencySummary(),
        goodput_requests_per_s=1.0, goodput_output_tokens_per_s=tps, goodput_input_tokens_per_s=1.0,
        slo_attainment_fraction=1.0 if meets else 0.2, meets_slo=meets, slo_ratio_at_target=ratio)


def _server(capacity: float, mode: str = "users"):
    """A probe against a server that meets the SLOs up to `capacity`; tokens/s = 10 x load."""
    seen: list[float] = []

    def probe(load: float):
        seen.append(load)
        return _phase(load, load <= capacity, 10.0 * load, mode), f"knee/{len(seen):02d}"

    return probe, seen


def test_bisection_finds_the_last_user_count_that_meets_the_slos_and_prices_it():
    probe, seen = _server(capacity=11)
    sweep = [_phase(1, True, 10.0), _phase(4, True, 40.0), _phase(16, False, 90.0)]
    k = search_knee("concurrency", sweep, probe, KneeSearch(enabled=True, precision=0.01, max_probes=10),
                    probe_s=10, usd_per_hour=3.6)
    assert seen == [10, 13, 11, 12] and (k.knee, k.first_failing) == (11, 12) and k.resolved
    assert [p.source for p in k.probes] == ["sweep"] * 3 + ["probe"] * 4 and k.probes[-1].run_dir == "knee/04"
    assert k.output_tokens_per_s_at_knee == 110.0 and k.dispatch_s == 40
    # 3.6 $/h over 110 tok/s (396,000 tok/h): $9.09 per 1M output tokens
    assert k.usd_per_million_output_tokens_at_knee == pytest.approx(3.6 / (110 * 3600) * 1e6)


def test_the_precision_and_the_budget_stop_the_search():
    probe, seen = _server(capacity=11)
    sweep = [_phase(4, True), _phase(16, False)]
    coarse = search_knee("concurrency", sweep, probe, KneeSearch(enabled=True, precision=0.5), probe_s=10,
                         usd_per_hour=None)
    # 4..16 -> 10 met, 10..16 is 6 wide (> 0.5 x 10) -> 13 missed; 10..13 is within half of 10: done
    assert seen == [10, 13] and coarse.knee == 10 and coarse.first_failing == 13 and coarse.resolved
    assert coarse.usd_per_million_output_tokens_at_knee is None
    seen.clear()
    short = search_knee("concurrency", sweep, probe, KneeSearch(enabled=True, precision=0.01, budget_s=25),
                        probe_s=10, usd_per_hour=1.0)
    assert len(seen) == 2 and not short.resolved and "budget" in short.stopped_because and short.dispatch_s == 20


def test_a_sweep_that_never_missed_is_extended_by_doubling_and_none_that_met_looks_below():
    probe, seen = _server(capacity=50)
    k = search_knee("concurrency", [_phase(4, True), _phase(16, True)], probe,
                    KneeSearch(enabled=True, precision=0.01, max_probes=10), probe_s=1, usd_per_hour=None)
    assert seen == [32, 64, 48, 56, 52, 50, 51] and k.knee == 50 and k.first_failing == 51 and k.resolved
    probe, seen = _server(capacity=50)
    k = search_knee("concurrency", [_phase(16, True)], probe, KneeSearch(enabled=True, extend_factor=1), probe_s=1,
                    usd_per_hour=None)
    assert seen == [] and k.knee == 16 and k.first_failing is None and not k.resolved
    assert k.stopped_because.startswith("no load missed the SLOs, up to 16")
    probe, seen = _server(capacity=500)  # never reached: the search stops at 3 x the highest step
    k = search_knee("concurrency", [_phase(16, True)], probe, KneeSearch(enabled=True, extend_factor=3,
                                                                          max_probes=10), probe_s=1, usd_per_hour=None)
    assert seen == [32, 48] and k.knee == 48 and k.first_failing is None and "up to 48" in k.stopped_because
    probe, seen = _server(capacity=0)  # not even one user
    k = search_knee("concurrency", [_phase(4, False)], probe, KneeSearch(enabled=True), probe_s=1,
                    usd_per_hour=None)
    assert seen == [2, 1] and k.knee is None and k.first_failing == 1 and "1 user" in k.stopped_because


def test_open_loop_rates_are_bisected_without_rounding():
    probe, seen = _server(capacity=3.3, mode="requests_per_s")
    sweep = [_phase(1, True, mode="requests_per_s"), _phase(8, False, mode="requests_per_s")]
    k = search_knee("rate", sweep, probe, KneeSearch(enabled=True, precision=0.1, max_probes=10), probe_s=1,
                    usd_per_hour=None)
    assert seen[:2] == [4.5, 2.75] and k.resolved
    assert k.knee <= 3.3 < k.first_failing and k.first_failing - k.knee <= 0.1 * k.knee


def test_bracket_and_next_load_follow_the_newest_contradiction():
    def pr(load, ok):
        return KneeProbe(load=load, source="probe", meets_slo=ok, slo_attainment_fraction=1.0,
                         output_tokens_per_s=1.0, goodput_output_tokens_per_s=1.0, ttft_ms_p95=None, tpot_ms_p50=None)

    assert bracket([pr(4, True), pr(8, False), pr(16, True)]) == (16, None)  # a later step met them: above
    assert bracket([pr(4, True), pr(8, False), pr(2, False)]) == (4, 8)
    assert next_load(4, 5, True, 0.01, 64) is None and next_load(4, 6, True, 0.01, 64) == 5
    assert next_load(None, None, True, 0.1, 64) is None and next_load(3, None, False, 0.1, 4.5) == 4.5


def test_replicas_needed_for_the_expected_traffic():
    assert replicas_needed(30, 11) == 3  # 30 users at 11 per replica
    assert replicas_needed(11, 11) == 1 and replicas_needed(11.5, 11) == 2
    assert replicas_needed(0.3 * 3, 0.3) == 3  # 0.9000000000000001 / 0.3: float noise buys no fourth replica
    assert replicas_needed(0.5, 11) == 1  # at least one


def test_the_search_needs_a_sweep_and_room_for_a_probe():
    with pytest.raises(ConfigError, match="searches between the steps of a sweep"):
        parse_loadtest_config({"knee": {"enabled": True}, "profile": {"kind": "concurrency"}})
    with pytest.raises(ConfigError, match="shorter than one"):
        parse_loadtest_config({"knee": {"enabled": True, "budget_s": 5},
                               "profile": {"kind": "sweep", "step_duration_s": 10}})
    with pytest.raises(ConfigError, match="knee probe"):
        parse_loadtest_config({"warmup_s": 3, "knee": {"enabled": True, "probe_duration_s": 2},
                               "profile": {"kind": "sweep", "step_duration_s": 10}})
    with pytest.raises(ConfigError, match="precision"):
        parse_loadtest_config({"knee": {"enabled": True, "precision": 0}, "profile": {"kind": "sweep"}})


def test_a_real_search_with_locust_finds_the_fake_servers_hard_limit(fake_server, run_lt, tmp_path):
    """The fake refuses (429) any request beyond 3 in flight: up to 3 closed-loop users never see a refusal, 4 or
    more are refused most of the time (a refused user sends again at once). So the knee is 3 users on any machine;
    the SLO limits are far above the fake's delays."""
    fake_server.configure(ttft_ms=20, itl_ms=5, output_tokens=8, refuse_above_in_flight=3)
    r = run_lt(fake_server.base_url, tmp_path / "k", slo=SLOConfig(ttft_ms=2000, tpot_ms=500),
               pricing=PricingConfig(instance=None, usd_per_hour=1.8),
               profile={"kind": "sweep", "mode": "concurrency", "values": [1, 8], "step_duration_s": 2},
               knee={"enabled": True, "precision": 0.1, "budget_s": 20})
    k = r.knee
    assert k is not None and (k.knee, k.first_failing, k.resolved) == (3, 4, True)
    assert [p.load for p in k.probes if p.source == "probe"] == [4, 2, 3]
    assert k.usd_per_million_output_tokens_at_knee == pytest.approx(
        1.8 / (k.output_tokens_per_s_at_knee * 3600) * 1e6)
    offsets = []
    for p in k.probes[2:]:
        saved = json.loads((tmp_path / "k" / p.run_dir / "loadtest.json").read_text())
        assert saved["phases"][0]["load"] == {"users": p.load} and saved["knee"] is None
        offsets.append(saved["config"]["pool_offset"])
    # each probe reads the pool from where the sweep and the probes before it stopped
    sweep_sent = sum(ph.requests_sent for ph in r.phases)
    assert offsets[0] == sweep_sent and offsets[0] < offsets[1] < offsets[2]
    assert json.loads((tmp_path / "k" / "loadtest.json").read_text())["knee"]["knee"] == 3
    assert (tmp_path / "k" / "sweep.png").stat().st_size > 10_000


def test_the_console_says_how_far_the_search_may_go_and_what_it_found():
    from packager.cli.loadtest import bounds_line
    from packager.loadtest.render import knee_line

    cfg = parse_loadtest_config({"profile": {"kind": "sweep", "mode": "concurrency", "values": [1, 4, 16]},
                                 "knee": {"enabled": True, "budget_s": 40, "max_probes": 4, "probe_duration_s": 10}})
    assert bounds_line(cfg).endswith("; then a capacity search: at most 4 probes within 40 s, up to 64 users")
    assert "capacity search" not in bounds_line(parse_loadtest_config({"profile": {"kind": "sweep"}}))
    probe, _ = _server(capacity=11)
    k = search_knee("concurrency", [_phase(4, True), _phase(16, False)], probe,
                    KneeSearch(enabled=True, precision=0.01, max_probes=10), probe_s=10, usd_per_hour=None)

    class R:  # knee_line reads .knee only
        knee = k

    assert knee_line(R()) == ("Capacity at the SLO (search): 11 users (12 missed; 4 probes, 40 s; the bracket is within "
                              "the precision), 110.0 output tok/s.")


def test_set_knee_fields_from_the_command_line():
    from packager.cli.loadtest import build_loadtest_dict, parse_set

    lt = build_loadtest_dict({"knee": {"budget_s": 30}}, "sweep",
                             parse_set(["values=[1,4]", "knee.enabled=true", "knee.max_probes=3"]),
                             None, None, None, None, None, None, {})
    assert lt["profile"] == {"kind": "sweep", "values": [1, 4]}
    assert lt["knee"] == {"budget_s": 30, "enabled": True, "max_probes": 3}
    cfg = parse_loadtest_config(lt)
    assert cfg.knee.enabled and cfg.knee.max_probes == 3 and cfg.knee.budget_s == 30


def test_a_failed_probe_stops_the_search_but_keeps_the_sweep(tmp_path):
    """A probe that cannot run (the server went away) leaves the sweep's result as it was, with a warning."""
    from packager.errors import ServerError
    from packager.loadtest.knee import probe_config
    from packager.loadtest.result import GeneratorResult, LoadTestResult
    from packager.loadtest.runner import _add_knee

    cfg = parse_loadtest_config({"profile": {"kind": "sweep", "mode": "concurrency", "values": [1, 4],
                                             "step_duration_s": 5}, "knee": {"enabled": True}})
    phases = [_phase(1, True), _phase(4, False)]
    res = LoadTestResult(created_unix=0.0, target_url="http://127.0.0.1:9", model="m", config=cfg.model_dump(),
                         slo=SLOConfig(), pricing=PricingConfig(), slo_attainment_target=0.9, phases=phases,
                         summary=phases[0], summary_basis="x", generator=GeneratorResult(
                             processes=[], cpu_fraction_of_core_max=None, cpu_limit_fraction=0.8,
                             dispatch_lag_ms_p99=None, bottleneck_suspected=False),
                         complete=True, wall_time_s=1.0, prompt_format="completion")
    seen = []

    def run_one(c, d):
        seen.append((c.profile.users, c.prompt_format, c.max_duration_s, d.name, c.seed, c.pool_offset))
        raise ServerError("Cannot reach http://127.0.0.1:9/v1/models")

    logs: list[str] = []
    _add_knee(res, tmp_path, run_one, logs.append)
    # the sweep's format and step length; prompts the server has not seen: another seed, after the sweep's 20
    assert seen == [(2, "completion", 5.0, "01-2", 1000, 20)]
    assert res.knee is None and res.warnings == ["capacity search stopped: Cannot reach http://127.0.0.1:9/v1/models"]
    assert json.loads((tmp_path / "loadtest.json").read_text())["warnings"] == res.warnings
    assert probe_config(cfg, 3, 7).prompt_format == "auto" and probe_config(cfg, 3, 7, "chat").prompt_format == "chat"


def _curved_server(capacity: float, power: float = 1.0):
    """A server whose SLO ratio grows as (load / capacity) ** power: exactly 1 at the capacity (met), above it missed
    (power 1: latency linear in the users, as a saturated closed loop)."""
    seen: list[float] = []

    def at(load: float) -> PhaseResult:
        r = (load / capacity) ** power
        return _phase(load, r <= 1.0, 10.0 * load, ratio=r)

    def probe(load: float):
        seen.append(load)
        return at(load), f"knee/{len(seen):02d}"

    return at, probe, seen


@pytest.mark.parametrize("capacity", [5.0, 19.0, 23.0, 37.0, 44.0, 61.0])
def test_guided_probes_find_the_same_knee_as_bisection_in_fewer_probes(capacity):
    """The release's default shape: a sweep of 1, 4, 16 users that all met, doubling above, precision 0.1."""
    results = {}
    for guided in (False, True):
        at, probe, seen = _curved_server(capacity)
        cfg = KneeSearch(enabled=True, precision=0.1, max_probes=20, guided=guided)
        k = search_knee("concurrency", [at(1), at(4), at(16)], probe, cfg, probe_s=10, usd_per_hour=None)
        assert k.resolved and k.knee is not None and k.first_failing is not None
        assert k.knee <= capacity < k.first_failing  # the bracket holds the true knee
        assert k.first_failing - k.knee <= max(1.0, 0.1 * k.knee)
        results[guided] = len(seen)
    assert results[True] <= results[False]
    if capacity > 16:  # a bracket that needed narrowing: two guided probes after the doubling closed it
        assert results[True] < results[False]


def test_an_estimate_that_keeps_missing_falls_back_to_bisection():
    """A ratio that barely moves until a cliff well above the estimate: the guided probes creep up from below;
    after two in a row that met, the search bisects, and still ends resolved on the true knee."""
    counts = {}
    for guided in (False, True):
        seen: list[float] = []

        def at(load: float) -> PhaseResult:
            r = 0.95 if load <= 50 else 100.0
            return _phase(load, r <= 1.0, ratio=r)

        def probe(load: float):
            seen.append(load)
            return at(load), None

        k = search_knee("concurrency", [at(10), at(100)], probe,
                        KneeSearch(enabled=True, precision=0.05, max_probes=20, guided=guided), probe_s=10,
                        usd_per_hour=None)
        assert k.resolved and k.knee is not None and k.first_failing is not None
        assert k.knee <= 50 < k.first_failing and k.first_failing - k.knee <= 0.05 * k.knee
        counts[guided] = list(seen)
    # 10 (0.95) .. 100 (100): the estimate sits near 10 -> 11 met; again -> 12 met; two on one side: bisect on
    assert counts[True][:3] == [11, 12, 56]
    assert len(counts[True]) <= len(counts[False]) + 2


def test_estimate_and_next_load_with_an_estimate():
    probes = [KneeProbe(load=32, source="sweep", meets_slo=True, slo_attainment_fraction=1.0, output_tokens_per_s=1,
                        goodput_output_tokens_per_s=1, ttft_ms_p95=None, tpot_ms_p50=None, slo_ratio_at_target=0.5),
              KneeProbe(load=64, source="probe", meets_slo=False, slo_attainment_fraction=0.1, output_tokens_per_s=1,
                        goodput_output_tokens_per_s=1, ttft_ms_p95=None, tpot_ms_p50=None, slo_ratio_at_target=8.0)]
    # linear: 0.5 / 7.5 of the way from 32 to 64; in the logarithm: ln 2 / ln 16 = 1/4 of the way
    assert estimate_knee(probes, 32, 64) == pytest.approx(32 + 32 / 15)
    assert estimate_knee(probes, 32, 64, log=True) == pytest.approx(40.0)
    assert estimate_knee(probes, None, 64) is None and estimate_knee(probes[:1], 32, 64) is None
    assert next_load(32, 64, True, 0.1, 1e9, estimate=40.2) == 40
    # kept at least the precision (3.2 users of 32) from either end
    assert next_load(32, 64, True, 0.1, 1e9, estimate=32.5) == 35
    assert next_load(32, 64, True, 0.1, 1e9, estimate=63.9) == 61
    assert next_load(32, 64, True, 0.1, 1e9, estimate=None) == 48
    # open loop: not rounded; a bracket already within the precision needs no probe, estimate or not
    assert next_load(2.0, 4.0, False, 0.1, 1e9, estimate=2.5) == pytest.approx(2.5)
    assert next_load(40, 44, True, 0.1, 1e9, estimate=42) is None


# The SLO ratio measured on vLLM CPU serving the baseline (benchmarks/results/knee_guided.json, its earlier_run: the
# release's sweep and the fine sweep), users -> ratio; between the points it is read linearly.
_MEASURED = [(1, 0.14), (4, 0.166), (16, 0.39), (24, 0.689), (28, 0.777), (32, 0.725), (36, 0.96), (40, 1.063),
             (44, 1.085), (48, 1.336), (52, 1.537), (56, 1.463), (60, 1.449), (64, 1.718)]


def _measured_ratio(load: float) -> float:
    for (x0, y0), (x1, y1) in zip(_MEASURED, _MEASURED[1:]):
        if x0 <= load <= x1:
            return y0 + (y1 - y0) * (load - x0) / (x1 - x0)
    return _MEASURED[-1][1] * load / _MEASURED[-1][0]


def test_the_release_default_search_brackets_the_measured_knee_within_its_precision():
    """The release's default search (sweep 1, 4, 16; at most 5 probes, precision 0.1) on the measured curve, whose
    ratio crosses 1 near 37.6 users: guided, the bracket closes on it; the same budget of bisection stops short."""
    from packager.release.estimate import default_loadtest

    knee_cfg = KneeSearch.model_validate(default_loadtest()["knee"])
    found = {}
    for guided in (True, False):
        seen: list[float] = []

        def at(load: float) -> PhaseResult:
            r = _measured_ratio(load)
            return _phase(load, r <= 1.0, ratio=r)

        def probe(load: float):
            seen.append(load)
            return at(load), None

        found[guided] = search_knee("concurrency", [at(1), at(4), at(16)], probe,
                                    knee_cfg.model_copy(update={"guided": guided}), probe_s=10, usd_per_hour=None)
        assert len(seen) <= knee_cfg.max_probes
    k = found[True]
    assert k.resolved and k.knee is not None and k.first_failing is not None
    assert k.knee <= 37.6 < k.first_failing and k.first_failing - k.knee <= 0.1 * k.knee
    assert not found[False].resolved
