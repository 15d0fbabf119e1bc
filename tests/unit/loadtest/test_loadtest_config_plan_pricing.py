"""LoadTestConfig validation, plan building (prompt sources, profiles, traces) and the price table."""
from __future__ import annotations

import json
import random

import pytest
import yaml

from packager.config import PricingConfig, load_config
from packager.errors import ConfigError
from packager.loadtest.config import LoadTestConfig, parse_loadtest_config
from packager.loadtest.plan import PROFILES, PROMPT_SOURCES, build_plan, read_trace, sample_length
from packager.loadtest.pricing import load_price_table, resolve_price

PROFILE_EXAMPLES = {
    "concurrency": {"kind": "concurrency", "users": 3, "duration_s": 5},
    "rate": {"kind": "rate", "requests_per_s": 2.5, "duration_s": 5, "arrival": "constant"},
    "sweep": {"kind": "sweep", "mode": "concurrency", "values": [1, 2, 4], "step_duration_s": 5},
    "burst": {"kind": "burst", "burst_size": 4, "interval_s": 2, "bursts": 3, "background_requests_per_s": 1},
    "replay": {"kind": "replay", "trace": "t.jsonl", "speedup": 2},
}


def test_every_profile_kind_is_registered_and_round_trips():
    assert PROFILES.names() == sorted(PROFILE_EXAMPLES)
    assert PROMPT_SOURCES.names() == ["conversations", "hf", "jsonl", "suite", "synthetic"]
    for kind, prof in PROFILE_EXAMPLES.items():
        cfg = LoadTestConfig.model_validate({"profile": prof})
        assert cfg.profile.kind == kind
        again = LoadTestConfig.model_validate(yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json"))))
        assert again == cfg


def test_config_errors_name_the_field_and_value():
    with pytest.raises(ConfigError, match=r"profile.rate.bogus"):
        parse_loadtest_config({"profile": {"kind": "rate", "bogus": 1}})
    with pytest.raises(ConfigError, match=r"profile: Input tag 'ramp'"):
        parse_loadtest_config({"profile": {"kind": "ramp"}})
    with pytest.raises(ConfigError, match=r"dispatches for 90 s, more than max_duration_s=60"):
        parse_loadtest_config({"profile": {"kind": "sweep", "values": [1, 2, 3], "step_duration_s": 30},
                               "max_duration_s": 60})
    with pytest.raises(ConfigError, match=r"whole numbers of users"):
        parse_loadtest_config({"profile": {"kind": "sweep", "mode": "concurrency", "values": [1.5]}})
    with pytest.raises(ConfigError, match=r"requests_per_s"):
        parse_loadtest_config({"profile": {"kind": "rate", "requests_per_s": 0}})
    with pytest.raises(ConfigError, match=r"max_requests"):
        parse_loadtest_config({"max_requests": 0})


def test_run_config_loadtest_section_validates(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"loadtest": {"profile": {"kind": "rate", "requests_per_s": 3, "duration_s": 10},
                                              "workers": 2}}))
    cfg = parse_loadtest_config(load_config(p).loadtest)
    assert cfg.profile.kind == "rate" and cfg.profile.requests_per_s == 3 and cfg.workers == 2


def test_synthetic_prompts_lengths_and_forced_output():
    cfg = LoadTestConfig.model_validate({"prompts": {"kind": "synthetic", "input_tokens": {"mean": 40},
                                                     "output_tokens": {"dist": "uniform", "min": 5, "max": 9},
                                                     "unique_prompts": 50}})
    plan = build_plan(cfg, "http://127.0.0.1:1", "m")
    reqs = plan["requests"]
    assert len(reqs) == 50 and len({r["messages"][0]["content"] for r in reqs}) == 50
    assert all(len(r["messages"][0]["content"].split()) == 40 for r in reqs)
    assert {r["max_tokens"] for r in reqs} <= set(range(5, 10)) and len({r["max_tokens"] for r in reqs}) > 1
    assert all(r["ignore_eos"] is True and r["min_tokens"] == r["max_tokens"] for r in reqs)
    assert build_plan(cfg, "http://127.0.0.1:1", "m")["requests"] == reqs  # seeded: reproducible


