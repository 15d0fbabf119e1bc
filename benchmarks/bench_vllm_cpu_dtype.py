"""vLLM CPU: start time and output tokens/s by dtype and torch.compile, same model, same prompts, one run.

Why `engine.dtype: auto` and `engine.enforce_eager` exist. On a CPU without native bf16 (no AVX512-BF16, no
AMX) vLLM emulates bfloat16; `auto` serves float32 there. `enforce_eager` skips torch.compile and its warmup:
the engine starts much sooner and serves less, which suits short-lived engines (evaluation, CI), not serving.

Configurations, one after the other on the bundled SmolLM2-135M-Instruct (packager.engines.vllm.EngineServer):
bfloat16 compiled, float32 compiled, float32 eager. For each: seconds from launch to /health answering, then
one warm-up request, one request alone (1 user) and 8 at once (8 users), 128 output tokens forced (ignore_eos),
temperature 0. Reported: startup_s, output tokens/s at 1 and 8 users; ratios against bfloat16 compiled.
Results: benchmarks/results/vllm_cpu_dtype.json.

    flock /tmp/packager-heavy.lock .venv/bin/python benchmarks/bench_vllm_cpu_dtype.py
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = [("bfloat16", False), ("float32", False), ("float32", True)]


def _one(base_url: str, i: int, max_tokens: int) -> int:
    import httpx

    r = httpx.post(base_url + "/v1/chat/completions", timeout=600, json={
        "model": "m", "messages": [{"role": "user", "content": f"Write a story about item {i}."}],
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


def measure(dtype: str, eager: bool, max_tokens: int, users: int) -> dict:
    from packager.config import EngineConfig
    from packager.core.sources import ensure_default_model
    from packager.engines.vllm import EngineServer

    model = ensure_default_model()
    t0 = time.monotonic()
    srv = EngineServer(model.path, EngineConfig(dtype=dtype, enforce_eager=eager), served_name="m")
    srv.start()
    startup = time.monotonic() - t0
    try:
        _one(srv.base_url, 0, max_tokens)
        t = time.monotonic()
        n1 = _one(srv.base_url, 1, max_tokens)
        d1 = time.monotonic() - t
        t = time.monotonic()
        with cf.ThreadPoolExecutor(users) as ex:
            n8 = sum(ex.map(lambda i: _one(srv.base_url, i, max_tokens), range(users)))
        d8 = time.monotonic() - t
    finally:
        srv.stop()
    return {"dtype": dtype, "enforce_eager": eager, "startup_s": round(startup, 1),
            "output_tokens_per_s_1_user": round(n1 / d1, 1), f"output_tokens_per_s_{users}_users": round(n8 / d8, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vllm_cpu_dtype.json"))
    a = ap.parse_args()
    from packager.hardware import detect_cpu

    rows = [measure(d, e, a.max_tokens, a.users) for d, e in CONFIGS]
    ref = rows[0]
    for r in rows:
        r["ratios_vs_bfloat16_compiled"] = {k: round(r[k] / ref[k], 2) for k in r
                                            if k.startswith(("startup_s", "output_tokens"))}
    cpu = detect_cpu()
    doc = {"benchmark": "vllm_cpu_dtype", "date": time.strftime("%Y-%m-%d"), "cpu": cpu.to_dict(),
           "model": "SmolLM2-135M-Instruct (bundled)", "output_tokens": a.max_tokens, "results": rows}
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
