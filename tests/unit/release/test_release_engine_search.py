"""The release's engine-argument search step on the fake servers of test_release_loop: what it runs (one bare
engine and one short load test per candidate, before the bento), what the bento is built with (the chosen
arguments), what the report says, the budget, and the step cache."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from unit.release.test_release_loop import install_fakes, make_cfg, make_inputs, release


def _cfg(inputs, **search):
    search.setdefault("scope", "variant")  # both variants are vLLM's: searched each (scope engine: see the last)
    search.setdefault("only_passing", False)  # searched before the bento (after the gate: see test_deferred_search)
    return make_cfg(inputs, recipes=["w8a8-int8"], engine_search={"engines": ["vllm"], "probe_duration_s": 1,
                                                                  "warmup_s": 0.5, **search},
                    eval={"suite": str(inputs.suite), "behaviour_suite": None, "perplexity": False,
                          "concurrency": 4})


def _recorded(cfg, fakes, engines: list):
    """One release, with the fakes' calls and the bare engines it served (both cleared for the next release)."""
    out = release(cfg)
    out.calls, out.engines = fakes.take(), list(engines)
    engines.clear()
    return out


def _copied(cfg, name: str):
    """The configuration with its run directory copied beside it as `name`: a rerun finds every result there."""
    copy = cfg.model_copy(update={"output_dir": str(Path(cfg.output_dir).with_name(name))})
    shutil.copytree(cfg.output_dir, copy.output_dir)
    return copy


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    import packager.engines.select as select_mod

    with pytest.MonkeyPatch.context() as mp:
        f = install_fakes(mp)
        engines: list[tuple[str, str, object]] = []
        fake = select_mod.server_for_model

        def server_for_model(model_dir, engine, served_name=None, log_path=None):
            engines.append((served_name, Path(log_path).name, engine))
            return fake(model_dir, engine, served_name=served_name, log_path=log_path)

        mp.setattr(select_mod, "server_for_model", server_for_model)
        inputs = make_inputs(tmp_path_factory.mktemp("search"))
        cfg = _cfg(inputs, budget_s=600)
        first = _recorded(cfg, f, engines)
        second = _recorded(_copied(cfg, "rerun"), f, engines)
        tight = _cfg(inputs, budget_s=0.001).model_copy(
            update={"output_dir": str(Path(cfg.output_dir).with_name("tight"))})
        third = _recorded(tight, f, engines)
        per_engine = _cfg(inputs, budget_s=600, scope="engine").model_copy(
            update={"output_dir": str(Path(cfg.output_dir).with_name("per-engine"))})
        fourth = _recorded(per_engine, f, engines)
    return cfg, first, second, third, fourth


def test_each_candidate_is_served_and_load_tested_before_the_bento(searched):
    from packager.engines.tune import apply, candidates, choose, EngineSearch

    cfg, first, _, _, _ = searched
    labels = [c.label for c in candidates("vllm", cfg.engine, 2)]
    for v in first.report.variants:
        s = EngineSearch.model_validate(v.engine_search)
        assert [t.candidate.label for t in s.trials] == labels and s.not_tried == []
        assert all(t.error is None and t.output_tokens_per_s > 0 for t in s.trials), s.trials
        assert s.load == 2 and s.load_unit == "concurrency" and s.probe_duration_s == 1  # the profile's own load
        assert s.warmup_s == 0.5
        # the choice is the rule's, from the trials recorded
        chosen, reason = choose(s.trials, cfg.engine_search.min_gain)
        assert s.chosen == chosen and s.reason == reason
        # one bare engine per candidate, with the candidate's arguments, then the bento with the chosen ones
        mine = [(log, eng) for name, log, eng in first.engines if name == v.name]
        assert [log for log, _ in mine] == [f"{i:02d}-engine.log" for i in range(len(labels))]
        assert [eng for _, eng in mine] == [apply(cfg.engine, t.candidate) for t in s.trials]
        build = next(c for c in first.calls["build"] if c["name"] == v.name)
        assert build["engine"] == apply(cfg.engine, s.chosen)
        # and its evaluation summary (what the registry records) names the settings it was served with
        assert v.eval["engine"] == apply(cfg.engine, s.chosen).model_dump(mode="json")
    # one short load test per trial, each under the variant's engine_search/
    assert sum(1 for c in first.calls["loadtest"] if c["name"] == "engine_search") == 2 * len(labels)