def test_length_distributions_respect_bounds():
    from packager.loadtest.config import LengthDistribution

    rng = random.Random(0)
    d = LengthDistribution(dist="normal", mean=100, std=50, min=80, max=120)
    v = [sample_length(d, rng) for _ in range(500)]
    assert min(v) == 80 and max(v) == 120
    with pytest.raises(ValueError, match="min"):
        LengthDistribution(dist="uniform", min=10, max=5)


def test_suite_and_jsonl_prompt_sources(tmp_path):
    suite = tmp_path / "s.jsonl"
    suite.write_text('{"id": "a", "prompt": "2+2?", "reference": "4", "scorer": "exact", "max_tokens": 4}\n'
                     '{"id": "b", "prompt": "Capital of France?", "reference": "Paris", "scorer": "contains", '
                     '"system": "Be brief."}\n')
    plan = build_plan(LoadTestConfig.model_validate({"prompts": {"kind": "suite", "suite": str(suite)}}),
                      "http://127.0.0.1:1", "m")
    assert plan["requests"] == [
        {"messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 4},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
         "max_tokens": 32}]
    assert plan["endpoint"] == "/v1/chat/completions" and plan["prompt_format"] == "chat"
    raw = build_plan(LoadTestConfig.model_validate({"prompts": {"kind": "suite", "suite": str(suite)}}),
                     "http://127.0.0.1:1", "m", prompt_format="completion")
    assert raw["endpoint"] == "/v1/completions" and raw["prompt_format"] == "completion"
    assert raw["requests"] == [{"max_tokens": 4, "prompt": "2+2?"},
                               {"max_tokens": 32, "prompt": "Be brief.\n\nCapital of France?"}]
    reqs = tmp_path / "r.jsonl"
    reqs.write_text(json.dumps({"model": "x", "stream": False, "messages": [{"role": "user", "content": "hi"}],
                                "max_completion_tokens": 7, "temperature": 0.5}) + "\n# comment\n")
    plan = build_plan(LoadTestConfig.model_validate({"prompts": {"kind": "jsonl", "path": str(reqs)}}),
                      "http://127.0.0.1:1", "m")
    assert plan["requests"] == [{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 7, "temperature": 0.5}]
    reqs.write_text('{"messages": []}\n')
    with pytest.raises(ConfigError, match=r"r.jsonl, line 1, field 'messages'"):
        build_plan(LoadTestConfig.model_validate({"prompts": {"kind": "jsonl", "path": str(reqs)}}),
                   "http://127.0.0.1:1", "m")
    with pytest.raises(ConfigError, match="does not exist"):
        build_plan(LoadTestConfig.model_validate({"prompts": {"kind": "jsonl", "path": str(tmp_path / "no")}}),
                   "http://127.0.0.1:1", "m")


def test_burst_and_sweep_phases():
    plan = build_plan(LoadTestConfig.model_validate({"profile": PROFILE_EXAMPLES["burst"]}), "http://127.0.0.1:1", "m")
    (ph,) = plan["phases"]
    assert ph["kind"] == "schedule" and ph["duration_s"] == 6 and ph["background_rate_per_s"] == 1
    assert [a[0] for a in ph["arrivals"]] == [0.0] * 4 + [2.0] * 4 + [4.0] * 4
    plan = build_plan(LoadTestConfig.model_validate({"profile": {"kind": "sweep", "values": [1, 3], "mode": "rate",
                                                                 "step_duration_s": 4}}), "http://127.0.0.1:1", "m")
    assert [(p["kind"], p["rate_per_s"], p["duration_s"], p["index"]) for p in plan["phases"]] == [
        ("open", 1, 4, 0), ("open", 3, 4, 1)]



