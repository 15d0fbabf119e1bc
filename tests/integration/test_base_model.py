"""A base model without a chat template, end to end: `packager release` (compress, evaluate with fidelity,
build, serve, load-test, report) and a bento built with a user-supplied chat template.

vLLM refuses chat requests for a tokenizer without a chat template. packager then sends raw prompts through
/v1/completions, decided from the model directory or by asking the endpoint once. The decision holds for a
suite evaluation, for fidelity against a baseline (which passes its format on to the variant) and for a load
test, and the report says so. A chat template given to `packager build --chat-template` travels inside the
bento, so that bento takes chat requests.

The model is a tiny random Llama (2 layers, hidden 128) with the bundled tokenizer, its chat template removed.
Its answers are noise, so the tests assert what holds whatever the answers are: formats, counts, that no request
failed, and that an engine compared with itself has a KL of about zero.
"""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from conftest import build_tiny_llama, run_cli

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
def base_release(base_model_dir, tmp_path_factory):
    """`packager release` of the base model with one compressed variant: compress, evaluate (with fidelity
    against the baseline), build and serve each bento, load-test it, register, report."""
    out = tmp_path_factory.mktemp("base-release")
    cfg = {
        "model": str(base_model_dir), "recipes": ["w8a8-int8"], "output_dir": str(out / "run"),
        "eval": {"max_items": 6, "perplexity": False, "behaviour_suite": None, "fidelity_max_prompts": 4,
                 "concurrency": 2},
        "engine": {"max_model_len": 512},
        "loadtest": {"profile": {"kind": "concurrency", "users": 2, "duration_s": 3},
                     "prompts": {"kind": "synthetic", "input_tokens": {"mean": 16}, "output_tokens": {"mean": 8}},
                     "max_duration_s": 10},
        "registry": {"uri": f"sqlite:///{out / 'registry.db'}", "name": "tiny-base-e2e"},
        "pricing": {"instance": "c7i.xlarge"}, "quality_floor": 0.01, "gate": {"noise_floor": False},
        "time_budget_s": 1200,
    }
    (out / "release.yaml").write_text(json.dumps(cfg))
    cp = run_cli("release", "--config", str(out / "release.yaml"), timeout_s=1200)
    assert cp.returncode == 0, (cp.stdout[-3000:], cp.stderr[-5000:])
    return out / "run"


def test_a_release_of_a_base_model_goes_through_completions_end_to_end(base_release):
    from packager.report.model import Report

    report = Report.model_validate_json((base_release / "report.json").read_text())
    assert [v.name for v in report.variants] == ["baseline", "w8a8-int8"]
    assert any("no chat template" in n for n in report.notes)
    for v in report.variants:
        assert not v.errors, v.errors
        assert v.load is not None and v.load.prompt_format == "completion"
        assert v.load.requests > 0 and v.load.errors == 0
        # what the engine behind the bento reported while it was loaded: vLLM's KV-cache gauge, a share
        assert v.load.server_kv_cache_max is not None and 0 <= v.load.server_kv_cache_max <= 1
        plan = json.loads((base_release / "variants" / v.name / "loadtest" / "plan.json").read_text())
        assert plan["endpoint"] == "/v1/completions"
        ev = json.loads((base_release / "variants" / v.name / "eval" / "summary.json").read_text())
        assert ev["prompt_format"] == "completion" and ev["n_items"] == 6 and ev["n_errors"] == 0
    variant = json.loads((base_release / "variants" / "w8a8-int8" / "eval" / "summary.json").read_text())
    assert variant["fidelity_prompts"] == 4 and variant["fidelity_mean_kl"] is not None
    md = (base_release / "report.md").read_text()
    assert "raw prompts (no chat template)" in md and "no chat template" in md


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
