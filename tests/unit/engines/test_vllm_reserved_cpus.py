"""The CPUs vLLM CPU keeps free of its OpenMP threads (engine.cpu_reserved_cpus, packager.engines.vllm)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

import packager.hardware as H
from packager.config import EngineConfig
from packager.engines.vllm import SMALL_HOST_CPUS, reserved_cpus, vllm_env
from packager.serve.backends import BACKENDS
from packager.serve.build import make_args

ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"


def test_none_reserved_on_a_small_host_vllms_own_above_and_a_setting_always_wins():
    assert reserved_cpus(EngineConfig(), host_cpus=2) == 0
    assert reserved_cpus(EngineConfig(), host_cpus=SMALL_HOST_CPUS) == 0
    assert reserved_cpus(EngineConfig(), host_cpus=SMALL_HOST_CPUS + 1) is None
    assert reserved_cpus(EngineConfig(cpu_reserved_cpus=1), host_cpus=2) == 1
    assert reserved_cpus(EngineConfig(cpu_reserved_cpus=0), host_cpus=64) == 0


def test_the_host_is_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(H, "cpu_threads", lambda: 2)
    assert vllm_env(EngineConfig(), base={})[ENV] == "0"
    monkeypatch.setattr(H, "cpu_threads", lambda: 16)
    assert ENV not in vllm_env(EngineConfig(), base={})


def test_an_operators_variable_is_kept_and_a_gpu_engine_gets_none(monkeypatch):
    monkeypatch.setattr(H, "cpu_threads", lambda: 2)
    assert vllm_env(EngineConfig(), base={ENV: "1"})[ENV] == "1"
    assert ENV not in vllm_env(EngineConfig(target="gpu"), base={})


def test_a_negative_count_is_refused_at_config_load():
    with pytest.raises(ValidationError, match="cpu_reserved_cpus"):
        EngineConfig(cpu_reserved_cpus=-1)


def test_the_setting_travels_through_the_bento_and_is_decided_on_the_serving_host(monkeypatch):
    def args(engine):
        return make_args(model_tag="m:v1", model_digest="d" * 64, engine=engine, service_name="packager-m",
                         model_name="m")

    vllm = BACKENDS.get("vllm")
    assert args(EngineConfig(cpu_reserved_cpus=1)).engine_config().cpu_reserved_cpus == 1
    assert vllm.env(args(EngineConfig(cpu_reserved_cpus=1)), {})[ENV] == "1"
    unset = args(EngineConfig())
    assert unset.cpu_reserved_cpus is None  # not fixed where the bento is built
    monkeypatch.setattr(H, "cpu_threads", lambda: 2)
    assert vllm.env(unset, {})[ENV] == "0"
    monkeypatch.setattr(H, "cpu_threads", lambda: 32)
    assert ENV not in vllm.env(unset, {})


def test_vllm_reads_the_variable_this_module_sets():
    envs = pytest.importorskip("vllm.envs")
    assert ENV in envs.environment_variables
