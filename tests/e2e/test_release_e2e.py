"""The main job end to end on the bundled model, reduced: baseline + W8A8 int8, each built as a real bento,
served with `bentoml serve`, scored through it, load-tested with locust, registered, reported."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

# The release below runs three variants end to end; on a slow day of a 2-core machine it took over 30 minutes
# (pytest's default limit here), so the module has its own, above run_cli's bound on the release itself.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3300)]


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.svgs = 0

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        if "id" in d:
            self.ids.add(d["id"])
        if tag == "svg":
            self.svgs += 1


@pytest.fixture(scope="module")
def release_run(tmp_path_factory, default_model):
    out = tmp_path_factory.mktemp("release")
    # the built-in w8a8-int8 recipe (its SmoothQuant strength search, mixed precision and GPTQ rounding) on less
    # calibration data: the full calibration takes 4-5 minutes of this run on 2 cores and is the recipe's own
    # concern (tests/integration/test_compress_vllm.py, benchmarks/bench_quality.py)
    w8 = yaml.safe_load((Path(__file__).resolve().parents[2] / "packager/recipes/w8a8-int8.yaml").read_text())
    w8["stages"][0].update(n_samples=8, seq_len=128, search_samples=2, search_seq_len=64,
                           alpha_candidates=[0.45, 0.75])
    (out / "w8a8-int8.yaml").write_text(yaml.safe_dump(w8))
    # the built-in gguf-q4_k_m, its importance matrix on 8 x 128 calibration tokens instead of 128 x 512 (about a
    # minute of this run on 2 cores; tests/unit/gguf/test_imatrix.py covers the matrix itself)
    q4 = yaml.safe_load((Path(__file__).resolve().parents[2] / "packager/recipes/gguf-q4_k_m.yaml").read_text())
    q4["stages"][0].update(n_samples=8, seq_len=128)
    (out / "gguf-q4_k_m.yaml").write_text(yaml.safe_dump(q4))
    cfg = {
        "model": "default",
        # vLLM int8 and a llama.cpp GGUF: two engines compared
        "recipes": ["w8a8-int8.yaml", "gguf-q4_k_m.yaml"],  # files, relative to the release's directory
        "output_dir": str(out / "run"),
        # a slice of the suite: the e2e checks structure and consistency, not quality (the behaviour suite is
        # covered by tests/unit/release against the fake server)
        "eval": {"max_items": 30, "perplexity_max_chunks": 2, "behaviour_suite": None, "fidelity_max_prompts": 48},
        "loadtest": {
            "profile": {"kind": "sweep", "mode": "concurrency", "values": [1, 4], "step_duration_s": 8},
            "prompts": {"kind": "synthetic", "input_tokens": {"mean": 64}, "output_tokens": {"mean": 32}},
            "max_duration_s": 30, "max_requests": 400,
            # the capacity search between the steps, at most 2 short probes per variant
            "knee": {"enabled": True, "probe_duration_s": 4, "budget_s": 8, "max_probes": 2, "precision": 0.5},
        },
        "registry": {"uri": f"sqlite:///{out / 'registry.db'}", "name": "smollm2-e2e"},
        "pricing": {"instance": "c7i.xlarge"},
        "quality_floor": 0.5,
        # the noise floor serves the baseline in the other dtype (bfloat16, emulated on an AVX2 CPU: ~4 s an item)
        # every variant measured in full, a rejected one too: the report compares the two engines' load tests
        "gate": {"noise_floor_items": 10, "fail_fast": False},
        "time_budget_s": 3000,
        # the GGUF variant's llama-server arguments: packager's and as many candidates as 14 s of 2-s trials allow,
        # searched whatever the gate says of it (only_passing, which waits for the verdict, has unit tests of its
        # own: tests/unit/release/test_release_engine_search.py); this run checks the search on real servers
        "engine_search": {"budget_s": 14, "probe_duration_s": 2, "warmup_s": 1, "only_passing": False},
    }
    cfg_path = out / "release.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    cp = run_cli("release", "--config", str(cfg_path), timeout_s=3000, cwd=out)
    assert cp.returncode == 0, (cp.stdout[-3000:], cp.stderr[-5000:])
    return out / "run", cp


def test_report_files_and_structure(release_run):
    run, cp = release_run
    from packager.report.model import Report

    report = Report.model_validate_json((run / "report.json").read_text())
    names = [v.name for v in report.variants]
    assert names == ["baseline", "w8a8-int8", "gguf-q4_k_m"]
    assert [v.engine for v in report.variants] == ["vllm", "vllm", "llamacpp"]
    for v in report.variants:
        assert not v.errors, v.errors
        assert v.score is not None and 0 <= v.score <= 1
        assert v.bento_tag and v.registry_version
        assert v.load is not None and v.load.requests > 0 and v.load.output_tokens_per_s > 0
        assert v.load.ttft_ms_p50 <= v.load.ttft_ms_p95 <= v.load.ttft_ms_p99
        assert v.load.usd_per_million_output_tokens > 0
    md = (run / "report.md").read_text()
    assert "w8a8-int8" in md and "recommend" in md.lower()
    assert "recommendation:" in cp.stderr.lower() or "recommendation:" in cp.stdout.lower()
    p = _Tags()
    p.feed((run / "report.html").read_text())
    assert p.svgs >= 3


def test_report_numbers_are_consistent(release_run):
    run, _ = release_run
    from packager.report.analysis import consistency_problems
    from packager.report.model import Report

    report = Report.model_validate_json((run / "report.json").read_text())
    assert consistency_problems(report) == []
    base, w8, q4 = report.variants
    assert base.recovery == 1.0
    assert w8.recovery == pytest.approx(w8.score / base.score)
    cost = w8.load.usd_per_hour / (w8.load.output_tokens_per_s * 3600) * 1e6
    assert w8.load.usd_per_million_output_tokens == pytest.approx(cost, rel=1e-6)
    assert w8.size_bytes < base.size_bytes  # int8 weights are smaller than the float checkpoint
    assert w8.fidelity_agreement is not None and 0 <= w8.fidelity_agreement <= 1
    assert w8.fidelity_mean_kl is not None and w8.fidelity_mean_kl >= 0
    # the GGUF variant was scored through llama.cpp; its server gives no prompt logprobs, so the KL along the same
    # corpus answers was read from the GGUF by llama.cpp in the release's process (said so)
    assert q4.dtype == "q4_k_m" and q4.recovery == pytest.approx(q4.score / base.score)
    assert any("(llama-server) returns no prompt logprobs" in n for n in q4.eval.get("notes", [])), q4.eval
    assert any("read from the same GGUF by llama.cpp" in n for n in q4.eval.get("notes", [])), q4.eval
    assert q4.fidelity_source == "corpus:default" and q4.eval["fidelity_prompts"] == base.eval["fidelity_prompts"]
    assert q4.fidelity_mean_kl is not None and q4.fidelity_mean_kl > 0  # 4-bit weights are not the bf16 model
    assert q4.fidelity_top1_agreement is not None and 0 <= q4.fidelity_top1_agreement <= 1
    # the engine-argument search ran for the llama.cpp variant only (the default engines), on real llama-servers,
    # and its bento was built with what it chose
    from packager.config import EngineConfig
    from packager.engines.llamacpp import cpu_threads
    from packager.engines.tune import DEFAULTS_LABEL, EngineSearch, candidates, choose
    from packager.serve.store import bentoml_home

    assert base.engine_search is None and w8.engine_search is None
    search = EngineSearch.model_validate(q4.engine_search)
    assert search.backend == "llamacpp" and search.load == 4 and search.trials[0].candidate.label == DEFAULTS_LABEL
    tried = [t.candidate.label for t in search.trials] + search.not_tried
    assert tried == [c.label for c in candidates("llamacpp", EngineConfig(), cpu_threads())] and search.wall_s > 0
    assert (search.chosen, search.reason) == choose(search.trials, 0.05)
    assert search.chosen is not None
    for t in search.trials:
        assert t.error is None and t.output_tokens_per_s > 0 and t.meets_slo is not None, t
    bento = yaml.safe_load((bentoml_home() / "bentos" / q4.bento_tag.replace(":", "/") / "bento.yaml").read_text())
    assert bento["args"]["extra_args"] == search.chosen.extra_args
    assert "## Engine arguments" in (run / "report.md").read_text()
    assert q4.size_bytes < w8.size_bytes  # 4-bit k-quants are smaller than int8
    # the baseline's noise floor: served once more in the other dtype, measured along its own outputs
    nf = report.noise_floor
    assert nf is not None and nf["served_dtype"] == base.dtype and nf["reference_dtype"] != base.dtype
    assert 0 < nf["items"] <= 10 and 0 < nf["positions"] <= nf["items"] * 32  # fidelity answers: 32 tokens at most
    assert 0 <= nf["prefix_match_mean"] <= 32 and 0 <= nf["full_match"] <= 1
    # fidelity along the baseline's answers to 48 prompts spread over the bundled corpus
    assert w8.fidelity_source == "corpus:default" and base.eval["fidelity_prompts"] + \
        base.eval["fidelity_prompts_skipped"] + base.eval["fidelity_prompts_failed"] == 48
    assert w8.eval["fidelity_prompts"] == base.eval["fidelity_prompts"]
    assert w8.fidelity_prefix_match_mean is not None and 0 <= w8.fidelity_prefix_match_mean <= 32
    assert "fidelity along the baseline's greedy answers to the default fidelity corpus" in \
        (run / "report.md").read_text()
    assert nf["mean_kl"] >= 0 and 0 <= nf["top1_agreement"] <= 1
    if nf["mean_kl"] > 0:
        assert report.gate["max_kl"] == pytest.approx(report.gate["max_kl_vs_noise"] * nf["mean_kl"])
    # paired bootstrap intervals hold their point estimates; the baseline has none
    assert w8.recovery_ci is not None and w8.recovery_ci[0] <= w8.recovery <= w8.recovery_ci[1]
    assert q4.recovery_ci is not None and base.recovery_ci is None and 0 <= w8.p_value <= 1
    assert w8.fidelity_top1_agreement is not None and w8.fidelity_p95_kl >= 0
    assert "lower 95% bound" in (run / "report.md").read_text()


def test_engines_are_compared_over_the_sweep(release_run):
    run, _ = release_run
    from packager.report.model import Report

    report = Report.model_validate_json((run / "report.json").read_text())
    ec = report.engines
    # Engines are compared when both have a variant that keeps the quality floor (a measurement): check the
    # comparison exists exactly then, and what it says whenever it does.
    engines_kept = {v.engine for v in report.variants if v.meets_quality_floor is not False}
    if engines_kept != {"llamacpp", "vllm"}:
        assert ec is None, (engines_kept, ec)
        return
    assert ec is not None and ec.sweep_unit == "concurrency" and ec.offered == [1.0, 4.0]
    assert set(ec.best_output_tokens_per_s) == {"llamacpp", "vllm"}
    for engine, vals in ec.best_output_tokens_per_s.items():
        assert all(x is not None and x > 0 for x in vals), (engine, vals)
    assert ec.leader == [max(ec.best_output_tokens_per_s, key=lambda e: ec.best_output_tokens_per_s[e][i])
                         for i in range(2)]
    assert ec.summary and ec.summary in (run / "report.md").read_text()
    # the summary names the engine(s) the figures above show leading, whichever that is on this machine
    assert ec.summary == _expected_engines_summary(ec)


def test_each_variant_is_priced_at_its_capacity_search(release_run):
    """Every variant the quality gate keeps ran the capacity search after its sweep; the report's capacity and its
    price at the SLO are the knee's, whatever the knee is on this machine. A variant the gate rejected after its
    evaluation (knee.only_passing) ran the sweep alone, and the report's notes say so."""
    import json

    from packager.loadtest.result import LoadTestResult
    from packager.report.model import Report

    run, _ = release_run
    report = Report.model_validate_json((run / "report.json").read_text())
    for v in report.variants:
        assert v.load is not None, v.name
        res = LoadTestResult.model_validate(v.load.raw)
        k = res.knee
        unsearched = any(n.startswith(f"{v.name}: its capacity was not searched") for n in report.notes)
        if unsearched:  # rejected before its load test: the sweep only, and a variant that cannot be recommended
            assert k is None and not v.is_baseline and v.meets_quality_floor is False, v.name
            assert [p.load["users"] for p in res.phases] == [1, 4] and v.load.knee_probes in (0, None)
            continue
        assert k is not None and k.mode == "concurrency", v.name
        probes = [p for p in k.probes if p.source == "probe"]
        assert len(probes) <= 2 and k.dispatch_s == 4 * len(probes)
        assert all(1 <= p.load <= 16 and float(p.load).is_integer() for p in probes), probes
        assert [p.load for p in k.probes[:2]] == [1.0, 4.0]  # the sweep's steps come first
        # the knee is the highest load measured to meet the SLOs, the first failing the lowest above it missing them
        met = [p.load for p in k.probes if p.meets_slo]
        assert k.knee == (max(met) if met else None)
        if k.knee is not None and k.first_failing is not None:
            assert k.first_failing > k.knee and not any(p.meets_slo for p in k.probes if p.load == k.first_failing)
        assert v.load.max_load_meeting_slo == k.knee and v.load.knee_probes == len(probes)
        if k.knee is not None:
            assert v.load.usd_per_million_output_tokens_at_slo == pytest.approx(
                k.usd_per_million_output_tokens_at_knee)
        for p in probes:  # each probe is a load test of its own, under the variant's
            saved = json.loads((run / "variants" / v.name / "loadtest" / p.run_dir / "loadtest.json").read_text())
            assert saved["phases"][0]["load"] == {"users": p.load}


