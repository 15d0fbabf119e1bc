"""LoadTestResult -> LoadSummary, on results produced by packager.loadtest's own analysis (analyse_run_dir) from
hand-written request records: one operating point, consistent cost, sweep points, samples of that phase."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from packager.config import PricingConfig, SLOConfig
from packager.report.analysis import consistency_problems, pareto_frontier, recommend
from packager.report.loadsummary import from_loadtest_result, latency_samples, thin_samples
from packager.report.model import Report, VariantResult

T0 = 1_700_000_000.0
SLO = SLOConfig(ttft_ms=2000.0, tpot_ms=250.0)


def write_run(run_dir: Path, profile: dict, phases: list[dict], usd_per_hour: float = 0.5,
              utilisation: float = 1.0) -> None:
    """plan.json (from the real plan builder) and records.jsonl with, per phase, `n` requests of the given
    TTFT/TPOT/output length (`fail` more failed), `duration_s` long."""
    from packager.loadtest.config import LoadTestConfig
    from packager.loadtest.plan import build_plan

    # records spread evenly over each phase, none a user's first: no ramp to read the rates after
    cfg = LoadTestConfig.model_validate({"profile": profile, "max_duration_s": 600, "ramp_fraction": 0,
                                         "utilisation_fraction": utilisation})
    plan = build_plan(cfg, "http://127.0.0.1:9", "m")
    plan["meta"] = {"loadtest_config": cfg.model_dump(mode="json"), "slo": SLO.model_dump(mode="json"),
                    "pricing": PricingConfig(instance=None, usd_per_hour=usd_per_hour).model_dump(mode="json")}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(json.dumps(plan))
    lines = []
    for k, ph in enumerate(phases):
        start = T0 + 100 * k
        dur = ph["duration_s"]
        n = ph["n"]
        for i in range(n):
            ttft = ph["ttft"] + i  # distinct values
            out = ph.get("out", 33)
            e2e = ttft + ph["tpot"] * (out - 1)
            t_s = start + dur * i / n
            lines.append({"type": "request", "phase": k, "share": 0, "ok": True, "status": 200, "error_kind": None,
                          "ttft_ms": ttft, "itl_ms": [ph["tpot"]] * (out - 1), "e2e_ms": e2e, "input_tokens": 100,
                          "output_tokens": out, "usage_present": True, "dispatch_lag_ms": 0.1,
                          "t_start_unix": t_s, "t_end_unix": min(t_s + e2e / 1000, start + dur)})
        for i in range(ph.get("fail", 0)):
            lines.append({"type": "request", "phase": k, "share": 0, "ok": False, "status": 500,
                          "error_kind": "http_500", "ttft_ms": None, "itl_ms": [], "e2e_ms": 5.0,
                          "input_tokens": None, "output_tokens": None, "usage_present": False,
                          "dispatch_lag_ms": 0.1, "t_start_unix": start, "t_end_unix": start + 0.01})
        lines.append({"type": "phase_summary", "phase": k, "share": 0, "shares": 1, "start_unix": start,
                      "dispatch_end_unix": start + dur, "drain_end_unix": start + dur, "dropped_arrivals": 0,
                      "request_cap_reached": False, "cancelled_at_drain_timeout": 0})
    (run_dir / "records.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def analyse(run_dir: Path):
    from packager.loadtest.runner import analyse_run_dir

    return analyse_run_dir(run_dir)


@pytest.fixture
def sweep_run(tmp_path):
    run = tmp_path / "loadtest"
    write_run(run, {"kind": "sweep", "mode": "concurrency", "values": [1, 2, 4], "step_duration_s": 10},
              [{"n": 10, "duration_s": 10.0, "ttft": 100.0, "tpot": 20.0},
               {"n": 20, "duration_s": 10.0, "ttft": 150.0, "tpot": 25.0},
               {"n": 30, "duration_s": 10.0, "ttft": 3000.0, "tpot": 40.0}])  # 4 users: TTFT misses the SLO
    return run


def test_sweep_headline_is_the_highest_load_meeting_the_slo(sweep_run):
    res = analyse(sweep_run)
    ls = from_loadtest_result(res.model_dump(mode="json"), sweep_run)
    assert ls.sweep_unit == "concurrency"
    assert [p.offered for p in ls.sweep] == [1.0, 2.0, 4.0]
    assert ls.max_load_meeting_slo == 2.0
    # the headline figures are those of the 2-user step: 20 requests of 33 output tokens in 10 s
    assert ls.requests == 20 and ls.errors == 0
    assert ls.output_tokens_per_s == pytest.approx(66.0)
    assert ls.requests_per_s == pytest.approx(2.0)
    assert ls.ttft_ms_p50 == pytest.approx(159.5)
    assert ls.tpot_ms_p50 == pytest.approx(25.0)
    assert ls.goodput_fraction == pytest.approx(1.0)
    assert ls.usd_per_hour == 0.5 and ls.utilization_assumed == 1.0
    assert ls.usd_per_million_output_tokens == pytest.approx(0.5 / (66.0 * 3600) * 1e6)
    assert ls.usd_per_million_output_tokens_at_slo == pytest.approx(ls.usd_per_million_output_tokens)
    # the 4-user step is in the sweep with its own figures
    assert ls.sweep[2].ttft_ms_p95 > 2000 and ls.sweep[2].output_tokens_per_s == pytest.approx(99.0)
    # samples: only the summary phase's 20 requests
    assert len(ls.ttft_ms_samples) == 20 and min(ls.ttft_ms_samples) == 150.0
    assert ls.tpot_ms_samples == pytest.approx([25.0] * 20)
    assert ls.raw["summary_basis"].startswith("the highest load meeting the SLOs")
    # JSON of the result and the result object map identically
    assert from_loadtest_result(res, sweep_run) == ls


def test_mapped_summary_passes_the_consistency_checks(sweep_run):
    ls = from_loadtest_result(analyse(sweep_run), sweep_run)
    base = VariantResult(name="baseline", is_baseline=True, score=0.6, recovery=1.0, load=ls)
    rec = recommend([base], 0.9, SLO.ttft_ms, SLO.tpot_ms)
    report = Report(model="m", baseline="baseline", quality_floor=0.9, variants=[base],
                    pareto=pareto_frontier([base]), recommendation=rec)
    assert consistency_problems(report) == []
    assert rec.variant == "baseline"


def test_single_phase_with_failures_and_utilisation(tmp_path):
    run = tmp_path / "lt"
    write_run(run, {"kind": "concurrency", "users": 4, "duration_s": 20},
              [{"n": 40, "duration_s": 20.0, "ttft": 300.0, "tpot": 30.0, "fail": 10}], utilisation=0.5)
    ls = from_loadtest_result(analyse(run), run)
    assert ls.sweep == [] and ls.sweep_unit is None
    assert ls.requests == 40 and ls.errors == 10
    assert ls.goodput_fraction == pytest.approx(40 / 50)
    assert ls.max_load_meeting_slo is None  # 80% < the 90% attainment target
    assert ls.utilization_assumed == 0.5
    assert ls.usd_per_million_output_tokens == pytest.approx(0.5 / (66.0 * 0.5 * 3600) * 1e6)
    assert ls.raw["summary"]["errors_by_kind"] == {"http_500": 10}
    v = VariantResult(name="x", is_baseline=True, score=1.0, load=ls)
    rep = Report(model="m", baseline="x", quality_floor=0.9, variants=[v], pareto=pareto_frontier([v]),
                 recommendation=recommend([v], 0.9, 2000, 250))
    assert consistency_problems(rep) == []
    assert rep.recommendation.rejected["x"] == "only 80% of requests meet the SLO < 90% required"


def test_without_run_dir_there_are_no_samples(sweep_run):
    ls = from_loadtest_result(analyse(sweep_run))
    assert ls.ttft_ms_samples == [] and ls.tpot_ms_samples == []


def test_latency_samples_skip_bad_lines_failures_and_other_phases(tmp_path):
    p = tmp_path / "records.jsonl"
    p.write_text("\n".join([
        json.dumps({"type": "request", "phase": 1, "ok": True, "ttft_ms": 10.0, "e2e_ms": 110.0, "output_tokens": 11}),
        json.dumps({"type": "request", "phase": 1, "ok": True, "ttft_ms": 12.0, "e2e_ms": 50.0, "output_tokens": 1}),
        json.dumps({"type": "request", "phase": 1, "ok": False, "ttft_ms": None}),
        json.dumps({"type": "request", "phase": 0, "ok": True, "ttft_ms": 99.0, "e2e_ms": 199.0, "output_tokens": 2}),
        json.dumps({"type": "phase_summary", "phase": 1}),
        '{"type": "request", "phase": 1, "ok": tr',  # cut by a killed process
    ]))
    assert latency_samples(p, 1) == ([10.0, 12.0], [10.0])
    assert latency_samples(tmp_path / "missing.jsonl", 1) == ([], [])


def test_thin_samples_keeps_the_extremes_and_the_shape():
    xs = [float(i) for i in range(10_001)]
    t = thin_samples(xs, 101)
    assert len(t) == 101 and t[0] == 0.0 and t[-1] == 10_000.0 and t[50] == 5000.0
    assert thin_samples([3.0, 1.0], 10) == [1.0, 3.0]


def test_server_figures_of_the_summary_phase_reach_the_report(sweep_run):
    from packager.report.content import LOAD_ROWS

    run = sweep_run
    res = analyse(run)
    k = res.summary.index
    res.telemetry = {"interval_s": 1.0, "scrapes": 9, "failures": 0, "series": [], "note": None, "phases": [
        {"index": i, "label": p.label, "scrapes": 3, "kv_cache_usage": {"mean": 0.1 * i, "max": 0.2 * (i + 1)},
         "requests_waiting": {"mean": 0.0, "max": float(i)}, "preemptions": float(10 * i)}
        for i, p in enumerate(res.phases)]}
    s = from_loadtest_result(res, run)
    assert s.server_kv_cache_max == pytest.approx(0.2 * (k + 1))
    assert s.server_requests_waiting_max == float(k) and s.server_preemptions == float(10 * k)
    assert s.prompt_format == "chat"
    rows = dict((name, get(s)) for name, get in LOAD_ROWS)
    assert rows["server: KV cache max / waiting max / preemptions"] == f"{0.2 * (k + 1):.0%} / {k} / {10 * k}"
    res.telemetry = None
    bare = dict((name, get(from_loadtest_result(res))) for name, get in LOAD_ROWS)
    assert bare["server: KV cache max / waiting max / preemptions"] == "— / — / —"


def test_a_capacity_search_sets_the_capacity_and_its_price_and_the_report_says_how(sweep_run):
    """The sweep met the SLOs at 2 users and missed at 4; a knee found at 3 users (80 output tok/s) becomes the
    capacity at the SLO and the price there, the table says it came from the search."""
    from packager.loadtest.knee import as_probe
    from packager.loadtest.result import KneeResult
    from packager.report.content import knee_note

    res = analyse(sweep_run)
    probe = as_probe(res.phases[1].model_copy(update={"load": {"users": 3.0}, "output_token_throughput_per_s": 80.0}),
                     "probe", "knee/01-3")
    res.knee = KneeResult(mode="concurrency", knee=3.0, first_failing=4.0, precision=0.1, resolved=True,
                          stopped_because="the bracket is within the precision",
                          probes=[as_probe(p, "sweep") for p in res.phases] + [probe], output_tokens_per_s_at_knee=80.0,
                          usd_per_hour=0.5, usd_per_million_output_tokens_at_knee=0.5 / (80 * 3600) * 1e6, dispatch_s=10)
    ls = from_loadtest_result(res, sweep_run)
    assert ls.max_load_meeting_slo == 3.0 and ls.knee_first_failing == 4.0 and ls.knee_resolved and ls.knee_probes == 1
    assert ls.usd_per_million_output_tokens_at_slo == pytest.approx(0.5 / (80.0 * 3600) * 1e6)
    # the headline operating point is still the sweep's 2-user step, and its own cost stays consistent
    assert ls.output_tokens_per_s == pytest.approx(66.0)
    assert ls.usd_per_million_output_tokens == pytest.approx(0.5 / (66.0 * 3600) * 1e6)
    assert knee_note(ls) == " (capacity search: 4 missed, 1 probe)"
    assert knee_note(ls.model_copy(update={"knee_resolved": False, "knee_probes": 4})) == (
        " (capacity search: 4 missed, 4 probes, not narrowed to its precision)")
    plain = from_loadtest_result(analyse(sweep_run), sweep_run)
    assert plain.max_load_meeting_slo == 2.0 and plain.knee_probes == 0 and knee_note(plain) == ""
