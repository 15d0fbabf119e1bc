"""The capacity search (packager.loadtest.knee) against a fine manual sweep, in one run on one server.

Server: llama.cpp's llama-server (the bento's llamacpp backend) on the Q4_K_M GGUF of the bundled model, 16 slots.
SLO: the release's default, TTFT <= 2000 ms and TPOT <= 250 ms for 90% of the requests. Prompts: synthetic, 128
tokens in, 64 out (the release's default load test): llama.cpp prefills about 500 prompt tokens/s on 2 cores here,
and a closed loop of N users sends its N prompts together, so TTFT passes 2 s between 4 and 16 users.

1. The release's default load test: a sweep of 1, 4 and 16 users (20 s each), then the capacity search (at most
   4 probes of 10 s, precision 0.1).
2. A fine manual sweep: every user count from 1 to 16, 10 s each; its knee is the highest count meeting the SLOs
   below the first that misses them.

The JSON gives both knees, their ratio, and what each cost in dispatch time.

    .venv/bin/python benchmarks/bench_knee.py        # writes benchmarks/results/knee.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SLO = {"ttft_ms": 2000.0, "tpot_ms": 250.0}
PROMPTS = {"kind": "synthetic", "input_tokens": {"mean": 128}, "output_tokens": {"mean": 64}}


def fine_sweep_knee(phases) -> tuple[list, float | None, float | None]:
    """A fine sweep's steps by load, its knee (the highest load meeting the SLOs below the first that misses
    them) and that first missing load; None where there is none."""
    from packager.loadtest.metrics import load_value

    steps = sorted(phases, key=load_value)
    first_miss = next((load_value(p) for p in steps if not p.meets_slo), None)
    knee = max((load_value(p) for p in steps if p.meets_slo and (first_miss is None or load_value(p) < first_miss)),
               default=None)
    return steps, knee, first_miss


def gguf_setup(work_name: str, quant: str):
    """(the benchmark's folder under packager's home, the bundled model's GGUF artifact of `quant` there, the
    release's default SLO, the c7i.xlarge price): what a benchmark on one llama-server starts from."""
    from packager.config import PricingConfig, SLOConfig
    from packager.core.sources import ensure_default_model, packager_home
    from packager.gguf.export import export_gguf

    work = packager_home() / work_name
    art = export_gguf(ensure_default_model().path, work / "gguf", quants=[quant], progress=False)[0]
    return work, art, SLOConfig(**SLO), PricingConfig(instance="c7i.xlarge")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "knee.json")
    ap.add_argument("--fine-max", type=int, default=16)
    ap.add_argument("--fine-step-s", type=float, default=10.0)
    args = ap.parse_args(argv)

    from packager.config import EngineConfig
    from packager.engines.llamacpp import LlamaCppServer, cpu_threads
    from packager.fsutil import atomic_write_json
    from packager.loadtest.config import LoadTestConfig
    from packager.loadtest.metrics import load_value
    from packager.loadtest.runner import run_loadtest
    from packager.provenance import now_iso, package_versions
    from packager.release.estimate import default_loadtest

    work, art, slo, pricing = gguf_setup("bench-knee", "q4_k_m")
    release_cfg = LoadTestConfig.model_validate({**default_loadtest(), "prompts": PROMPTS, "prompt_format": "chat"})
    fine_cfg = LoadTestConfig.model_validate({
        "profile": {"kind": "sweep", "mode": "concurrency", "values": list(range(1, args.fine_max + 1)),
                    "step_duration_s": args.fine_step_s},
        "prompts": PROMPTS, "prompt_format": "chat", "max_duration_s": args.fine_max * args.fine_step_s,
        "max_requests": 100_000})
    with LlamaCppServer(art.path, EngineConfig(backend="llamacpp", max_model_len=2048), served_name="q4_k_m",
                        slots=16, log_path=work / "llama-server.log") as srv:
        t0 = time.monotonic()
        searched = run_loadtest(srv.base_url, release_cfg, slo, pricing, work / "search", log=print)
        search_wall = time.monotonic() - t0
        t0 = time.monotonic()
        fine = run_loadtest(srv.base_url, fine_cfg, slo, pricing, work / "fine")
        fine_wall = time.monotonic() - t0
    k = searched.knee
    assert k is not None
    steps, fine_knee, first_miss = fine_sweep_knee(fine.phases)
    out = {
        "benchmark": "bench_knee", "created_at": now_iso(),
        "model": "SmolLM2-135M-Instruct (bundled), GGUF Q4_K_M", "server": "llama-server, 16 slots",
        "machine": {"cpus": cpu_threads()}, "versions": package_versions(), "slo": SLO,
        "search": {"config": release_cfg.model_dump(mode="json")["knee"], "sweep": [1, 4, 16],
                   "knee": k.knee, "first_failing": k.first_failing, "resolved": k.resolved,
                   "stopped_because": k.stopped_because,
                   "probes": [{"load": p.load, "source": p.source, "meets_slo": p.meets_slo,
                               "tpot_ms_p50": p.tpot_ms_p50, "slo_attainment": p.slo_attainment_fraction,
                               "output_tokens_per_s": p.output_tokens_per_s} for p in k.probes],
                   "probe_dispatch_s": k.dispatch_s, "sweep_dispatch_s": 60.0, "wall_s": round(search_wall, 1),
                   "usd_per_million_output_tokens_at_knee": k.usd_per_million_output_tokens_at_knee,
                   "usd_per_million_output_tokens_at_highest_step": (
                       searched.cost.at_slo_limited_throughput.usd_per_million_output_tokens
                       if searched.cost and searched.cost.at_slo_limited_throughput else None)},
        "fine_sweep": {"step_s": args.fine_step_s, "knee": fine_knee, "first_failing": first_miss,
                       "steps": [{"users": load_value(p), "meets_slo": p.meets_slo,
                                  "slo_attainment": round(p.slo_attainment_fraction, 3),
                                  "tpot_ms_p95": p.tpot.p95_ms, "ttft_ms_p95": p.ttft.p95_ms,
                                  "output_tokens_per_s": round(p.output_token_throughput_per_s, 1)} for p in steps],
                       "dispatch_s": args.fine_max * args.fine_step_s, "wall_s": round(fine_wall, 1)},
        "search_knee_over_fine_knee": (round(k.knee / fine_knee, 3) if k.knee and fine_knee else None),
        "notes": ["one server, the search first, then the fine sweep; each load judged by the same rule (90% of "
                  "requests within both SLO limits)",
                  "a step's verdict near the knee can flip between runs: the fine sweep's knee is itself one "
                  "measurement"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)
    print(json.dumps({k2: out[k2] for k2 in ("search_knee_over_fine_knee",)}, indent=1))
    print(f"search: knee {k.knee} (first failing {k.first_failing}), {k.dispatch_s:g} s of probes; "
          f"fine sweep: knee {fine_knee} (first failing {first_miss})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
