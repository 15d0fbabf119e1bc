"""`packager config show` / `schema`, and the typed loadtest and registry sections of RunConfig."""
from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from packager.cli import app
from packager.config import RegistryConfig, RunConfig, dump_config, load_config
from packager.errors import ConfigError
from packager.loadtest.config import LoadTestConfig


def test_show_prints_the_effective_configuration_file_env_and_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"eval": {"max_items": 50, "concurrency": 4},
                                   "loadtest": {"profile": {"kind": "concurrency", "users": 3, "duration_s": 10}},
                                   "registry": {"name": "smol"}}))
    monkeypatch.setenv("PACKAGER_EVAL__CONCURRENCY", "2")
    r = CliRunner().invoke(app, ["config", "show", "--config", str(cfg), "--set", "eval.max_items=20",
                                 "--set", "slo.ttft_ms=900"])
    assert r.exit_code == 0, r.output
    shown = yaml.safe_load(r.stdout)
    assert shown["eval"]["max_items"] == 20 and shown["eval"]["concurrency"] == 2  # flag > env > file
    assert shown["slo"]["ttft_ms"] == 900.0 and shown["registry"] == {"name": "smol", "uri": None,
                                                                        "log_artifacts": False}
    assert shown["loadtest"]["profile"] == {"kind": "concurrency", "users": 3, "duration_s": 10.0}
    # what it shows loads back to the same configuration
    again = tmp_path / "again.yaml"
    again.write_text(r.stdout)
    monkeypatch.delenv("PACKAGER_EVAL__CONCURRENCY")
    assert load_config(again) == RunConfig.model_validate(shown)


@pytest.mark.parametrize("args, message", [
    (["--set", "eval.max_items=-3"], "eval.max_items: Input should be greater than or equal to 1 (got -3)"),
    (["--set", "nonsense"], "--set 'nonsense' is not KEY=VALUE with a dotted KEY"),
    (["--set", "loadtest.profile.kind=teleport"], "loadtest.profile"),
    (["--set", "registry.colour=red"], "registry.colour: Extra inputs are not permitted"),
])
def test_show_refuses_bad_settings_with_the_field(args, message):
    r = CliRunner().invoke(app, ["config", "show", *args])
    assert r.exit_code == 2 and message in r.output, r.output


def test_schema_describes_every_section():
    r = CliRunner().invoke(app, ["config", "schema"])
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    assert set(schema["properties"]) == set(RunConfig.model_fields)
    assert "LoadTestConfig" in json.dumps(schema["properties"]["loadtest"]) and "RegistryConfig" in schema["$defs"]


def test_loadtest_and_registry_are_typed_sections():
    cfg = RunConfig.model_validate({"loadtest": {"max_requests": 7}, "registry": {"uri": "sqlite:///x.db"}})
    assert isinstance(cfg.loadtest, LoadTestConfig) and cfg.loadtest.max_requests == 7
    assert isinstance(cfg.registry, RegistryConfig) and cfg.registry.uri == "sqlite:///x.db"
    # no section, or an empty one, leaves each command its own default load test
    assert RunConfig().loadtest is None and RunConfig.model_validate({"loadtest": {}}).loadtest is None
    # a bad section is refused when the configuration is read, before any work
    with pytest.raises(ConfigError, match=r"loadtest.max_requests: Input should be greater than or equal to 1"):
        load_config(None, {"loadtest": {"max_requests": 0}})
    # and the dump round-trips
    assert RunConfig.model_validate(yaml.safe_load(dump_config(cfg))) == cfg
