"""Bento arguments: parsing, validation messages, and the settings derived from them."""
from __future__ import annotations

import pytest

from packager.config import EngineConfig
from packager.errors import ConfigError
from packager.serve.args import (BENTO_CONCURRENCY_HEADROOM, ENV_BACKEND_PORT, ENV_USD_PER_HOUR, BentoArgs, bento_name,
                                 deployment_overrides, parse_args)

BASE = {"model_tag": "smollm2:abc123", "model_digest": "d" * 64}


def test_defaults_and_string_coercion_from_bentoml_cli():
    # `bentoml build --arg max_num_seqs=32 --arg usd_per_hour=0.5` hands every value over as a string
    a = parse_args({**BASE, "max_num_seqs": "32", "usd_per_hour": "0.5", "extra_args": "--enforce-eager --seed 1"})
    assert a.max_num_seqs == 32 and a.usd_per_hour == 0.5
    assert a.extra_args == ["--enforce-eager", "--seed", "1"]
    assert a.backend == "vllm" and a.target == "cpu" and a.backend_port == 8000
    assert a.inference_concurrency == 32  # follows max_num_seqs
    assert a.served_name == "model"


def test_unknown_field_and_bad_values_are_refused_with_the_value():
    with pytest.raises(ConfigError, match="tensor_parallel"):
        parse_args({**BASE, "tensor_parallel": 2})
    with pytest.raises(ConfigError, match=r"max_num_seqs.*got 0"):
        parse_args({**BASE, "max_num_seqs": 0})
    with pytest.raises(ConfigError, match="'My Service'.*'my-service'"):
        parse_args({**BASE, "service_name": "My Service"})
    with pytest.raises(ConfigError, match="model_tag"):
        parse_args({"model_digest": "d"})


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"backend 'tgi' is not available; known backends: llamacpp, vllm"):
        parse_args({**BASE, "backend": "tgi"})


def test_tensor_parallel_needs_a_gpu_target():
    with pytest.raises(ConfigError, match="tensor_parallel_size=2 needs target=gpu"):
        parse_args({**BASE, "tensor_parallel_size": 2})


def test_engine_config_carries_every_engine_setting():
    a = parse_args({**BASE, "target": "gpu", "dtype": "float16", "max_model_len": 4096, "max_num_seqs": 128,
                    "tensor_parallel_size": 4, "gpu_type": "nvidia-h100-80gb", "gpu_memory_utilization": 0.8,
                    "extra_args": ["--enforce-eager"]})
    e = a.engine_config()
    assert isinstance(e, EngineConfig)
    assert (e.target, e.dtype, e.max_model_len, e.max_num_seqs) == ("gpu", "float16", 4096, 128)
    assert (e.tensor_parallel_size, e.gpu_type, e.gpu_memory_utilization) == (4, "nvidia-h100-80gb", 0.8)
    assert e.extra_args == ["--enforce-eager"]


def test_gpu_target_resources_traffic_and_labels():
    a = parse_args({**BASE, "target": "gpu", "tensor_parallel_size": 2, "gpu_type": "nvidia-l4", "max_num_seqs": 96,
                    "timeout_s": 120, "model_name": "SmolLM2", "registry_version": "7"})
    assert a.resources() == {"gpu": 2, "gpu_type": "nvidia-l4"}
    assert a.traffic() == {"timeout": 120.0, "max_concurrency": 96 + BENTO_CONCURRENCY_HEADROOM, "concurrency": 96}
    assert a.hardware_label == "nvidia-l4x2"
    assert a.metric_labels() == {"model": "SmolLM2", "registry_version": "7", "backend": "vllm",
                                 "hardware": "nvidia-l4x2"}
    labels = a.service_labels()
    assert labels["packager.model_digest"] == "d" * 64 and labels["packager.model_tag"] == "smollm2:abc123"


def test_cpu_target_has_no_gpu_resources_and_an_explicit_concurrency_limit_wins():
    a = parse_args({**BASE, "max_concurrency": 10, "hardware": "c7i.xlarge"})
    assert a.resources() == {}
    assert a.inference_concurrency == 10 and a.traffic()["max_concurrency"] == 10 + BENTO_CONCURRENCY_HEADROOM
    assert a.hardware_label == "c7i.xlarge"


def test_deployment_overrides_from_the_environment():
    a = parse_args(BASE)
    assert deployment_overrides(a, {}) is a
    b = deployment_overrides(a, {ENV_BACKEND_PORT: "18001", ENV_USD_PER_HOUR: "2.5"})
    assert b.backend_port == 18001 and b.usd_per_hour == 2.5
    with pytest.raises(ConfigError, match="backend_port"):
        deployment_overrides(a, {ENV_BACKEND_PORT: "99999"})


def test_args_round_trip_through_yaml_like_the_arg_file():
    import yaml

    a = parse_args({**BASE, "target": "gpu", "tensor_parallel_size": 2, "usd_per_hour": 1.0})
    again = BentoArgs.model_validate(yaml.safe_load(yaml.safe_dump(a.model_dump(mode="json", exclude_none=True))))
    assert again == a


@pytest.mark.parametrize("text,name", [("SmolLM2-135M-Instruct", "smollm2-135m-instruct"), ("a b/c", "a-b-c"),
                                       ("--x--", "x"), ("", "model")])
def test_bento_name(text, name):
    assert bento_name(text) == name


def test_inference_routes_are_left_out_of_tracing_unless_asked():
    assert parse_args(BASE).tracing() == {"excluded_urls": ["/v1/chat/completions", "/v1/completions"]}
    assert parse_args({**BASE, "trace_inference": "true"}).tracing() == {}


def test_more_gateway_workers_share_the_concurrency_limit():
    a = parse_args({**BASE, "max_num_seqs": 64, "workers": 3})
    assert a.inference_concurrency == 64 and a.concurrency_per_worker == 22
