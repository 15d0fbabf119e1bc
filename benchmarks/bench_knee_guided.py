"""The capacity search's probe placement, guided (the default) against plain bisection, on one vLLM server, in one
run, each against a fine manual sweep.

Server: vLLM CPU serving the bundled model's baseline (bf16), packager's engine arguments: the release's baseline.
SLO and load test: the release's defaults (TTFT <= 2000 ms and TPOT <= 250 ms for 90% of the requests; a sweep
of 1, 4 and 16 users, 20 s each, then at most 5 probes of 10 s, precision 0.1). In the default release this
server met the SLOs at every sweep step, and bisection with 4 probes left the knee bracketed at 40-48 users.

1. The release's load test with `knee.guided: false` (bisection).
2. The same with `knee.guided: true`.
3. A fine manual sweep: every `--fine-every` users from `--fine-from` to `--fine-to`, 10 s each; its knee is the
   highest count meeting the SLOs below the first that misses them.

The JSON gives each search's probes, knee, bracket and dispatch time, and each knee over the fine sweep's.

    .venv/bin/python benchmarks/bench_knee_guided.py     # writes benchmarks/results/knee_guided.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_knee import fine_sweep_knee  # noqa: E402

SLO = {"ttft_ms": 2000.0, "tpot_ms": 250.0}


def search_summary(r, wall_s: float) -> dict:
    k = r.knee
    assert k is not None
    return {"knee": k.knee, "first_failing": k.first_failing, "resolved": k.resolved,
            "stopped_because": k.stopped_because,
            "bracket_width_over_knee": (round((k.first_failing - k.knee) / k.knee, 3)
                                        if k.knee and k.first_failing else None),
            "probes": [{"load": p.load, "source": p.source, "meets_slo": p.meets_slo,
                        "slo_ratio_at_target": (round(p.slo_ratio_at_target, 3)
                                                if p.slo_ratio_at_target is not None else None),
                        "slo_attainment": round(p.slo_attainment_fraction, 3),
                        "output_tokens_per_s": round(p.output_tokens_per_s, 1)} for p in k.probes],
            "probes_run": sum(1 for p in k.probes if p.source == "probe"), "probe_dispatch_s": k.dispatch_s,
            "output_tokens_per_s_at_knee": (round(k.output_tokens_per_s_at_knee, 1)
                                            if k.output_tokens_per_s_at_knee else None),
            "wall_s": round(wall_s, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "knee_guided.json")
    ap.add_argument("--fine-from", type=int, default=24)
    ap.add_argument("--fine-to", type=int, default=64)
    ap.add_argument("--fine-every", type=int, default=4)
    ap.add_argument("--fine-step-s", type=float, default=10.0)
    args = ap.parse_args(argv)

    from packager.config import EngineConfig, PricingConfig, SLOConfig
    from packager.core.sources import ensure_default_model, packager_home
    from packager.engines.llamacpp import cpu_threads
    from packager.engines.vllm import EngineServer
    from packager.fsutil import atomic_write_json
    from packager.loadtest.config import LoadTestConfig
    from packager.loadtest.metrics import load_value
    from packager.loadtest.runner import run_loadtest
    from packager.provenance import now_iso, package_versions
    from packager.release.estimate import default_loadtest

    work = packager_home() / "bench-knee-guided"
    work.mkdir(parents=True, exist_ok=True)
    slo, pricing = SLOConfig(**SLO), PricingConfig(instance="c7i.xlarge")
    base = default_loadtest()
    cfgs = {name: LoadTestConfig.model_validate({**base, "knee": {**base["knee"], "guided": guided},
                                                 "prompt_format": "chat", "seed": seed})
            for name, guided, seed in (("bisection", False, 0), ("guided", True, 0))}
    loads = list(range(args.fine_from, args.fine_to + 1, args.fine_every))
    fine_cfg = LoadTestConfig.model_validate({
        "profile": {"kind": "sweep", "mode": "concurrency", "values": loads, "step_duration_s": args.fine_step_s},
        "prompts": base["prompts"], "prompt_format": "chat", "max_duration_s": len(loads) * args.fine_step_s,
        "max_requests": 100_000, "seed": 7})
    out: dict = {"benchmark": "bench_knee_guided", "created_at": now_iso(),
                 "model": "SmolLM2-135M-Instruct (bundled), baseline served bf16", "server": "vLLM CPU",
                 "machine": {"cpus": cpu_threads()}, "versions": package_versions(), "slo": SLO,
                 "release_knee_config": base["knee"], "sweep": base["profile"]["values"], "searches": {}}
    with EngineServer(ensure_default_model().path, EngineConfig(), served_name="baseline",
                      log_path=work / "vllm.log") as srv:
        for name, cfg in cfgs.items():
            t0 = time.monotonic()
            r = run_loadtest(srv.base_url, cfg, slo, pricing, work / name, log=print)
            out["searches"][name] = search_summary(r, time.monotonic() - t0)
        t0 = time.monotonic()
        fine = run_loadtest(srv.base_url, fine_cfg, slo, pricing, work / "fine")
        fine_wall = time.monotonic() - t0
    steps, fine_knee, first_miss = fine_sweep_knee(fine.phases)
    out["fine_sweep"] = {"users": loads, "step_s": args.fine_step_s, "knee": fine_knee, "first_failing": first_miss,
                         "steps": [{"users": load_value(p), "meets_slo": p.meets_slo,
                                    "slo_ratio_at_target": (round(p.slo_ratio_at_target, 3)
                                                            if p.slo_ratio_at_target is not None else None),
                                    "slo_attainment": round(p.slo_attainment_fraction, 3),
                                    "ttft_ms_p95": p.ttft.p95_ms, "tpot_ms_p95": p.tpot.p95_ms,
                                    "output_tokens_per_s": round(p.output_token_throughput_per_s, 1)}
                                   for p in steps],
                         "wall_s": round(fine_wall, 1)}
    for s in out["searches"].values():
        s["knee_over_fine_knee"] = round(s["knee"] / fine_knee, 3) if s["knee"] and fine_knee else None
    out["notes"] = ["one server: bisection first, then guided, then the fine sweep; every load judged by the same "
                    "rule (90% of requests within both SLO limits)",
                    "a verdict near the knee can flip between runs: the fine sweep's knee is itself one measurement, "
                    f"to {args.fine_every} users"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)
    for name, s in out["searches"].items():
        print(f"{name}: knee {s['knee']} (first failing {s['first_failing']}, resolved {s['resolved']}), "
              f"{s['probes_run']} probes, over the fine knee {s['knee_over_fine_knee']}")
    print(f"fine sweep: knee {fine_knee} (first failing {first_miss}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