def test_the_report_shows_the_search(searched):
    cfg, first, _, _, _ = searched
    md = (Path(cfg.output_dir) / "report.md").read_text()
    assert "## Engine arguments" in md and "--max-num-batched-tokens 8192" in md
    for v in first.report.variants:
        assert v.engine_search["reason"] in md
    assert "w8a8-int8/engine_search" in first.report.timings_s


def test_a_rerun_reuses_the_search(searched):
    _, first, second, _, _ = searched
    assert second.engines == []  # no trial served again; the bento path serves through BentoServer
    assert [v.engine_search for v in second.report.variants] == [v.engine_search for v in first.report.variants]


def test_the_budget_stops_the_trials_after_the_first(searched):
    from packager.engines.tune import EngineSearch

    cfg, _, _, third, _ = searched
    for v in third.report.variants:
        s = EngineSearch.model_validate(v.engine_search)
        assert len(s.trials) == 1 and s.trials[0].candidate.label == "packager's arguments"
        assert s.not_tried == ["max_num_seqs 32", "max_num_seqs 128", "--max-num-batched-tokens 2048",
                               "--max-num-batched-tokens 8192"]
        assert s.chosen is not None and s.chosen.label == "packager's arguments"


def test_scope_engine_searches_the_first_variant_of_an_engine_and_serves_the_later_ones_with_its_choice(searched):
    from packager.engines.tune import EngineSearch, apply, candidates

    cfg, _, _, _, fourth = searched
    base, w8 = fourth.report.variants
    s0, s1 = EngineSearch.model_validate(base.engine_search), EngineSearch.model_validate(w8.engine_search)
    assert len(s0.trials) == len(candidates("vllm", cfg.engine, 2)) and s0.reused_from is None
    assert s1.trials == [] and s1.reused_from == "baseline" and s1.chosen == s0.chosen and s1.wall_s == 0
    assert s1.reason.startswith(f"the arguments searched for baseline on the same engine ({s0.chosen.label})")
    # no bare engine for the second variant; its bento gets the first one's choice
    assert {name for name, _, _ in fourth.engines} == {"baseline"}
    build = next(c for c in fourth.calls["build"] if c["name"] == "w8a8-int8")
    assert build["engine"] == apply(cfg.engine, s0.chosen)
    assert "w8a8-int8/engine_search" not in fourth.report.timings_s
    md = (Path(fourth.report.config["output_dir"]) / "report.md").read_text()
    assert s1.reason in md


def test_variants_of_other_engines_are_not_searched(tmp_path):
    import packager.engines.select as select_mod

    with pytest.MonkeyPatch.context() as mp:
        install_fakes(mp)
        inputs = make_inputs(tmp_path)
        cfg = make_cfg(inputs, recipes=["w8a8-int8"], engine_search={"engines": ["llamacpp"]},
                       eval={"suite": str(inputs.suite), "behaviour_suite": None, "perplexity": False})
        served = []
        fake = select_mod.server_for_model
        mp.setattr(select_mod, "server_for_model", lambda *a, **k: served.append(k) or fake(*a, **k))
        report = release(cfg).report
    assert served == [] and all(v.engine_search is None for v in report.variants)
    assert "## Engine arguments" not in (Path(cfg.output_dir) / "report.md").read_text()


