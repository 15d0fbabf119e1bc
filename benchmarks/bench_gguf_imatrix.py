"""What an importance matrix does to GGUF quantization: each 4-bit type exported with and without one, and its
KL to the float model, in one run.

On the bundled SmolLM2-135M-Instruct:
1. `packager.gguf.export.export_gguf` writes f32 (the control), and q4_k_m, q4_0 and q3_k_m twice: plain, and with
   an importance matrix computed on the release's default calibration data (128 samples of 512 tokens, rendered
   with the chat template: what the built-in gguf stage uses; packager.gguf.imatrix).
2. The float model (transformers, float32) answers N prompts of the fidelity corpus greedily (32 tokens).
3. Each GGUF reads the same prompt + answer tokens through llama.cpp (llama-cpp-python, logits_all), and at every
   answer position its next-token distribution is compared with the float model's over the whole vocabulary:
   mean and p95 KL(float || gguf), and top-1 agreement. The f32 GGUF shows what the pipeline itself adds.

Results: benchmarks/results/gguf_imatrix.json.

    .venv/bin/python benchmarks/bench_gguf_imatrix.py
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TYPES = ("q4_k_m", "q4_0", "q3_k_m")


def _sequences(model, tok, prompts: list[str], answer_tokens: int):
    """[(token ids of prompt + greedy answer, index of the first answer token)] and the float model's
    log-probabilities at the positions that predict each answer token."""
    import torch

    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = tok(p, return_tensors="pt", add_special_tokens=False)["input_ids"]
            gen = model.generate(ids, max_new_tokens=answer_tokens, do_sample=False,
                                 pad_token_id=tok.eos_token_id or 0)
            full = gen[0]
            n_prompt = ids.shape[1]
            if full.shape[0] <= n_prompt:
                continue
            logits = model(input_ids=full[None], use_cache=False).logits[0].float()
            ref = torch.log_softmax(logits[n_prompt - 1: full.shape[0] - 1], dim=-1)
            out.append((full.tolist(), n_prompt, ref.numpy()))
    return out


def reference_answers(src: Path, n_prompts: int, answer_tokens: int):
    """The float model's (transformers, float32) greedy answers to `n_prompts` fidelity-corpus prompts, rendered
    with its chat template, as `_sequences` gives them, and the context a GGUF needs to read the longest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from packager.evaluate.fidelity_corpus import load_fidelity_corpus, spread

    tok = AutoTokenizer.from_pretrained(str(src))
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    corpus = spread(load_fidelity_corpus("default").prompts, n_prompts)
    prompts = [str(tok.apply_chat_template(c.chat_messages(), tokenize=False, add_generation_prompt=True))
               for c in corpus]
    seqs = _sequences(model, tok, prompts, answer_tokens)
    return seqs, max(len(s[0]) for s in seqs) + 8


def _fidelity(gguf_path: Path, seqs, n_ctx: int) -> dict:
    import numpy as np
    from llama_cpp import Llama

    from packager.gguf.amx import avoid_amx_crash

    avoid_amx_crash()  # as the bento's llama-server does (--no-repack)
    llm = Llama(model_path=str(gguf_path), logits_all=True, n_ctx=n_ctx, n_threads=2, n_batch=n_ctx,
                verbose=False)
    kls, agree = [], []
    for ids, n_prompt, ref in seqs:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[n_prompt - 1: len(ids) - 1], dtype=np.float64)
        lq = logits - logits.max(axis=-1, keepdims=True)
        lq = lq - np.log(np.exp(lq).sum(axis=-1, keepdims=True))
        lp = ref.astype(np.float64)[:, : lq.shape[1]]
        kls.extend(np.clip((np.exp(lp) * (lp - lq)).sum(axis=-1), 0, None).tolist())
        agree.extend((lp.argmax(axis=-1) == lq.argmax(axis=-1)).tolist())
    del llm
    k = np.asarray(kls)
    return {"mean_kl": float(k.mean()), "p95_kl": float(np.percentile(k, 95)), "top1_agreement": float(np.mean(agree)),
            "positions": int(k.size)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gguf_imatrix.json")
    ap.add_argument("--prompts", type=int, default=120)
    ap.add_argument("--answer-tokens", type=int, default=32)
    a = ap.parse_args()

    from packager.compress.calibration import load_calibration
    from packager.compress.recipe import chat_renderer
    from packager.core.sources import ensure_default_model
    from packager.gguf.export import export_gguf

    work = Path(tempfile.mkdtemp(prefix="bench-imatrix-"))
    src = ensure_default_model().path
    render = chat_renderer(src)
    texts, label, sha = load_calibration("default", 128, 512, render=render)
    t0 = time.monotonic()
    plain = export_gguf(src, work / "plain", ("f32",) + TYPES, progress=False, log=lambda _m: None)
    plain_s = time.monotonic() - t0
    t0 = time.monotonic()
    weighted = export_gguf(src, work / "imatrix", TYPES, progress=False, log=lambda _m: None, calibration_texts=texts)
    weighted_s = time.monotonic() - t0
    im = weighted[0].record.imatrix or {}

    t0 = time.monotonic()
    seqs, n_ctx = reference_answers(src, a.prompts, a.answer_tokens)
    ref_s = time.monotonic() - t0
    out: dict = {"model": "SmolLM2-135M-Instruct", "how": __doc__.strip().splitlines()[0],
                 "calibration": {"source": label, "sha256": sha, "samples": len(texts), "seq_len": 512},
                 "imatrix": {k: v for k, v in im.items() if k != "skipped"} | {"skipped": len(im.get("skipped", []))},
                 "prompts": len(seqs), "answer_tokens": a.answer_tokens, "reference": "transformers float32",
                 "export_s": {"plain_all_types": round(plain_s, 1), "imatrix_all_types": round(weighted_s, 1)},
                 "reference_s": round(ref_s, 1), "types": {}}
    for art in plain:
        out["types"].setdefault(art.quant, {})["plain"] = {**_fidelity(Path(art.gguf_path), seqs, n_ctx),
                                                           "size_bytes": art.size_bytes}
        print(art.quant, "plain", out["types"][art.quant]["plain"], flush=True)
    for art in weighted:
        row = {**_fidelity(Path(art.gguf_path), seqs, n_ctx), "size_bytes": art.size_bytes}
        plain_row = out["types"][art.quant]["plain"]
        out["types"][art.quant]["imatrix"] = row
        out["types"][art.quant]["kl_ratio_imatrix_to_plain"] = round(row["mean_kl"] / plain_row["mean_kl"], 3)
        print(art.quant, "imatrix", row, flush=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
