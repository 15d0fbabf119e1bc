"""The recommendation at the traffic the user expects (RunConfig.expected_load): cost and SLO are read at the
sweep step that load falls on, so llama.cpp wins at a few users and vLLM at many, as the engines measure."""
from __future__ import annotations

import pytest

from packager.errors import ConfigError
from packager.loadtest.config import parse_loadtest_config
from packager.release import check_expected_load
from packager.report.analysis import compare_engines, load_at, recommend
from packager.report.model import LoadSummary, SweepPoint, VariantResult
from packager.report.render import render_html, render_markdown

from unit.report.sample import sample_report

USD_PER_HOUR = 0.36
OUT_TOKENS = 64  # per request


def usd(tps: float) -> float:
    return USD_PER_HOUR / (tps * 3600) * 1e6


def swept(name: str, engine: str, steps: dict[int, tuple[float, float]], baseline: bool = False,
          recovery: float = 1.0) -> VariantResult:
    """steps: users -> (output tokens/s, TTFT p95 ms). Every request meets the SLO unless TTFT says otherwise;
    the summary is the highest step (the machine fully used)."""
    pts = [SweepPoint(offered=u, requests_per_s=t / OUT_TOKENS, output_tokens_per_s=t, ttft_ms_p95=ttft,
                      tpot_ms_p95=20.0, goodput_requests_per_s=t / OUT_TOKENS if ttft <= 2000 else 0.0)
           for u, (t, ttft) in sorted(steps.items())]
    top = pts[-1]
    load = LoadSummary(requests=100, duration_s=60, requests_per_s=top.requests_per_s,
                       output_tokens_per_s=top.output_tokens_per_s, ttft_ms_p95=top.ttft_ms_p95, tpot_ms_p95=20.0,
                       goodput_requests_per_s=top.goodput_requests_per_s, goodput_fraction=1.0,
                       usd_per_hour=USD_PER_HOUR, usd_per_million_output_tokens=usd(top.output_tokens_per_s),
                       utilization_assumed=1.0, sweep_unit="concurrency", sweep=pts)
    return VariantResult(name=name, engine=engine, is_baseline=baseline, score=0.6 * recovery,
                         recovery=None if baseline else recovery, load=load)


def variants() -> list[VariantResult]:
    # Shaped like the engines benchmark of this CPU: llama.cpp ahead at 1 user, vLLM from 4.
    return [swept("baseline", "vllm", {1: (33.0, 90.0), 4: (134.0, 150.0), 16: (250.0, 400.0)}, baseline=True),
            swept("w8a8-int8", "vllm", {1: (34.0, 85.0), 4: (142.0, 140.0), 16: (300.0, 380.0)}, recovery=0.95),
            swept("gguf-q4_k_m", "llamacpp", {1: (65.0, 50.0), 4: (49.0, 900.0), 16: (52.0, 4000.0)}, recovery=0.99)]


def test_without_an_expected_load_the_variants_are_ranked_fully_used():
    rec = recommend(variants(), 0.9, 2000, 250)
    assert rec.variant == "w8a8-int8" and rec.expected_load is None
    assert "at the tested load" in rec.reason
    assert "gguf-q4_k_m" in rec.rejected and "misses TTFT p95 4000 ms > 2000 ms" in rec.rejected["gguf-q4_k_m"]