def test_a_trial_is_one_short_load_of_its_own():
    from packager.loadtest.config import parse_loadtest_config
    from packager.release import default_loadtest
    from packager.release.engine_search import trial_config

    sweep = parse_loadtest_config(default_loadtest(), "loadtest")
    t = trial_config(sweep, 16, 8.0, 2)
    assert t.profile.kind == "concurrency" and t.profile.users == 16 and t.profile.duration_s == 8.0
    assert not t.knee.enabled and t.max_duration_s == 8.0 and t.seed != sweep.seed and t.warmup_s == 0
    assert trial_config(sweep, 16, 8.0, 3).seed != t.seed  # each trial its own prompts
    single = parse_loadtest_config({"profile": {"kind": "rate", "requests_per_s": 3, "duration_s": 60}}, "lt")
    r = trial_config(single, 99, 5.0, 0)
    assert r.profile.kind == "rate" and r.profile.requests_per_s == 3 and r.profile.duration_s == 5.0
    assert r.max_duration_s == 5.0 and not r.knee.enabled
    # a warm-up: that much more load, started first and left out of the figures
    for lt, kind in ((sweep, "concurrency"), (single, "rate")):
        w = trial_config(lt, 16, 12.0, 1, warmup_s=8.0)
        assert w.profile.kind == kind and w.profile.duration_s == 20.0 and w.max_duration_s == 20.0
        assert w.warmup_s == 8.0


def test_a_trial_that_measured_nothing_after_its_warm_up_is_an_error(tmp_path, monkeypatch):
    """A first wave that outlasts the probe leaves no request to judge: the trial says so instead of reading the
    warm-up's tail as a measurement."""
    from types import SimpleNamespace

    import packager.engines.select as select_mod
    import packager.loadtest.runner as lt_mod
    from packager.config import EngineConfig, RunConfig
    from packager.engines.tune import EngineCandidate
    from packager.loadtest.config import parse_loadtest_config
    from packager.release import default_loadtest
    from packager.release.engine_search import _trial

    class Server:
        base_url = "http://127.0.0.1:9"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    def phase(sent, excluded):
        return SimpleNamespace(requests_sent=sent, requests_warmup_excluded=excluded, output_token_throughput_per_s=50.0,
                               ttft=SimpleNamespace(p95_ms=300.0) if sent else None, meets_slo=bool(sent))

    results = iter([SimpleNamespace(phases=[phase(0, 16)]), SimpleNamespace(phases=[phase(12, 16)])])
    monkeypatch.setattr(select_mod, "server_for_model", lambda *a, **k: Server())
    monkeypatch.setattr(lt_mod, "run_loadtest", lambda *a, **k: next(results))
    cfg = RunConfig()
    ctx = SimpleNamespace(run=SimpleNamespace(lt_cfg=parse_loadtest_config(default_loadtest(), "lt")),
                          v=SimpleNamespace(root=tmp_path, model_dir=tmp_path, name="v"), cfg=cfg)
    cand = EngineCandidate(label="packager's arguments")
    empty = _trial(ctx, cand, EngineConfig(), 16, 0)
    assert empty.output_tokens_per_s is None and "no request started after the 8 s warm-up" in empty.error
    measured = _trial(ctx, cand, EngineConfig(), 16, 1)
    assert measured.error is None and measured.output_tokens_per_s == 50.0 and measured.meets_slo is True


# ------------------------------------------------------------------ only_passing: the search waits for the gate

