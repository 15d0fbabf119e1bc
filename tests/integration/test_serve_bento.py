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
from conftest import corrupt_tail, metric_value, run_cli
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
    r = httpx.get(bento_server.base_url + "/v1/models", headers=bento_server.headers, timeout=30)
    assert r.status_code == 200
    assert bento_server.model in [m["id"] for m in r.json()["data"]]


def test_chat_completion_answers_like_the_engine_behind_it(bento_server):
    body = {"model": bento_server.model, "messages": QUESTION, "max_tokens": 24, "temperature": 0}
    r = httpx.post(bento_server.base_url + "/v1/chat/completions", headers=bento_server.headers, json=body, timeout=120)
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
    with httpx.stream("POST", bento_server.base_url + "/v1/completions", headers=bento_server.headers, json=body, timeout=120) as r:
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
    r = httpx.post(bento_server.base_url + "/v1/chat/completions", headers=bento_server.headers,
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

    from packager.serve.auth import ENV_API_KEYS, generate_key

    keyed = {**own_store, ENV_API_KEYS: generate_key()}
    r = subprocess.run(serve_command(tag, port=free_port()), env=serve_env(base=keyed), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 3, (r.returncode, r.stderr[-3000:])
    assert f"refusing to serve {model_tag}" in r.stderr
    assert "sha256 mismatch: model.safetensors" in r.stderr
    assert "vllm.entrypoints.openai.api_server" not in r.stderr  # the backend was never started


def test_a_bento_without_a_usable_key_refuses_to_start(tiny_llama_dir, own_store, build_bento_cli):
    """An empty key: `bentoml serve` exits with a message that says what to set, before any backend starts.
    (No key at all and keys too short to be secrets take the same path: tests/unit/serve/test_auth.py.)"""
    from packager.engines.base import free_port
    from packager.serve.auth import ENV_API_KEYS
    from packager.serve.server import serve_command, serve_env

    tag = build_bento_cli(tiny_llama_dir, "--name", "packager-it-tiny-keys", "--max-model-len", "512", env=own_store)
    for keys in ("",):
        env = serve_env(base={k: v for k, v in own_store.items() if not k.startswith("PACKAGER_API_KEYS")})
        if keys is not None:
            env[ENV_API_KEYS] = keys
        r = subprocess.run(serve_command(tag, port=free_port()), env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2, (keys, r.returncode, r.stderr[-3000:])
        assert "refusing to serve" in r.stderr, (keys, r.stderr[-3000:])
        if keys == "too-short":
            assert "shorter than 16 characters" in r.stderr
        else:
            assert "requires an API key and was given none" in r.stderr and "PACKAGER_API_KEYS" in r.stderr
        assert "vllm.entrypoints.openai.api_server" not in r.stderr


def test_a_version_not_approved_is_refused_at_serve_time(tiny_llama_dir, tmp_path, own_store, build_bento_cli):
    """A bento built with --require-approved reads the registry when it starts: a rejected version refuses to
    serve (no backend started); `packager serve --require-approved` refuses the same before starting anything."""
    from packager.engines.base import free_port
    from packager.registry import ModelRegistry
    from packager.registry.documents import VariantRegistration
    from packager.serve.auth import ENV_API_KEYS, generate_key
    from packager.serve.server import serve_command, serve_env

    reg_dir = tmp_path / "registry"
    reg = ModelRegistry(str(reg_dir))
    version = reg.register_variant(VariantRegistration("tiny-approval", tiny_llama_dir, source_model="default",
                                                       eval_results={"score": 0.5}))
    tag = build_bento_cli(tiny_llama_dir, "--name", "packager-it-tiny-approval", "--max-model-len", "512",
                          "--registry-name", "tiny-approval", "--registry-version", str(version),
                          "--require-approved", env=own_store)
    env = serve_env(base={**own_store, ENV_API_KEYS: generate_key(), "PACKAGER_REGISTRY_URI": str(reg_dir)})
    reg.reject("tiny-approval", version, by="qa@example.com", reason="recovery below the floor")
    r = subprocess.run(serve_command(tag, port=free_port()), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert f"tiny-approval version {version} is not approved for serving (state: rejected" in r.stderr
    assert "recovery below the floor" in r.stderr
    assert "vllm.entrypoints.openai.api_server" not in r.stderr
    # (pending and stale versions are refused the same way: tests/unit/registry/test_registry_store.py)
    r = run_cli("serve", tag, "--require-approved", "--registry-uri", str(reg_dir), env=env, timeout_s=120)
    assert r.returncode == 4, (r.returncode, r.stderr[-2000:])
    assert f"Refusing to serve {tag}" in r.stderr and "state: rejected" in r.stderr
