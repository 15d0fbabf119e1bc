"""How far packager's own llama-server arguments are from the best of a set of hand-set ones, in one run.

The llamacpp backend starts llama.cpp's `llama-server` with packager's arguments (packager.engines.llamacpp:
one thread per CPU for decoding and for prompt batches, llama.cpp's default batch 2048 / micro-batch 512, flash
attention and polling at llama.cpp's defaults, one slot per admitted request). Each configuration below starts
the same server for the same GGUF with a few arguments added after packager's (llama.cpp takes the last value of
a repeated flag), and is measured with the engines benchmark's client (benchmarks/bench_engines.py: closed-loop
streaming chat completions, 64 greedy tokens each) at 1 and 16 streams. packager's configuration runs first and
again last: the spread of those two runs is the noise the other differences are read against.

Figures per configuration and stream count: output tokens/s, TTFT p50/p95; then packager's tokens/s (the mean of
its two runs) as a share of the best hand-set configuration's at each stream count (the issue's "not more than
5% slower than the best configuration run by hand"), with the spread of packager's two runs (the noise) beside it.

    .venv/bin/python benchmarks/bench_llamacpp_args.py      # writes benchmarks/results/llamacpp_args.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_engines as be  # noqa: E402

LEVELS = [1, 16]
# name -> arguments added after packager's own
CONFIGS: dict[str, list[str]] = {
    "packager": [],
    "ubatch-128": ["--ubatch-size", "128"],
    "ubatch-256": ["--ubatch-size", "256"],
    "batch-512": ["--batch-size", "512", "--ubatch-size", "512"],
    "flash-attn-on": ["--flash-attn", "on"],
    "flash-attn-off": ["--flash-attn", "off"],
    "poll-0": ["--poll", "0"],
    "threads-1-batch-2": ["--threads", "1"],
    "packager-again": [],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/llamacpp_args.json")
    ap.add_argument("--quants", nargs="+", default=["q4_k_m", "q8_0"])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    a = ap.parse_args(argv)

    from packager.config import EngineConfig
    from packager.engines.llamacpp import LlamaCppServer, cpu_threads
    from packager.provenance import now_iso

    work = be.packager_home_path() / "bench-engines"
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    models = be._models(work, [f"llamacpp-{q}" for q in a.quants])
    out: dict = {"benchmark": "bench_llamacpp_args", "when": now_iso(), "how": __doc__.split("\n\n")[0],
                 "machine": {"cpus": cpu_threads(), "platform": platform.platform()},
                 "levels": LEVELS, "max_tokens": be.MAX_TOKENS, "configs": {n: CONFIGS[n] for n in a.configs},
                 "results": {}, "summary": {}}
    for q in a.quants:
        rows: dict[str, list[dict]] = {}
        for name in a.configs:
            eng = EngineConfig(backend="llamacpp", max_model_len=2048, extra_args=CONFIGS[name])
            srv = LlamaCppServer(models[f"llamacpp-{q}"], eng, served_name=f"{q}-{name}",
                                 log_path=log_dir / f"args-{q}-{name}.log", slots=max(LEVELS))
            t0 = time.monotonic()
            with srv:
                start_s = time.monotonic() - t0
                rows[name] = [asyncio.run(be._level(srv.base_url, f"{q}-{name}", c, max(8, 2 * c))) for c in LEVELS]
            print(json.dumps({"quant": q, "config": name, "start_s": round(start_s, 1),
                              "tok_s": [r["output_tokens_per_s"] for r in rows[name]]}), flush=True)
        out["results"][q] = rows
        out["summary"][q] = _summary(rows)
        a.out.write_text(json.dumps(out, indent=2) + "\n")  # after each model
    print(json.dumps(out["summary"], indent=2))
    return 0


def _summary(rows: dict[str, list[dict]]) -> dict:
    """Per stream count: the best hand-set configuration (packager's own two runs left out), packager's tokens/s
    (the mean of its two runs) as a share of that one's, and the spread of packager's two runs (the noise)."""
    s: dict = {}
    ours_names = ("packager", "packager-again")
    for i, c in enumerate(LEVELS):
        tps = {n: r[i]["output_tokens_per_s"] for n, r in rows.items()}
        ours = [tps[n] for n in ours_names if n in tps]
        mine = sum(ours) / len(ours)
        others = {n: v for n, v in tps.items() if n not in ours_names}
        best = max(others, key=others.__getitem__) if others else None
        s[str(c)] = {"best_other": best, "best_other_tok_s": others.get(best) if best else None,
                     "packager_tok_s_mean": round(mine, 2),
                     "packager_share_of_best_other": round(mine / others[best], 3) if best else None,
                     "packager_runs_spread": round((max(ours) - min(ours)) / mine, 3) if len(ours) > 1 else None}
    return s


if __name__ == "__main__":
    raise SystemExit(main())