@pytest.fixture(scope="module")
def deferred(tmp_path_factory):
    """A release whose variants are searched only once the gate passes them: w8a8-int8 answers as the baseline
    does (passes), poor-int4 one token of four (recovery 40%, rejected). Then a rerun of the same directory."""
    import packager.engines.select as select_mod
    from unit.release import test_release_loop as loop

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(loop.SERVER_SETTINGS, "poor-int4", {"ttft_ms": 5, "itl_ms": 1, "output_tokens": 1})
        f = install_fakes(mp)
        engines: list[str] = []
        fake = select_mod.server_for_model
        mp.setattr(select_mod, "server_for_model",
                   lambda *a, **k: engines.append(k["served_name"]) or fake(*a, **k))
        inputs = make_inputs(tmp_path_factory.mktemp("deferred"))
        cfg = make_cfg(inputs, recipes=["w8a8-int8", "poor-int4"],
                       engine_search={"engines": ["vllm"], "probe_duration_s": 1, "warmup_s": 0.5,
                                      "scope": "variant", "budget_s": 600},
                       eval={"suite": str(inputs.suite), "behaviour_suite": None, "perplexity": False,
                             "concurrency": 4})
        first = _recorded(cfg, f, engines)
        second = _recorded(_copied(cfg, "deferred-rerun"), f, engines)
    return cfg, first, second


def test_deferred_search_runs_for_a_passing_variant_after_its_evaluation(deferred):
    from packager.engines.tune import EngineSearch, apply

    cfg, first, _ = deferred
    rows = {v.name: v for v in first.report.variants}
    assert rows["w8a8-int8"].recovery == 1.0 and rows["poor-int4"].recovery < cfg.quality_floor
    s = EngineSearch.model_validate(rows["w8a8-int8"].engine_search)
    assert s.trials and s.chosen is not None and s.reused_from is None
    # evaluated through a bento with packager's own arguments, then load-tested through one with the chosen ones
    builds = [c["engine"] for c in first.calls["build"] if c["name"] == "w8a8-int8"]
    assert builds == [cfg.engine, apply(cfg.engine, s.chosen)]
    assert rows["w8a8-int8"].eval["engine"] == cfg.engine.model_dump(mode="json")
    served = [c["name"] for c in first.calls["serve"] if c["via"] == "bento"]
    assert served.count("w8a8-int8") == 2
    order = [(c["name"], c["out"]) for c in first.calls["evaluate"] if c["name"] == "w8a8-int8"]
    assert order == [("w8a8-int8", "eval")]  # one evaluation, before the search
    assert first.engines.count("w8a8-int8") == len(s.trials)  # the trials' bare engines
    assert "w8a8-int8/engine_search" in first.report.timings_s
    # the shipped bento is the one with the chosen arguments
    assert rows["w8a8-int8"].bento_tag == "packager-w8a8-int8:fake"


def test_deferred_search_is_dropped_for_a_variant_the_gate_rejects(deferred):
    cfg, first, _ = deferred
    rows = {v.name: v for v in first.report.variants}
    assert rows["poor-int4"].engine_search is None and "poor-int4" not in first.engines
    builds = [c["engine"] for c in first.calls["build"] if c["name"] == "poor-int4"]
    assert builds == [cfg.engine]  # served once, with packager's own arguments, for its evaluation and load test
    assert [c["name"] for c in first.calls["loadtest"]].count("poor-int4") == 1
    assert "poor-int4/engine_search" not in first.report.timings_s
    note = [n for n in first.report.notes if n.startswith("poor-int4: its engine arguments were not searched")]
    assert len(note) == 1 and "quality gate rejects it" in note[0]
    assert any("poor-int4: engine arguments not searched, the quality gate rejects it (" in ln for ln in first.lines)
    # the baseline is never held back: searched before its bento, as without only_passing
    assert rows["baseline"].engine_search is not None and "baseline" in first.engines


def test_deferred_search_rerun_serves_nothing_and_keeps_every_verdict(deferred):
    _, first, second = deferred
    assert second.engines == [] and second.calls["serve"] == [] and second.calls["evaluate"] == []
    assert second.calls["loadtest"] == []
    assert [v.engine_search for v in second.report.variants] == [v.engine_search for v in first.report.variants]
    assert [v.bento_tag for v in second.report.variants] == [v.bento_tag for v in first.report.variants]
    # the rejected variant's note is given again, from the cached evaluation
    assert any(n.startswith("poor-int4: its engine arguments were not searched") for n in second.report.notes)