def _keeps_quality(v, report) -> bool:
    """The quality gate, derived from the report's own figures: the recovery interval's lower bound (the point
    estimate where there is none) reaches the floor, and the mean KL, where measured, is within the limit."""
    rec = v.recovery if v.recovery is not None else 1.0
    judged = v.recovery_ci[0] if report.gate.get("use_lower_bound") and v.recovery_ci and not v.is_baseline else rec
    limit = report.gate.get("max_kl")
    kl_ok = limit is None or v.is_baseline or v.fidelity_mean_kl is None or v.fidelity_mean_kl <= limit
    return judged >= report.quality_floor and kl_ok


def _expected_engines_summary(ec) -> str:
    """The first sentence of the engines summary, derived from the comparison's own figures (both loads were run
    on both engines, so every step has a leader)."""
    from packager.engines.select import engine_label
    from packager.report.analysis import load_words

    assert None not in ec.leader
    if len(set(ec.leader)) == 1:
        return (f"{engine_label(ec.leader[0])} sustained the most output tokens/s at every offered load compared "
                f"({ec.offered[0]:g} to {load_words(ec.offered[-1], ec.sweep_unit)}).")
    assert ec.crossovers == [{"from_engine": ec.leader[0], "to_engine": ec.leader[1], "after": ec.offered[0],
                              "at": ec.offered[1]}]
    return (f"{engine_label(ec.leader[0])} leads from {load_words(ec.offered[0], ec.sweep_unit)}; "
            f"{engine_label(ec.leader[1])} from {ec.offered[1]:g} (crossover between {ec.offered[0]:g} and "
            f"{ec.offered[1]:g}). Which is cheaper for you depends on the traffic you expect: set expected_load in "
            f"the configuration to rank the variants at it.")


