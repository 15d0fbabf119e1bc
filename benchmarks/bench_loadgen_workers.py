"""Does the load generator scale with locust worker processes? (issue 21, item 3)

Against a fast endpoint (tests/fakes/fake_openai.py with zero TTFT and inter-token latency, served by `--fake-procs`
processes sharing one loopback port through SO_REUSEPORT, so the fake is not the limit), packager's load test
(packager.loadtest.runner.run_loadtest, closed loop) runs with one locust process and then with a master and
N local workers, N in `--workers`. Each run reports completed requests/s and every generator process's CPU use;
the result gives each run's request rate as a multiple of the single process's.

It needs a machine with more cores than the busiest run has processes (fake processes + locust processes):
on 2 cores the fake and the generator share cores and no scaling can show. Results:
benchmarks/results/loadgen_workers.json (or --out).

    python3 benchmarks/bench_loadgen_workers.py --fake-procs 6 --workers 2,4,8 --out results.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)


def serve_fake(port: int, output_tokens: int) -> None:
    """One fake process on 127.0.0.1:port with SO_REUSEPORT (several such processes share the port)."""
    from aiohttp import web
    from fakes.fake_openai import FakeSettings, build_app

    async def run() -> None:
        runner = web.AppRunner(build_app(FakeSettings(ttft_ms=0, itl_ms=0, output_tokens=output_tokens)),
                               access_log=None, handle_signals=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096, reuse_port=True).start()
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_fakes(n: int, port: int, output_tokens: int) -> list[subprocess.Popen]:
    procs = []
    for _ in range(n):
        p = subprocess.Popen([sys.executable, __file__, "--serve-fake", str(port), "--tokens", str(output_tokens)],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = p.stdout.readline() if p.stdout else ""
        if '"ready"' not in line:
            p.kill()
            raise RuntimeError(f"a fake process did not start: {line!r}")
        procs.append(p)
    return procs


def cpu_s(pids: list[int]) -> float:
    import psutil

    tot = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            tot += t.user + t.system
        except psutil.Error:
            pass
    return tot


def one_run(url: str, fake_pids: list[int], workers: int, users: int, duration: float, tokens: int,
            work: Path) -> dict[str, Any]:
    from packager.config import PricingConfig, SLOConfig
    from packager.loadtest.config import LoadTestConfig
    from packager.loadtest.runner import run_loadtest

    cfg = LoadTestConfig.model_validate({
        "profile": {"kind": "concurrency", "users": users, "duration_s": duration},
        "prompts": {"kind": "synthetic", "input_tokens": {"mean": 16}, "output_tokens": {"mean": tokens}},
        "max_duration_s": 600, "max_requests": 10_000_000, "drain_timeout_s": 30, "request_timeout_s": 60,
        "workers": workers, "telemetry_interval_s": 0, "prompt_format": "chat", "warmup_s": 2.0})
    c0, t0 = cpu_s(fake_pids), time.time()
    res = run_loadtest(url, cfg, SLOConfig(), PricingConfig(instance=None), work / f"w{workers}")
    c1, t1 = cpu_s(fake_pids), time.time()
    ph, gen = res.phases[0], res.generator
    procs = [g.model_dump(mode="json") for g in (gen.processes if gen else [])]
    return {"workers": workers, "locust_processes": 1 + workers if workers else 1, "users": users,
            "requests_ok": ph.requests_ok, "requests_failed": ph.requests_failed,
            "requests_per_s": round(ph.request_throughput_per_s, 1),
            "e2e_ms_p50": ph.e2e.p50_ms, "e2e_ms_p99": ph.e2e.p99_ms,
            "generator_processes": procs,
            "generator_cpu_cores_total": round(sum(p.get("cpu_fraction_of_core_mean") or 0 for p in procs), 2),
            "fake_cpu_cores_mean": round((c1 - c0) / max(t1 - t0, 1e-9), 2), "wall_s": round(t1 - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve-fake", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--fake-procs", type=int, default=6)
    ap.add_argument("--workers", default="2,4,8")
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--duration", type=float, default=12.0)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loadgen_workers.json")
    a = ap.parse_args(argv)
    if a.serve_fake:
        serve_fake(a.serve_fake, a.tokens)
        return 0
    from packager.fsutil import atomic_write_json

    port = free_port()
    fakes = start_fakes(a.fake_procs, port, a.tokens)
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-loadgen-workers-") as tmp:
            for w in [0] + [int(x) for x in a.workers.split(",") if x]:
                r = one_run(f"http://127.0.0.1:{port}", [p.pid for p in fakes], w, a.users, a.duration, a.tokens,
                            Path(tmp))
                print(json.dumps({k: v for k, v in r.items() if k != "generator_processes"}), flush=True)
                runs.append(r)
    finally:
        for p in fakes:
            p.kill()
            p.wait(10)
    single = runs[0]["requests_per_s"] or None
    for r in runs:
        r["requests_per_s_vs_single_process"] = round(r["requests_per_s"] / single, 2) if single else None
    result = {
        "benchmark": "bench_loadgen_workers",
        "what": "completed requests/s of packager's load test with 1 locust process vs a master + N workers, "
                "against a fast fake (zero TTFT/ITL) served by several processes on one port",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {"users": a.users, "duration_s": a.duration, "warmup_s": 2.0, "input_tokens": 16,
                     "output_tokens": a.tokens, "fake_processes": a.fake_procs},
        "runs": runs,
        "best_vs_single_process": max((r["requests_per_s_vs_single_process"] or 0) for r in runs),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
