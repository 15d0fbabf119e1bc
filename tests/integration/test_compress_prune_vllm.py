"""Structured pruning and distillation of the bundled SmolLM2-135M-Instruct, served by a real vLLM server.

Depth-prune 30 -> 22 layers on the bundled calibration corpus, serve the result with vLLM (bfloat16, the CPU
build) and check that it answers and that vLLM computes the same token probabilities as transformers for
the pruned checkpoint; then distil the pruned student against the original for a short budget and check
that its held-out KL to the teacher went down.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest
from conftest import test_engine

from packager.compress.base import StageContext
from packager.compress.distill import DistillArgs, apply_distill
from packager.compress.prune import PruneArgs, apply_prune, weights_size_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus():
    from packager.evaluate.corpus import split_corpus

    return split_corpus()  # (calibration texts, held-out texts)


@pytest.fixture(scope="module")
def pruned22(default_model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned22")
    report = apply_prune(PruneArgs(target_layers=22, n_samples=16, seq_len=256),
                         StageContext(default_model.path, out, calibration_texts=corpus[0], show_progress=False))
    return out, report


def _hf_mean_nll(model_dir: Path, ids: list[int]) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    nll = -logp[:-1].gather(-1, torch.tensor(ids[1:]).unsqueeze(-1))
    return float(nll.mean())


def test_depth_pruned_model_is_smaller_and_served_by_vllm(pruned22, default_model, corpus):
    from transformers import AutoTokenizer

    from packager.engines.vllm import EngineServer

    out, report = pruned22
    depth = report["depth"]
    assert report["layers_before"] == 30 and report["layers_after"] == 22
    assert len(depth["removed_layers"]) == 8
    assert 0 not in depth["removed_layers"] and 29 not in depth["removed_layers"]
    scores = {e["layer"]: e["angular_distance"] for e in depth["layer_importance"]}
    kept_removable = [i for i in range(1, 29) if i not in depth["removed_layers"]]
    assert max(scores[i] for i in depth["removed_layers"]) <= min(scores[i] for i in kept_removable)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 22 and cfg["tie_word_embeddings"] is True
    size_before, size_after = weights_size_bytes(default_model.path), weights_size_bytes(out)
    assert size_after < 0.85 * size_before
    assert report["params_after"] < 0.82 * report["params_before"]

    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok(corpus[1][0], add_special_tokens=False)["input_ids"][:128]
    hf_nll = _hf_mean_nll(out, ids)

    with EngineServer(out, test_engine(), served_name="pruned22") as srv:
        r = httpx.post(f"{srv.base_url}/v1/chat/completions", timeout=120, json={
            "model": "pruned22", "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        r.raise_for_status()
        body = r.json()
        answer = body["choices"][0]["message"]["content"]
        assert isinstance(answer, str) and answer.strip()
        assert body["usage"]["completion_tokens"] > 0
        # the served model computes what the checkpoint holds: prompt log-probabilities match transformers
        r = httpx.post(f"{srv.base_url}/v1/completions", timeout=120, json={
            "model": "pruned22", "prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 0, "temperature": 0})
        r.raise_for_status()
        token_logprobs = r.json()["choices"][0]["logprobs"]["token_logprobs"][: len(ids)]
    assert token_logprobs[0] is None
    vllm_nll = -sum(token_logprobs[1:]) / (len(ids) - 1)
    assert abs(vllm_nll - hf_nll) < 0.05 * hf_nll, (vllm_nll, hf_nll)
    # still a language model: far better than a uniform guess over the vocabulary
    assert hf_nll < 0.6 * math.log(cfg["vocab_size"]), hf_nll
    print(f"\npruned 30->22: removed {depth['removed_layers']}, answer {answer!r}, held-out NLL {hf_nll:.3f} "
          f"(vLLM {vllm_nll:.3f}), weights {size_before} -> {size_after} bytes")


def test_distilling_the_pruned_model_lowers_heldout_kl(pruned22, default_model, corpus, tmp_path):
    out, _ = pruned22
    student = tmp_path / "distilled"
    student.mkdir()
    # a short budget: on 2 cores a step takes ~5 s (fp32); 12 steps already recover about a third of the KL
    r = apply_distill(DistillArgs(steps=12, warmup_steps=3, batch_size=4, seq_len=128, eval_every=6,
                                  checkpoint_every=6),
                      StageContext(out, student, calibration_texts=corpus[0], teacher_dir=default_model.path,
                                   work_dir=tmp_path / "work", show_progress=False))
    assert r["steps"] == 12 and r["tokens_seen"] == 12 * 4 * 128
    assert r["heldout_kl_after_nats"] < r["heldout_kl_before_nats"]
    assert r["heldout_student_ce_after_nats"] < r["heldout_student_ce_before_nats"]
    assert json.loads((student / "config.json").read_text())["num_hidden_layers"] == 22
    print(f"\ndistill: held-out KL {r['heldout_kl_before_nats']:.4f} -> {r['heldout_kl_after_nats']:.4f} nats/token "
          f"in {r['steps']} steps, {r['wall_time_s']:.0f} s")
