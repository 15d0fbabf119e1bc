"""Compression variants of the bundled model on THIS machine: cost to make, size, speed and quality in vLLM.

For each variant (baseline = the source served in bf16, then one per recipe):
  * compression wall time and peak memory (from the stage records; a stage reused from an earlier run
    keeps the time it took when it was made),
  * size on disk (weights and whole directory) and parameter count,
  * output tokens/s through a real vLLM server at 1 and at 32 concurrent streams (greedy, 64 tokens per
    request, ignore_eos, a simple async httpx client on /v1/completions),
  * task score, recovery vs the baseline, perplexity and fidelity (packager.evaluate.runner.evaluate_model
    against the same server), unless --no-eval.

One server per variant, stopped before the next. Results: benchmarks/results/compression.json.

    flock /tmp/packager-heavy.lock .venv/bin/python benchmarks/bench_compression.py
    .venv/bin/python benchmarks/bench_compression.py --variants w8a8-int8 --no-eval
    # add or replace variants in an existing results file, reusing its baseline (same --work):
    .venv/bin/python benchmarks/bench_compression.py --append --variants gptq-w8a16 my-recipe.yaml
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VARIANTS = ["w8a8-int8", "gptq-w4a16", "prune-depth", "prune-distill-w8a8"]
PROMPT = ("Write a detailed explanation of how a compiler turns source code into machine code, covering "
          "lexing, parsing, semantic analysis, optimisation and code generation.")


async def _one(client, url: str, model: str, max_tokens: int) -> tuple[int, float]:
    t = time.perf_counter()
    r = await client.post(f"{url}/v1/completions", json={
        "model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True})
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"]), time.perf_counter() - t


async def _throughput(url: str, model: str, streams: int, requests_per_stream: int, max_tokens: int) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        await _one(client, url, model, 8)  # warm-up

        async def stream() -> list[tuple[int, float]]:
            return [await _one(client, url, model, max_tokens) for _ in range(requests_per_stream)]

        t0 = time.perf_counter()
        results = await asyncio.gather(*[stream() for _ in range(streams)])
        wall = time.perf_counter() - t0
    flat = [x for s in results for x in s]
    tokens = sum(n for n, _ in flat)
    return {"streams": streams, "requests": len(flat), "output_tokens": tokens, "wall_time_s": round(wall, 2),
            "output_tokens_per_s": round(tokens / wall, 2),
            "request_latency_s_p50": round(statistics.median(l for _, l in flat), 3)}


def measure_variant(name: str, model_dir: Path, cfg, baseline, evaluate: bool, out_dir: Path,
                    requests_single: int, requests_per_stream_32: int) -> dict[str, Any]:
    from packager.engines.vllm import EngineServer

    res: dict[str, Any] = {}
    t = time.perf_counter()
    with EngineServer(model_dir, cfg.engine, served_name=name, log_path=out_dir / f"{name}-engine.log") as srv:
        res["server_start_s"] = round(time.perf_counter() - t, 1)
        res["throughput_1_stream"] = asyncio.run(_throughput(srv.base_url, name, 1, requests_single, 64))
        res["throughput_32_streams"] = asyncio.run(_throughput(srv.base_url, name, 32, requests_per_stream_32, 64))
        print(f"  {name}: {res['throughput_1_stream']['output_tokens_per_s']} tok/s at 1 stream, "
              f"{res['throughput_32_streams']['output_tokens_per_s']} at 32", flush=True)
        if evaluate:
            from packager.evaluate.runner import evaluate_model

            s = evaluate_model(None, cfg, url=srv.base_url, baseline=baseline, out_dir=out_dir / "eval" / name,
                               name=name, show_progress=False)
            res["evaluation"] = {k: getattr(s, k) for k in ("score", "score_by_category", "perplexity", "recovery",
                                                             "fidelity_agreement", "fidelity_mean_kl", "n_items",
                                                             "n_errors")}
            res["_summary"] = s
            print(f"  {name}: score {s.score:.3f}, recovery {s.recovery}, perplexity {s.perplexity}", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, help="recipe names or files (baseline always runs)")
    ap.add_argument("--work", type=Path, default=None, help="where compressed models go (default $PACKAGER_HOME/bench-compression)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compression.json")
    ap.add_argument("--no-eval", action="store_true", help="skip task score / recovery")
    ap.add_argument("--requests-single", type=int, default=4, help="sequential requests at 1 stream")
    ap.add_argument("--requests-per-stream-32", type=int, default=2, help="requests per stream at 32 streams")
    ap.add_argument("--append", action="store_true",
                    help="keep the variants already in --out and reuse its baseline (and the baseline's evaluation "
                         "summary under --work) instead of measuring it again; same-named variants are replaced")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from packager.compress.checkpoint import parameter_count
    from packager.compress.recipe import load_recipe, run_recipe
    from packager.config import load_config
    from packager.errors import PackagerError
    from packager.fsutil import atomic_write_json
    from packager.hardware import detect_cpu
    from packager.core.sources import ensure_default_model, packager_home
    from packager.provenance import now_iso, package_versions, platform_info

    cfg = load_config(None, {"engine": {"dtype": "bfloat16"}})
    work = args.work or packager_home() / "bench-compression"
    work.mkdir(parents=True, exist_ok=True)
    src = ensure_default_model()
    out: dict[str, Any] = {
        "benchmark": "compression", "created_at": now_iso(), "model": src.name, "platform": platform_info(),
        "cpu": detect_cpu().to_dict(), "versions": package_versions(), "engine": cfg.engine.model_dump(mode="json"),
        "method": {"max_tokens": 64, "ignore_eos": True, "temperature": 0.0, "endpoint": "/v1/completions",
                   "requests_single_stream": args.requests_single,
                   "requests_per_stream_at_32": args.requests_per_stream_32,
                   "eval_suite": None if args.no_eval else cfg.eval.suite,
                   "model_dirs": "$WORK = --work (default $PACKAGER_HOME/bench-compression)"},
        "variants": [],
    }

    def save() -> None:
        atomic_write_json(args.out, out)

    def weights(d: Path) -> int:
        return sum(p.stat().st_size for p in d.glob("*.safetensors"))

    baseline = None
    if args.append:
        from packager.evaluate.runner import load_summary

        prev = json.loads(args.out.read_text())
        base = next(v for v in prev["variants"] if v["name"] == "baseline-bf16")
        summary = work / "eval" / "baseline-bf16" / "summary.json"
        if not args.no_eval:
            baseline = load_summary(summary)
        out["variants"] = list(prev["variants"])
        out["appended_at"] = out.pop("created_at")
        out["created_at"] = prev.get("created_at")
        print(f"baseline: reusing {args.out} and {summary}", flush=True)
    else:
        print(f"baseline: {src.path}", flush=True)
        base = {"name": "baseline-bf16", "recipe": None, "model_dir": "default (bundled model)", "compression_wall_time_s": 0.0,
                "size_bytes_dir": sum(p.stat().st_size for p in src.path.iterdir() if p.is_file()),
                "weights_bytes": weights(src.path), "parameter_count": parameter_count(src.path),
                "note": "source checkpoint is float32 on disk; served in bfloat16"}
        m = measure_variant("baseline-bf16", src.path, cfg, None, not args.no_eval, work, args.requests_single,
                            args.requests_per_stream_32)
        baseline = m.pop("_summary", None)
        base.update(m)
        out["variants"].append(base)
        save()
    for name in args.variants:
        print(f"variant {name}: compressing", flush=True)
        v: dict[str, Any] = {"name": name, "recipe": name}
        try:
            rec = load_recipe(name)
            v["name"] = rec.name
            t = time.perf_counter()
            res = run_recipe(src, rec, work / rec.name, engine=cfg.engine, device="cpu", progress=False)
            v["compression_run_wall_time_s"] = round(time.perf_counter() - t, 1)
            v["reused_stages"] = res.reused_stages
            v["stages"] = [{"label": s.label, "method": s.method, "wall_time_s": s.wall_time_s,
                            "peak_rss_mb": s.peak_rss_mb, "size_bytes": s.size_bytes,
                            "parameter_count": s.parameter_count} for s in res.stages]
            v["compression_wall_time_s"] = round(sum(s.wall_time_s for s in res.stages), 1)
            v["compression_peak_rss_mb"] = max(s.peak_rss_mb for s in res.stages)
            d = Path(res.final_dir)
            v.update({"model_dir": f"$WORK/{d.relative_to(work)}", "size_bytes_dir": res.stages[-1].size_bytes, "weights_bytes": weights(d),
                      "parameter_count": res.stages[-1].parameter_count})
            m = measure_variant(rec.name, d, cfg, baseline, not args.no_eval, work, args.requests_single,
                                args.requests_per_stream_32)
            m.pop("_summary", None)
            v.update(m)
            for k in ("throughput_1_stream", "throughput_32_streams"):
                b = base[k]["output_tokens_per_s"]
                v[f"{k}_vs_baseline"] = round(v[k]["output_tokens_per_s"] / b, 3) if b else None
            v["weights_vs_baseline_bf16"] = round(v["weights_bytes"] / (base["weights_bytes"] / 2), 3)
        except (PackagerError, Exception) as e:  # record and go on with the next variant
            v["error"] = f"{type(e).__name__}: {e}".replace(str(ROOT) + "/", "")
            print(f"  {name}: FAILED {v['error']}", flush=True)
        out["variants"] = [x for x in out["variants"] if x["name"] != v["name"]] + [v]
        save()
    print(json.dumps([{k: v.get(k) for k in ("name", "weights_bytes", "compression_wall_time_s", "error")}
                      for v in out["variants"]], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
