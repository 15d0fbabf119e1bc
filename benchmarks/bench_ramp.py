"""Closed-loop users started all at once or one by one (`ramp_fraction`), against a steady-state sweep, in one run
on one server.

Server: llama.cpp's llama-server (the bento's llamacpp backend) on the Q8_0 GGUF of the bundled model, with the
bento's 64 slots. SLO: the release's default, TTFT <= 2000 ms and TPOT <= 250 ms for 90% of the requests. Load:
the release's default load test (a sweep of 1, 4 and 16 users of 20 s, then the capacity search, 128 tokens in,
32-96 out).

1. The release's load test with every user of a phase starting at once and every request judged
   (`ramp_fraction: 0`, the default before).
2. The same with the users started evenly over the first quarter of each phase and each user's first request left
   out of the verdict (`ramp_fraction: 0.25`, the default now).
3. The steady state: long steps (`--steady-step-s`, 45 s) over `--steady-users`, the users started over the first
   quarter, every request started in the first `--steady-warmup-s` (20 s) left out, and a prompt of its own for
   every request; its knee is the highest load meeting the SLOs below the first that misses them.

The JSON gives each knee, its ratio to the steady state's, the TTFT p95 and tokens/s of every step, and the price
at each knee.

    .venv/bin/python benchmarks/bench_ramp.py        # writes benchmarks/results/ramp.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_knee import SLO, fine_sweep_knee, gguf_setup  # noqa: E402


def _steps(phases) -> list[dict]:
    from packager.loadtest.metrics import load_value

    return [{"users": load_value(p), "meets_slo": p.meets_slo, "slo_attainment": round(p.slo_attainment_fraction, 3),
             "requests_judged": p.requests_sent, "ttft_ms_p50": p.ttft.p50_ms, "ttft_ms_p95": p.ttft.p95_ms,
             "tpot_ms_p95": p.tpot.p95_ms, "output_tokens_per_s": round(p.output_token_throughput_per_s, 1)}
            for p in sorted(phases, key=load_value)]


def _search(result, wall_s: float) -> dict:
    k = result.knee
    assert k is not None
    return {"knee": k.knee, "first_failing": k.first_failing, "resolved": k.resolved,
            "stopped_because": k.stopped_because, "output_tokens_per_s_at_knee": k.output_tokens_per_s_at_knee,
            "usd_per_million_output_tokens_at_knee": k.usd_per_million_output_tokens_at_knee,
            "sweep_steps": _steps(result.phases),
            "probes": [{"load": p.load, "source": p.source, "meets_slo": p.meets_slo,
                        "slo_attainment": round(p.slo_attainment_fraction, 3), "ttft_ms_p95": p.ttft_ms_p95,
                        "output_tokens_per_s": round(p.output_tokens_per_s, 1)} for p in k.probes],
            "wall_s": round(wall_s, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ramp.json")
    ap.add_argument("--steady-users", default="12,16,20,24,28,32,40,48")
    ap.add_argument("--steady-step-s", type=float, default=45.0)
    ap.add_argument("--steady-warmup-s", type=float, default=20.0)
    args = ap.parse_args(argv)

    from packager.config import EngineConfig
    from packager.engines.llamacpp import LlamaCppServer, cpu_threads
    from packager.fsutil import atomic_write_json
    from packager.loadtest.config import LoadTestConfig
    from packager.loadtest.runner import run_loadtest
    from packager.provenance import now_iso, package_versions
    from packager.release.estimate import default_loadtest

    work, art, slo, pricing = gguf_setup("bench-ramp", "q8_0")
    base = {**default_loadtest(), "prompt_format": "chat"}
    users = [int(u) for u in args.steady_users.split(",")]
    steady_cfg = LoadTestConfig.model_validate({
        **base, "profile": {"kind": "sweep", "mode": "concurrency", "values": users,
                            "step_duration_s": args.steady_step_s},
        "knee": {"enabled": False}, "warmup_s": args.steady_warmup_s, "ramp_fraction": 0.25,
        # a prompt of its own for every request: the server has seen none of them
        "prompts": {**base["prompts"], "unique_prompts": 20_000},
        "max_duration_s": len(users) * args.steady_step_s, "max_requests": 100_000, "seed": 3})
    out: dict = {"benchmark": "bench_ramp", "created_at": now_iso(),
                 "model": "SmolLM2-135M-Instruct (bundled), GGUF Q8_0", "server": "llama-server, 64 slots",
                 "machine": {"cpus": cpu_threads()}, "versions": package_versions(), "slo": SLO,
                 "load_test": {k: base[k] for k in ("profile", "knee", "prompts")}}
    with LlamaCppServer(art.path, EngineConfig(backend="llamacpp", max_model_len=2048), served_name="q8_0",
                        slots=64, log_path=work / "llama-server.log") as srv:
        for label, ramp, seed in (("all_at_once", 0.0, 1), ("ramped", 0.25, 2)):
            # prompts of its own for each (another seed): llama-server keeps each slot's last prompt, and a
            # prompt it has seen comes back in milliseconds (TTFT 16 ms instead of 208 ms at 1 user)
            cfg = LoadTestConfig.model_validate({**base, "ramp_fraction": ramp, "seed": seed})
            t0 = time.monotonic()
            res = run_loadtest(srv.base_url, cfg, slo, pricing, work / label, log=print)
            out[label] = {"ramp_fraction": ramp, **_search(res, time.monotonic() - t0)}
            print(label, out[label]["knee"], out[label]["first_failing"], flush=True)
        t0 = time.monotonic()
        steady = run_loadtest(srv.base_url, steady_cfg, slo, pricing, work / "steady")
        _, knee, first_miss = fine_sweep_knee(steady.phases)
        out["steady_state"] = {"step_s": args.steady_step_s, "warmup_s": args.steady_warmup_s, "ramp_fraction": 0.25,
                               "knee": knee, "first_failing": first_miss, "steps": _steps(steady.phases),
                               "wall_s": round(time.monotonic() - t0, 1)}
    for label in ("all_at_once", "ramped"):
        k = out[label]["knee"]
        out[label]["knee_over_steady_state"] = round(k / knee, 3) if k and knee else None
    out["notes"] = ["one server, in the order all_at_once, ramped, steady_state, each with prompts of its own "
                    "(seeds 1, 2, 3); every load judged by the same rule (90% of the requests within both SLO limits)",
                    "the steady state's first_failing may be null when every load it tried met the SLOs: its knee is "
                    "then a lower bound"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)
    print(json.dumps({k: out[k].get("knee") for k in ("all_at_once", "ramped", "steady_state")}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