def test_rerun_reuses_every_finished_step(release_run):
    """The rerun also ranks the variants at an expected load of 1 user: nothing is measured again (the
    expected load is not an input of any step), only the recommendation is read at the 1-user step."""
    run, _ = release_run
    cfg_path = run.parent / "release.yaml"
    cp = run_cli("release", "--config", str(cfg_path), "--expected-load", "1", timeout_s=900, cwd=run.parent)
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert cp.stderr.count("reused from the cache") == 3
    doc = json.loads((run / "report.json").read_text())
    assert not any(k.endswith("/serve_start") for k in doc["timings_s"])

    from packager.engines.select import engine_label
    from packager.report.model import Report

    report = Report.model_validate(doc)
    rec = report.recommendation
    assert rec.expected_load == 1 and rec.expected_load_unit == "concurrency"
    want: dict[str, float] = {}
    ok: list[str] = []
    for v in report.variants:
        step = next(p for p in v.load.sweep if p.offered == 1)
        want[v.name] = v.load.usd_per_hour / (step.output_tokens_per_s * 3600) * 1e6
        if (_keeps_quality(v, report)
                and step.ttft_ms_p95 <= report.slo["ttft_ms"] and step.tpot_ms_p95 <= report.slo["tpot_ms"]
                and step.requests_per_s > 0 and step.goodput_requests_per_s is not None
                and step.goodput_requests_per_s / step.requests_per_s >= 0.9):
            ok.append(v.name)
    assert rec.usd_per_million_output_tokens_at_expected_load == pytest.approx(want, rel=1e-9)
    assert rec.variant == (min(ok, key=want.__getitem__) if ok else None), (want, ok, rec.reason)
    if rec.variant:
        assert "at the expected load of 1 concurrent user" in rec.reason
    assert "Ranked at the expected load of 1 concurrent user" in (run / "report.md").read_text()
    # The engines summary names the leader at the 1-user step, whichever engine the measured figures put there
    # (the sentence depends on a compared step covering the expected load, which the sweep's first step does).
    ec = report.engines
    if ec is None:  # an engine had no variant above the quality floor (checked in the test above)
        assert "At the expected load" not in (run / "report.md").read_text()
        return
    leader_at_1 = ec.leader[ec.offered.index(1.0)]
    assert leader_at_1 == max(ec.best_output_tokens_per_s, key=lambda e: ec.best_output_tokens_per_s[e][0])
    sentence = (f"At the expected load of 1 concurrent user (measured at 1) {engine_label(leader_at_1)} leads, "
                f"and the recommendation is ranked there.")
    assert report.engines.summary.endswith(sentence), report.engines.summary
    assert report.engines.summary.count("At the expected load") == 1
