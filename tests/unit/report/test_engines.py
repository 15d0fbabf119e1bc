"""Engines side by side over the load sweep (packager.report.analysis.compare_engines) and its rendering."""
from __future__ import annotations

from packager.report.analysis import compare_engines
from packager.report.model import LoadSummary, SweepPoint, VariantResult
from packager.report.render import render_html, render_markdown

from unit.report.sample import sample_report


def swept(name: str, engine: str, tps_by_users: dict[int, float], meets_floor: bool | None = True) -> VariantResult:
    pts = [SweepPoint(offered=u, requests_per_s=t / 64, output_tokens_per_s=t, ttft_ms_p95=100.0 * u)
           for u, t in tps_by_users.items()]
    v = VariantResult(name=name, engine=engine, load=LoadSummary(sweep_unit="concurrency", sweep=pts))
    v.meets_quality_floor = meets_floor
    return v


def test_crossover_found_where_the_lead_changes():
    vs = [swept("q4", "llamacpp", {1: 94.0, 2: 101.0, 4: 99.0, 8: 100.0, 32: 98.0}),
          swept("q8", "llamacpp", {1: 80.0, 2: 86.0, 4: 88.0, 8: 87.0, 32: 85.0}),
          swept("bf16", "vllm", {1: 34.0, 2: 62.0, 4: 110.0, 8: 190.0, 32: 480.0}),
          swept("w8a8", "vllm", {1: 45.0, 2: 80.0, 4: 130.0, 8: 230.0, 32: 500.0})]
    ec = compare_engines(vs)
    assert ec is not None and ec.sweep_unit == "concurrency" and ec.offered == [1, 2, 4, 8, 32]
    assert ec.best_output_tokens_per_s == {"llamacpp": [94.0, 101.0, 99.0, 100.0, 98.0],
                                           "vllm": [45.0, 80.0, 130.0, 230.0, 500.0]}
    assert ec.best_variant["llamacpp"] == ["q4"] * 5 and ec.best_variant["vllm"] == ["w8a8"] * 5
    assert ec.leader == ["llamacpp", "llamacpp", "vllm", "vllm", "vllm"]
    assert ec.crossovers == [{"from_engine": "llamacpp", "to_engine": "vllm", "after": 2, "at": 4}]
    assert ec.summary.startswith("llama.cpp leads from 1 concurrent user; vLLM from 4 (crossover between 2 and 4)")


def test_variants_below_the_quality_floor_do_not_lead_an_engine():
    vs = [swept("q2", "llamacpp", {1: 300.0, 4: 300.0}, meets_floor=False),
          swept("q8", "llamacpp", {1: 80.0, 4: 85.0}),
          swept("bf16", "vllm", {1: 34.0, 4: 110.0})]
    ec = compare_engines(vs)
    assert ec.best_variant["llamacpp"] == ["q8", "q8"] and ec.leader == ["llamacpp", "vllm"]


def test_no_comparison_with_one_engine_or_mixed_sweep_units():
    assert compare_engines([swept("a", "vllm", {1: 1.0}), swept("b", "vllm", {1: 2.0})]) is None
    a, b = swept("a", "vllm", {1: 1.0}), swept("b", "llamacpp", {1: 2.0})
    b.load.sweep_unit = "requests_per_s"
    assert compare_engines([a, b]) is None


def test_one_engine_ahead_everywhere_and_loads_not_run_on_both():
    ec = compare_engines([swept("a", "vllm", {1: 50.0, 4: 200.0, 16: 400.0}), swept("b", "llamacpp", {1: 40.0, 4: 60.0})])
    assert ec.leader == ["vllm", "vllm", None] and ec.crossovers == []
    assert ec.summary == "vLLM sustained the most output tokens/s at every offered load compared (1 to 4 concurrent users)."


def test_report_shows_the_engine_table():
    r = sample_report()
    r.variants += [swept("gguf-q4", "llamacpp", {1: 90.0, 2: 95.0}), swept("vllm-x", "vllm", {1: 30.0, 2: 120.0})]
    r.engines = compare_engines(r.variants)
    md = render_markdown(r)
    # the sample's w8a8-int8 (vLLM) sweep joins: it is the best vLLM variant at 1 user
    assert "### Engines" in md and "| 1 | 90.0 (gguf-q4) | 45.0 (w8a8-int8) | llama.cpp |" in md
    assert "| 2 | 95.0 (gguf-q4) | 120.0 (vllm-x) | vLLM |" in md and "| 4 | - | 160.0 (w8a8-int8) | - |" in md
    html = render_html(r)
    assert 'id="engines"' in html and "crossover between 1 and 2" in html