def test_closed_loop_users_start_over_the_ramp():
    sweep = {"kind": "sweep", "values": [1, 4, 16], "mode": "concurrency", "step_duration_s": 20}
    plan = build_plan(LoadTestConfig.model_validate({"profile": sweep}), "http://127.0.0.1:1", "m")
    # the default: a quarter of each step; one user has nothing to spread
    assert [(p["kind"], p["users"], p["ramp_s"]) for p in plan["phases"]] == [
        ("closed", 1, 0.0), ("closed", 4, 5.0), ("closed", 16, 5.0)]
    plan = build_plan(LoadTestConfig.model_validate({"profile": {"kind": "concurrency", "users": 8, "duration_s": 10},
                                                     "ramp_fraction": 0}), "http://127.0.0.1:1", "m")
    assert plan["phases"][0]["ramp_s"] == 0.0
    with pytest.raises(ConfigError, match="ramp_fraction"):
        parse_loadtest_config({"ramp_fraction": 1.0})

def test_replay_trace_speedup_and_truncation(tmp_path):
    t = tmp_path / "t.jsonl"
    t.write_text("\n".join(json.dumps({"timestamp_s": 100 + i, "input_tokens": 5 + i, "output_tokens": 3 + i})
                           for i in range(10)))
    cfg = LoadTestConfig.model_validate({"profile": {"kind": "replay", "trace": str(t), "speedup": 2},
                                         "max_duration_s": 3})
    plan = build_plan(cfg, "http://127.0.0.1:1", "m")
    (ph,) = plan["phases"]
    assert [a[0] for a in ph["arrivals"]] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]  # 3.0 and later: beyond max_duration_s
    assert ph["trace_requests_beyond_max_duration"] == 4
    bodies = [plan["requests"][i] for _, i in ph["arrivals"]]
    assert [b["max_tokens"] for b in bodies] == [3, 4, 5, 6, 7, 8]
    assert [len(b["messages"][0]["content"].split()) for b in bodies] == [5, 6, 7, 8, 9, 10]
    t.write_text('{"timestamp_s": "soon", "input_tokens": 3, "output_tokens": 2}\n')
    with pytest.raises(ConfigError, match=r"line 1, field 'timestamp_s'"):
        read_trace(str(t))


def test_bundled_price_table_keeps_sources_and_resolves():
    table = load_price_table()
    assert "S_AWS7" in table.sources and "skypilot" in table.sources["S_AWS7"]
    q = resolve_price(PricingConfig(instance="c7i.xlarge"))
    assert q.usd_per_hour == pytest.approx(0.1785) and "S_AWS7" in q.source
    q = resolve_price(PricingConfig(instance="c7i.xlarge", usd_per_hour=1.25))
    assert q.usd_per_hour == 1.25 and "explicit" in q.source


def test_unknown_instance_lists_close_names():
    with pytest.raises(ConfigError) as e:
        resolve_price(PricingConfig(instance="c7i.xlarj"))
    assert "'c7i.xlarj'" in str(e.value) and "Close names: c7i.xlarge" in str(e.value)


def test_negative_prices_are_refused(tmp_path):
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        PricingConfig(usd_per_hour=-1)
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"sources": {"S": "me"}, "instances": [
        {"provider": "x", "name": "box", "usd_per_hour": -0.5, "source": "S"}]}))
    with pytest.raises(ConfigError, match=r"instances.0.usd_per_hour"):
        resolve_price(PricingConfig(instance="box", price_table=str(bad)))


def test_user_price_table_overrides_bundled(tmp_path):
    own = tmp_path / "p.yaml"
    own.write_text(yaml.safe_dump({"sources": {"S": "our contract, 2026-01"}, "instances": [
        {"provider": "onprem", "name": "rack-a", "usd_per_hour": 0.42, "source": "S", "as_of": "2026-01"}]}))
    q = resolve_price(PricingConfig(instance="rack-a", price_table=str(own)))
    assert q.usd_per_hour == 0.42 and "our contract" in q.source
    with pytest.raises(ConfigError, match="Unknown instance 'c7i.xlarge'"):
        resolve_price(PricingConfig(instance="c7i.xlarge", price_table=str(own)))
