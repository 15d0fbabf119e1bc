"""CLI flags derived from the config models: help from the field description, values as dotted overrides."""
from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from packager.cli import app
from packager.cli.options import config_field, config_help, overrides
from packager.config import EvalConfig, load_config


def test_config_field_walks_nested_and_optional_sections():
    assert config_field("eval.max_items") is EvalConfig.model_fields["max_items"]
    assert config_field("loadtest.max_requests").annotation is not None  # through Optional[LoadTestConfig]
    for bad in ("eval.nope", "nope", "model.sub"):
        with pytest.raises(KeyError):
            config_field(bad)


def test_help_names_the_setting_and_its_default():
    assert config_help("eval.max_items") == ("score only the first N suite items "
                                             "(setting eval.max_items; default: none)")
    assert config_help("recipes").endswith("gpu's is w8a8-int8, gptq-w4a16, fp8 "
                                           "(setting recipes; default: w8a8-int8, gguf-q8_0, gguf-q4_k_m)")
    assert config_help("eval.perplexity").endswith("default: true)")


def test_overrides_drop_unset_flags_and_nest_the_rest():
    assert overrides({"eval.max_items": 5, "engine.dtype": None, "model": "m", "eval.perplexity": False}) == {
        "eval": {"max_items": 5, "perplexity": False}, "model": "m"}
    with pytest.raises(KeyError):
        overrides({"eval.max_item": 5})  # a typo in a command fails its tests
    cfg = load_config(None, overrides({"eval.max_items": 5, "engine.target": "gpu"}))
    assert cfg.eval.max_items == 5 and cfg.engine.target == "gpu" and cfg.eval.concurrency == 8


@pytest.mark.parametrize("command, flag, setting", [
    (["release"], "--max-items", "eval.max_items"),
    (["release"], "--time-budget-s", "time_budget_s"),
    (["evaluate"], "--concurrency", "eval.concurrency"),
    (["evaluate"], "--dtype", "engine.dtype"),
    (["build"], "--kvcache-gib", "engine.cpu_kvcache_space_gib"),
    (["build"], "--reserved-cpus", "engine.cpu_reserved_cpus"),
    (["compress"], "--target", "engine.target"),
])
def test_every_config_flag_shows_its_settings_help(command, flag, setting):
    r = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "300", "TERM": "dumb"})
    assert r.exit_code == 0, r.output
    flat = re.sub(r"[\s│]+", " ", r.output)
    assert flag in flat and f"(setting {setting}; default:" in flat
    assert config_help(setting).split(" (setting")[0] in flat


def test_build_flags_reach_the_engine_settings_of_the_bento(monkeypatch):
    import inspect
    from types import SimpleNamespace

    import packager.serve.build as B
    from packager.cli.serve import ENGINE_FLAGS, build

    assert set(ENGINE_FLAGS) <= set(inspect.signature(build).parameters)  # each key is a flag of `packager build`
    seen = {}

    def fake_build_bento(variant_dir, *, engine, **kw):
        seen["engine"] = engine
        return SimpleNamespace(bento_tag="packager-m:v1", model_tag="m:v1")

    monkeypatch.setattr(B, "build_bento", fake_build_bento)
    r = CliRunner().invoke(app, ["build", "default", "--kvcache-gib", "3", "--reserved-cpus", "0",
                                 "--omp-threads-bind", "0-1", "--max-num-seqs", "8", "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    e = seen["engine"]
    assert (e.cpu_kvcache_space_gib, e.cpu_reserved_cpus, e.cpu_omp_threads_bind, e.max_num_seqs, e.dtype) == \
        (3, 0, "0-1", 8, "float32")
    assert e.backend == "vllm" and e.chat_template is None  # flags not given keep the configuration's values
