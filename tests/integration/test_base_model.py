"""A base model without a chat template, end to end through real vLLM engines and a real bento.

vLLM refuses chat requests for a tokenizer without a chat template. packager then sends raw prompts through
/v1/completions, decided from the model directory or by asking the endpoint once. The decision holds for a
suite evaluation, for fidelity against a baseline (which passes its format on to the variant) and for a load
test. A user-supplied chat template (`packager build --chat-template`) travels inside the bento, so that bento
takes chat requests.

The model is a tiny random Llama (2 layers, hidden 128) with the bundled tokenizer, its chat template removed.
Its answers are noise, so the tests assert what holds whatever the answers are: formats, counts, that no request
failed, and that an engine compared with itself has a KL of about zero.
"""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from conftest import build_tiny_llama, run_cli, test_engine

pytestmark = pytest.mark.slow

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory, default_model) -> Path:
    from packager.core.prompt_format import model_has_chat_template

    # head_dim 64: vLLM's CPU attention has no kernel for the 16 of the unit tests' tiny Llama
    d = build_tiny_llama(tmp_path_factory.mktemp("tiny-base"), default_model.path, layers=2, hidden=128, heads=2,
                         kv_heads=1, intermediate=256)
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    (d / "chat_template.jinja").unlink(missing_ok=True)
    assert not model_has_chat_template(d)
    return d


@pytest.fixture(scope="module")
def base_engine(base_model_dir):
    from packager.engines.vllm import EngineServer

    srv = EngineServer(base_model_dir, test_engine(max_model_len=1024), served_name="tiny-base")
    srv.start()
    yield srv
    srv.stop()


def test_evaluate_sends_raw_prompts_and_a_variant_inherits_the_format(base_engine, tmp_path):
    url = base_engine.base_url
    r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                   json={"model": "tiny-base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert r.status_code == 400 and "chat template" in r.text.lower()  # why the completion path exists

    base_out = tmp_path / "baseline"
    p = run_cli("evaluate", url, "--name", "tiny-base", "--max-items", "6", "--no-perplexity",
                "--fidelity-prompts", "4", "--concurrency", "2", "--out", str(base_out), timeout_s=300)
    assert p.returncode == 0, p.stdout + p.stderr
    s = json.loads((base_out / "summary.json").read_text())
    assert s["prompt_format"] == "completion" and s["n_items"] == 6 and s["n_errors"] == 0
    assert s["fidelity_prompts"] == 4 and s["fidelity_source"].startswith("corpus:")
    assert any("/v1/completions" in n for n in s["notes"])
    assert "raw text (no template)" in p.stdout
    refs = [json.loads(line) for line in (base_out / "fidelity_items.jsonl").read_text().splitlines()]
    assert len(refs) == 4 and all(r["prompt_token_ids"] and r["output_token_ids"] for r in refs)

    # A "variant" (the same engine) evaluated against that baseline: completion again, fidelity about perfect.
    var_out = tmp_path / "variant"
    p = run_cli("evaluate", url, "--name", "tiny-variant", "--max-items", "6", "--no-perplexity",
                "--concurrency", "2", "--prompt-format", "chat", "--baseline", str(base_out), "--out", str(var_out),
                timeout_s=300)
    assert p.returncode == 0, p.stdout + p.stderr
    v = json.loads((var_out / "summary.json").read_text())
    assert v["prompt_format"] == "completion"  # the baseline's format wins over the flag
    assert v["n_errors"] == 0 and v["baseline_score"] == s["score"]
    assert v["recovery"] == (None if s["score"] == 0 else pytest.approx(v["score"] / s["score"]))  # noise scores 0
    assert v["fidelity_prompts"] == 4 and v["fidelity_mean_kl"] is not None and v["fidelity_mean_kl"] < 1e-3


def test_loadtest_asks_the_target_and_sends_completions(base_engine, tmp_path):
    out = tmp_path / "lt"
    p = run_cli("loadtest", "--target", base_engine.base_url, "--profile", "concurrency", "--users", "2",
                "--duration", "3", "--input-tokens", "16", "--output-tokens", "8", "--usd-per-hour", "1",
                "--out", str(out), timeout_s=300)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads((out / "loadtest.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert res["prompt_format"] == "completion" and plan["endpoint"] == "/v1/completions"
    assert all("prompt" in b and "messages" not in b for b in plan["requests"])
    ph = res["phases"][0]
    assert ph["requests_sent"] > 0 and ph["requests_failed"] == 0 and ph["output_tokens_total"] > 0
    assert "Requests sent as raw prompts through /v1/completions" in p.stderr + p.stdout


def test_a_bento_built_with_a_chat_template_takes_chat_requests(base_model_dir, tmp_path, build_bento_cli):
    from packager.core.access import use_client_key
    from packager.serve.server import BentoServer

    tmpl = tmp_path / "chat_template.jinja"
    tmpl.write_text(TEMPLATE)
    tag = build_bento_cli(base_model_dir, "--name", "packager-it-tiny-base", "--max-model-len", "512",
                          "--chat-template", str(tmpl))
    srv = BentoServer(tag, log_path=tmp_path / "bento.log", startup_timeout_s=600)
    srv.start()
    try:
        model = httpx.get(f"{srv.base_url}/v1/models", headers=srv.headers, timeout=30).json()["data"][0]["id"]
        r = httpx.post(f"{srv.base_url}/v1/chat/completions", headers=srv.headers, timeout=60,
                       json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
        out = tmp_path / "eval"
        with use_client_key(srv.api_key):
            p = run_cli("evaluate", srv.base_url, "--max-items", "3", "--no-perplexity", "--fidelity-corpus",
                        "suite", "--concurrency", "2", "--out", str(out), timeout_s=300)
        assert p.returncode == 0, p.stdout + p.stderr
        s = json.loads((out / "summary.json").read_text())
        assert s["prompt_format"] == "chat" and s["n_errors"] == 0  # the probe found the bento's template
        with use_client_key(srv.api_key):
            p = run_cli("loadtest", "--target", srv.base_url, "--prompt-format", "completion", "--profile",
                        "concurrency", "--users", "1", "--duration", "2", "--input-tokens", "8", "--output-tokens",
                        "4", "--out", str(tmp_path / "lt"), timeout_s=300)
        assert p.returncode == 0, p.stdout + p.stderr
        res = json.loads((tmp_path / "lt" / "loadtest.json").read_text())
        assert res["prompt_format"] == "completion" and res["phases"][0]["requests_failed"] == 0
        assert res["phases"][0]["requests_sent"] > 0
    finally:
        srv.stop()
