import pytest
import yaml

from packager.config import EngineConfig, RunConfig, dump_config, env_overrides, load_config
from packager.errors import ConfigError


def test_defaults_round_trip_yaml(tmp_path, monkeypatch):
    monkeypatch.delenv("PACKAGER_ENGINE__ENFORCE_EAGER", raising=False)  # set for the whole test session
    cfg = RunConfig()
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


def test_precedence_file_env_flags(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"engine": {"dtype": "float32", "max_model_len": 1024}, "quality_floor": 0.8}))
    cfg = load_config(p, {"engine": {"max_model_len": 512}},
                      environ={"PACKAGER_ENGINE__DTYPE": "float16", "PACKAGER_QUALITY_FLOOR": "0.95"})
    assert cfg.engine.dtype == "float16"  # env beats file
    assert cfg.engine.max_model_len == 512  # flags beat file
    assert cfg.quality_floor == 0.95


def test_env_ignores_unrelated_variables():
    assert env_overrides({"PACKAGER_HOME": "/x", "PACKAGER_NOPE": "1", "OTHER": "2"}) == {}


def test_unknown_field_is_refused_with_its_location(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"engine": {"dtipe": "float32"}}))
    with pytest.raises(ConfigError, match=r"engine\.dtipe"):
        load_config(p)


def test_bad_values_name_the_value(tmp_path):
    with pytest.raises(ConfigError, match="usd_per_hour"):
        load_config(None, {"pricing": {"usd_per_hour": -1}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_engine_config_json_round_trip():
    e = EngineConfig(target="gpu", tensor_parallel_size=2, gpu_memory_utilization=0.8)
    assert EngineConfig.model_validate_json(e.model_dump_json()) == e


@pytest.mark.parametrize("floor", [0, -0.1, 1.01, 1.5])
def test_a_quality_floor_outside_0_1_is_refused(floor):
    with pytest.raises(ConfigError, match="quality_floor"):
        load_config(None, {"quality_floor": floor})


def test_quality_gate_section():
    cfg = load_config(None, {"gate": {"max_kl_vs_noise": None, "use_lower_bound": False}})
    assert cfg.gate.max_kl_vs_noise is None and cfg.gate.noise_floor and not cfg.gate.use_lower_bound
    assert RunConfig().quality_floor == 0.97 and RunConfig().gate.max_kl_vs_noise == 15.0
    assert RunConfig().gate.lower_bound_margin == 0.04
    # the gate has a KL test only with a noise floor measured and a multiple of it as the limit
    assert RunConfig().gate.kl_test and not cfg.gate.kl_test
    assert not load_config(None, {"gate": {"noise_floor": False}}).gate.kl_test


@pytest.mark.parametrize("margin", [-0.01, 1.0])
def test_a_lower_bound_margin_outside_0_1_is_refused(margin):
    with pytest.raises(ConfigError, match="lower_bound_margin"):
        load_config(None, {"gate": {"lower_bound_margin": margin}})


def test_the_release_gate_holds_the_lower_bound_to_the_floor_less_the_margin():
    from packager.report.quality_gate import quality_gate

    gate = quality_gate(load_config(None, {"quality_floor": 0.9, "gate": {"lower_bound_margin": 0.05}}),
                        {"mean_kl": 0.001})
    assert gate.floor == 0.9 and gate.lower_bound_floor == pytest.approx(0.85) and gate.use_lower_bound
    assert gate.max_kl == pytest.approx(0.015) and gate.noise_floor_kl == 0.001
    strict = quality_gate(load_config(None, {"gate": {"lower_bound_margin": 0}}), None)
    assert strict.lower_bound_floor == pytest.approx(0.97) and strict.max_kl is None
    with pytest.raises(ConfigError, match="max_kl_vs_noise"):
        load_config(None, {"gate": {"max_kl_vs_noise": 0}})


def test_the_shipped_gpu_config_loads_as_a_gpu_release():
    """configs/gpu.yaml (the README's GPU release) stays valid: a GPU engine, the GPU recipes, a priced GPU
    instance, and a load test whose capacity search can run within its sweep's limits."""
    from pathlib import Path

    from packager.config import DEFAULT_RECIPES
    from packager.loadtest.pricing import resolve_price

    cfg = load_config(Path(__file__).parents[3] / "configs" / "gpu.yaml", environ={})
    assert cfg.engine.target == "gpu" and cfg.engine.backend == "vllm"
    assert cfg.engine.api_server_count == 4  # one API server process was the knee on an H100 (the README)
    # 512 sequences met the SLO on an H100 behind 4 API servers (benchmarks/results/gpu_ceiling.json)
    assert cfg.engine.max_num_seqs == 512
    assert tuple(cfg.recipes) == DEFAULT_RECIPES["gpu"]
    assert cfg.loadtest is not None and cfg.loadtest.knee.enabled and cfg.loadtest.workers >= 1
    assert max(cfg.loadtest.profile.values) <= cfg.loadtest.profile.max_in_flight
    assert resolve_price(cfg.pricing).usd_per_hour > 1.0  # a GPU instance, from the bundled table
