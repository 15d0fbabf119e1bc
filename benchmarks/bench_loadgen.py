"""Capacity of packager's load generator (the locust streaming user) on THIS machine, against the local fake.

A load test is only trustworthy below the generator's own limit. This measures that limit with the product
path (packager.loadtest.runner.run_loadtest), against tests/fakes/fake_openai.py in its own process
(zero TTFT/ITL, so the fake answers as fast as it can):

  1. closed loop, `--users` users, one locust process: completed requests/s, content chunks/s, and the CPU
     use of the generator and of the fake (which of the two saturated);
  2. the same with a master and 2 local worker processes;
  3. the same with long outputs (`--long-tokens` per request): the per-chunk cost;
  4. open loop (constant arrivals) at fractions of (1)'s throughput: achieved vs offered rate and the dispatch
     lag; the open-loop capacity is the highest rate achieved within 5% with a dispatch lag p99 under 50 ms.

Results: benchmarks/results/loadgen.json. Run it alone (other CPU work on the machine lowers the figures):

    flock /tmp/packager-heavy.lock .venv/bin/python benchmarks/bench_loadgen.py
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/fakes


def _cpu_s(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def one_run(fake, name: str, lt: dict[str, Any], work: Path) -> dict[str, Any]:
    from packager.config import PricingConfig, SLOConfig
    from packager.loadtest.config import LoadTestConfig
    from packager.loadtest.runner import read_records, run_loadtest

    fake.reset()
    cfg = LoadTestConfig.model_validate(lt)
    fake_cpu0, t0 = _cpu_s(fake.pid), time.time()
    res = run_loadtest(fake.base_url, cfg, SLOConfig(), PricingConfig(instance=None), work / name)
    fake_cpu1, t1 = _cpu_s(fake.pid), time.time()
    reqs = read_records(work / name / "records.jsonl")[0]
    ph = res.phases[0]
    chunks = sum(int(r.get("content_chunks") or 0) for r in reqs if r.get("ok"))
    t_first = min(r["t_start_unix"] for r in reqs)
    t_last = max(r["t_end_unix"] for r in reqs)
    busy = max(t_last - t_first, 1e-9)
    gen = res.generator
    out = {
        "name": name,
        "profile": cfg.profile.model_dump(mode="json"),
        "workers": cfg.workers,
        "output_tokens_per_request": ph.output_tokens_mean,
        "requests_ok": ph.requests_ok,
        "requests_failed": ph.requests_failed,
        "duration_s": ph.duration_s,
        "requests_per_s": ph.request_throughput_per_s,
        "content_chunks_per_s": chunks / ph.duration_s,
        "offered_requests_per_s": ph.load.get("requests_per_s"),
        "achieved_send_rate_per_s": ph.requests_sent / ph.dispatch_s if ph.dispatch_s > 0 else None,
        "dropped_arrivals": ph.dropped_arrivals,
        "dispatch_lag_ms_p50": ph.dispatch_lag.p50_ms,
        "dispatch_lag_ms_p99": ph.dispatch_lag.p99_ms,
        "e2e_ms_p50": ph.e2e.p50_ms,
        "e2e_ms_p99": ph.e2e.p99_ms,
        "generator_processes": [p.model_dump(mode="json") for p in gen.processes],
        "generator_cpu_fraction_of_core_busiest": gen.cpu_fraction_of_core_max,
        "generator_cpu_fraction_of_cores_total": sum(p.cpu_fraction_of_core_mean or 0.0 for p in gen.processes),
        "generator_cpu_ms_per_request": None,
        "generator_cpu_us_per_content_chunk": None,
        "fake_server_cpu_fraction_of_core": (fake_cpu1 - fake_cpu0) / max(t1 - t0, 1e-9),
        "fake_server_cpu_fraction_of_core_note": "over the whole run incl. locust start-up; a lower bound while busy",
        "busy_window_s": busy,
        "bottleneck_suspected": gen.bottleneck_suspected,
        "warnings": res.warnings,
    }
    total = out["generator_cpu_fraction_of_cores_total"]
    if total and out["requests_per_s"]:
        # CPU cost per request / per chunk: independent of how much CPU other processes left to the generator
        out["generator_cpu_ms_per_request"] = total / out["requests_per_s"] * 1000.0
        out["generator_cpu_us_per_content_chunk"] = total / max(out["content_chunks_per_s"], 1e-9) * 1e6
    print(f"  {name}: {out['requests_per_s']:.1f} req/s, {out['content_chunks_per_s']:.0f} chunks/s, generator "
          f"{(gen.cpu_fraction_of_core_max or 0):.0%} of a core (busiest), fake {out['fake_server_cpu_fraction_of_core']:.0%}"
          + (f", lag p99 {out['dispatch_lag_ms_p99']:.1f} ms" if out["dispatch_lag_ms_p99"] is not None else ""),
          flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--tokens", type=int, default=16, help="output tokens per request (short)")
    ap.add_argument("--long-tokens", type=int, default=256, help="output tokens per request (long)")
    ap.add_argument("--fractions", default="0.5,0.8,1.0,1.2", help="open-loop rates as fractions of closed-loop req/s")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loadgen.json")
    a = ap.parse_args()

    from fakes.fake_openai import FakeOpenAIServer

    from packager.fsutil import atomic_write_json

    load_before = os.getloadavg()
    t_start = time.time()
    runs: list[dict[str, Any]] = []

    def prompts(tokens: int) -> dict:
        return {"kind": "synthetic", "input_tokens": {"mean": 16}, "output_tokens": {"mean": tokens}}

    base = {"max_duration_s": 600, "max_requests": 10_000_000, "drain_timeout_s": 30, "request_timeout_s": 60}
    with tempfile.TemporaryDirectory(prefix="bench-loadgen-") as tmp, \
            FakeOpenAIServer(mode="process", ttft_ms=0, itl_ms=0, output_tokens=a.tokens) as fake:
        work = Path(tmp)
        closed = {"kind": "concurrency", "users": a.users, "duration_s": a.duration}
        print(f"fake server pid {fake.pid} at {fake.base_url}; {a.users} users, {a.duration:g} s per run", flush=True)
        single = one_run(fake, "closed_single_process", {**base, "profile": closed, "prompts": prompts(a.tokens)}, work)
        runs.append(single)
        runs.append(one_run(fake, "closed_master_2_workers",
                            {**base, "profile": closed, "prompts": prompts(a.tokens), "workers": 2}, work))
        runs.append(one_run(fake, "closed_single_process_long_outputs",
                            {**base, "profile": closed, "prompts": prompts(a.long_tokens)}, work))
        capacity = single["requests_per_s"]
        open_runs = []
        for f in [float(x) for x in a.fractions.split(",")]:
            rate = round(capacity * f, 1)
            r = one_run(fake, f"open_constant_{f:g}x", {**base, "prompts": prompts(a.tokens), "profile": {
                "kind": "rate", "requests_per_s": rate, "duration_s": a.duration, "arrival": "constant",
                "max_in_flight": 4096}}, work)
            r["fraction_of_closed_loop_capacity"] = f
            open_runs.append(r)
            runs.append(r)
    kept = [r for r in open_runs if r["achieved_send_rate_per_s"] and r["offered_requests_per_s"]
            and r["requests_per_s"] >= 0.95 * r["offered_requests_per_s"]
            and (r["dispatch_lag_ms_p99"] or 0) < 50 and r["requests_failed"] == 0]
    result = {
        "benchmark": "bench_loadgen",
        "what": "requests/s the packager load generator sustains against the local fake (zero server latency)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(), "load_average_1m_before": load_before[0],
                    "load_average_1m_after": os.getloadavg()[0]},
        "settings": {"users": a.users, "duration_s": a.duration, "output_tokens": a.tokens,
                     "long_output_tokens": a.long_tokens, "input_tokens": 16,
                     "fake": "tests/fakes/fake_openai.py in its own process, ttft_ms=0, itl_ms=0"},
        "generator_capacity_requests_per_s_closed_loop_single_process": single["requests_per_s"],
        "generator_capacity_requests_per_s_closed_loop_2_workers": runs[1]["requests_per_s"],
        "generator_capacity_content_chunks_per_s_long_outputs": runs[2]["content_chunks_per_s"],
        "open_loop_capacity_requests_per_s": max((r["offered_requests_per_s"] for r in kept), default=None),
        "generator_cpu_ms_per_request_short_outputs": single["generator_cpu_ms_per_request"],
        "generator_cpu_us_per_content_chunk_long_outputs": runs[2]["generator_cpu_us_per_content_chunk"],
        "projected_requests_per_s_per_dedicated_core_short_outputs":
            1000.0 / single["generator_cpu_ms_per_request"] if single["generator_cpu_ms_per_request"] else None,
        "projected_content_chunks_per_s_per_dedicated_core":
            1e6 / runs[2]["generator_cpu_us_per_content_chunk"] if runs[2]["generator_cpu_us_per_content_chunk"] else None,
        "runs": runs,
        "wall_time_s": time.time() - t_start,
        "note": ("The fake and the generator share this machine's cores; fake_server_cpu_fraction_of_core near 1.0 "
                 "means the fake, not the generator, set the limit. Other processes on the machine (see the load "
                 "averages) lower every measured rate; the CPU cost per request/chunk does not depend on them, so "
                 "the projected per-core figures say what one dedicated core would sustain."),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs",)}, indent=2))


if __name__ == "__main__":
    main()