def test_at_one_user_llama_cpp_is_the_cheapest_and_at_four_vllm_is():
    vs = variants()
    rec = recommend(vs, 0.9, 2000, 250, expected_load=1)
    assert rec.variant == "gguf-q4_k_m"
    assert rec.expected_load == 1 and rec.expected_load_unit == "concurrency"
    assert rec.usd_per_million_output_tokens_at_expected_load == pytest.approx(
        {"baseline": usd(33.0), "w8a8-int8": usd(34.0), "gguf-q4_k_m": usd(65.0)})
    assert "meets the SLO at the expected load of 1 concurrent user (TTFT p95 50 ms <= 2000 ms" in rec.reason
    assert f"USD {usd(65.0):.3g} per 1M output tokens" in rec.reason
    assert f"than the baseline (USD {usd(33.0):.3g})" in rec.reason
    assert all(v.meets_slo for v in vs)
    # 2 users falls on the 4-user step (measured at least as hard as the traffic): vLLM int8 is cheapest there
    for x in (2, 4):
        rec = recommend(vs, 0.9, 2000, 250, expected_load=x)
        assert rec.variant == "w8a8-int8", x
        assert "expected load of" in rec.reason and f"{x} concurrent users" in rec.reason
        assert rec.rejected["gguf-q4_k_m"].startswith(f"meets the floor and the SLO but costs USD {usd(49.0):.3g}")


def test_an_expected_load_above_the_sweep_cannot_be_judged():
    vs = variants()
    rec = recommend(vs, 0.9, 2000, 250, expected_load=32)
    assert rec.variant is None
    assert rec.reason.startswith("No variant meets both the quality floor and the SLO at the expected load of 32 "
                                 "concurrent users: ")
    assert rec.rejected["baseline"] == ("was load-tested up to 16 concurrent users, below the expected load of 32 "
                                        "concurrent users")
    assert all(v.meets_slo is None for v in vs)
    assert rec.usd_per_million_output_tokens_at_expected_load == {"baseline": None, "w8a8-int8": None,
                                                                  "gguf-q4_k_m": None}


def test_load_at_reads_one_step_and_a_one_load_test_has_none():
    v = variants()[2]
    view, why = load_at(v.load, 3)
    assert why is None and view.output_tokens_per_s == 49.0 and view.ttft_ms_p95 == 900.0
    assert view.usd_per_million_output_tokens == pytest.approx(usd(49.0)) and view.goodput_fraction == 1.0
    assert v.load.output_tokens_per_s == 52.0  # the variant's own figures are left alone
    v.load.sweep = []
    assert load_at(v.load, 1) == (None, "was load-tested at one load, not swept, so its figures at the expected "
                                        "load (1) are unknown")


def test_the_engines_summary_names_the_leader_at_the_expected_load():
    vs = variants()
    recommend(vs, 0.9, 2000, 250)
    assert "set expected_load in the configuration" in compare_engines(vs).summary
    ec = compare_engines(vs, expected_load=1)
    assert ec.summary.endswith("At the expected load of 1 concurrent user (measured at 1) llama.cpp leads, and the "
                               "recommendation is ranked there.")
    assert compare_engines(vs, expected_load=3).summary.endswith(
        "At the expected load of 3 concurrent users (measured at 4) vLLM leads, and the recommendation is ranked there.")


def test_the_expected_load_sentence_does_not_need_a_crossover():
    """One engine ahead at every load: the summary still names the leader at the expected load (the sentence
    depends only on a compared step covering that load, never on which engine the figures favour)."""
    vs = [swept("baseline", "vllm", {1: (70.0, 90.0), 4: (180.0, 150.0)}, baseline=True),
          swept("gguf-q4_k_m", "llamacpp", {1: (65.0, 50.0), 4: (90.0, 300.0)})]
    recommend(vs, 0.9, 2000, 250, expected_load=1)
    ec = compare_engines(vs, expected_load=1)
    assert ec.crossovers == [] and ec.leader == ["vllm", "vllm"]
    assert ec.summary == ("vLLM sustained the most output tokens/s at every offered load compared (1 to 4 concurrent "
                          "users). At the expected load of 1 concurrent user (measured at 1) vLLM leads, and the "
                          "recommendation is ranked there.")
    # the same data with llama.cpp ahead everywhere names llama.cpp
    vs[1] = swept("gguf-q4_k_m", "llamacpp", {1: (113.0, 30.0), 4: (200.0, 60.0)})
    assert compare_engines(vs, expected_load=1).summary.endswith(
        "At the expected load of 1 concurrent user (measured at 1) llama.cpp leads, and the recommendation is "
        "ranked there.")
    # without an expected load and without a crossover, nothing is said about it
    assert "expected load" not in compare_engines(vs).summary


def test_an_expected_load_above_every_compared_step_is_said_so():
    vs = [swept("baseline", "vllm", {1: (70.0, 90.0), 4: (180.0, 150.0), 16: (250.0, 400.0)}, baseline=True),
          swept("gguf-q4_k_m", "llamacpp", {1: (65.0, 50.0), 4: (90.0, 300.0)})]
    ec = compare_engines(vs, expected_load=8)
    assert ec.leader == ["vllm", "vllm", None]
    assert ec.summary.endswith("No load run on every engine covers the expected load of 8 concurrent users (the "
                               "highest is 4 concurrent users), so the engines are not compared there.")


def test_the_report_says_where_the_variants_were_ranked():
    r = sample_report()
    r.variants = variants()
    r.recommendation = recommend(r.variants, 0.9, 2000, 250, expected_load=1)
    for text in (render_markdown(r), render_html(r)):
        assert "Ranked at the expected load of 1 concurrent user (the sweep step it falls on)." in text
        assert f"gguf-q4_k_m {usd(65.0):.3g}" in text
    r.recommendation = recommend(r.variants, 0.9, 2000, 250)
    assert "Ranked at the expected load" not in render_markdown(r)


def test_the_replicas_for_the_expected_load_follow_each_variants_capacity():
    r = sample_report()
    r.variants = variants()
    caps = {"baseline": 16.0, "w8a8-int8": 11.0, "gguf-q4_k_m": 1.0}
    for v in r.variants:
        assert v.load is not None
        v.load.max_load_meeting_slo = caps[v.name]
    r.recommendation = recommend(r.variants, 0.9, 2000, 250, expected_load=4)
    for text in (render_markdown(r), render_html(r)):
        # 4 users: one replica of a variant that carries 16 or 11, four of one that carries 1 (at $0.36/h each)
        assert ("Replicas for 4 concurrent users, each at the capacity of its variant at the SLO: baseline 1, USD 0.36/h; "
                "w8a8-int8 1, USD 0.36/h; gguf-q4_k_m 4, USD 1.44/h.") in text
    r.recommendation = recommend(r.variants, 0.9, 2000, 250)
    assert "Replicas for" not in render_markdown(r)


def test_release_refuses_an_expected_load_its_load_test_cannot_measure():
    sweep = parse_loadtest_config({"profile": {"kind": "sweep", "mode": "concurrency", "values": [1, 4, 16]}}, "loadtest")
    check_expected_load(None, sweep)
    check_expected_load(16, sweep)
    with pytest.raises(ConfigError, match=r"expected_load=20 concurrent users is above the highest step of the "
                                          r"load-test sweep \(16 concurrent users\)"):
        check_expected_load(20, sweep)
    one = parse_loadtest_config({"profile": {"kind": "concurrency", "users": 4}}, "loadtest")
    with pytest.raises(ConfigError, match=r"needs a load-test sweep .* the profile is 'concurrency'"):
        check_expected_load(4, one)


def test_release_cli_refuses_a_bad_expected_load_before_any_work(tmp_path):
    import os

    from conftest import run_cli

    out = tmp_path / "run"
    r = run_cli("release", "--expected-load", "99", "--out", str(out), timeout_s=120)
    assert r.returncode == 2 and "expected_load=99 concurrent users is above the highest step" in r.stderr + r.stdout
    r = run_cli("release", "--out", str(out), timeout_s=120, env={**os.environ, "PACKAGER_EXPECTED_LOAD": "0"})
    assert r.returncode == 2 and "expected_load: Input should be greater than 0" in r.stderr + r.stdout
    assert not out.exists()
