"""What vLLM CPU's reserved CPU costs on a small host: the bundled model served with vLLM's own reservation (one CPU
kept free of its OpenMP threads for the scheduler and API server) and with none (engine.cpu_reserved_cpus,
packager.engines.vllm.reserved_cpus), side by side in one run.

1. The bare engine (compiled, dtype auto, preloads on), alternating the order over rounds (reserved, none; then
   none, reserved): the same client as benchmarks/bench_vllm_cpu_preload.py (greedy, 64 output tokens per
   request, ignore_eos) at 1, 4 and 16 streams.
2. The release's path: a bento per setting, load-tested with the release's default load test (a sweep of 1, 4
   and 16 users, then the capacity search; packager.release.estimate.default_loadtest), the load generator on
   the same CPUs as the server, as in a release.

The ratios are computed from the same run. Each engine's log lines on its OpenMP binding are kept.

    .venv/bin/python benchmarks/bench_vllm_cpu_threads.py        # writes benchmarks/results/vllm_cpu_threads.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
STREAMS = (1, 4, 16)
SETTINGS = {"reserved_1": 1, "reserved_0": 0}  # vLLM's own on x86 (one per rank); none


def _binding_lines(log: Path) -> list[str]:
    return [ln[ln.find("]") + 1:].strip()[:200] for ln in log.read_text(errors="replace").splitlines()
            if _binding_line(ln)][:6]


def _binding_line(ln: str) -> bool:
    """vLLM's own lines on its OpenMP binding (not a command line that names the variable)."""
    keep = ("reserve_cpu_num", "core ids", "reserved_cpus", "RESERVED_CPU is less than")
    return any(k in ln for k in keep) and "command" not in ln


def bare_rounds(src: Path, work: Path, rounds: int, per_stream: int) -> list[dict[str, Any]]:
    from side_by_side import Contender, serve_rounds

    from packager.config import EngineConfig

    def binding(_name: str, log: Path, row: dict[str, Any]) -> None:
        row["binding"] = _binding_lines(log)

    contenders = {name: Contender(src, EngineConfig(cpu_reserved_cpus=reserved)) for name, reserved in SETTINGS.items()}
    return serve_rounds(contenders, work, range(rounds), STREAMS, per_stream, label="setting", after=binding)


def bento_loadtests(src: Path, work: Path) -> dict[str, Any]:
    from packager.config import EngineConfig, PricingConfig, SLOConfig
    from packager.core.access import use_client_key
    from packager.loadtest.config import LoadTestConfig
    from packager.loadtest.runner import run_loadtest
    from packager.release.estimate import default_loadtest
    from packager.serve.build import build_bento
    from packager.serve.server import BentoServer

    out: dict[str, Any] = {}
    lt_cfg = LoadTestConfig.model_validate(default_loadtest())
    for name, reserved in SETTINGS.items():
        built = build_bento(src, engine=EngineConfig(cpu_reserved_cpus=reserved), name=f"packager-bench-{name}",
                            model_name="m", log=lambda m: None)
        t = time.perf_counter()
        with BentoServer(built.bento_tag, log_path=work / f"bento_{name}.log", startup_timeout_s=900) as srv:
            start_s = round(time.perf_counter() - t, 1)
            with use_client_key(srv.api_key):
                res = run_loadtest(srv.base_url, lt_cfg, SLOConfig(), PricingConfig(), work / f"lt_{name}")
        steps = [{"users": p.load.get("users"), "output_tokens_per_s": round(p.output_token_throughput_per_s, 1),
                  "ttft_ms_p95": round(p.ttft.p95_ms or 0.0, 1), "tpot_ms_p95": round(p.tpot.p95_ms or 0.0, 1),
                  "meets_slo": p.meets_slo} for p in res.phases]
        knee = res.knee
        out[name] = {"bento_start_s": start_s, "steps": steps,
                     "knee_users": knee.knee if knee else None,
                     "first_failing_users": knee.first_failing if knee else None,
                     "knee_resolved": knee.resolved if knee else None,
                     "output_tokens_per_s_at_knee": knee.output_tokens_per_s_at_knee if knee else None,
                     "usd_per_million_output_tokens_at_knee": (knee.usd_per_million_output_tokens_at_knee
                                                               if knee else None),
                     "binding": _binding_lines(work / f"bento_{name}.log")}
        print(name, json.dumps({k: v for k, v in out[name].items() if k != "binding"}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/vllm_cpu_threads.json")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests-per-stream", type=int, default=3)
    ap.add_argument("--no-bento", action="store_true", help="the bare engine only")
    a = ap.parse_args()

    from packager.core.sources import ensure_default_model
    from packager.hardware import cpu_threads
    from packager.provenance import now_iso, package_versions

    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    src = Path(ensure_default_model().path)
    out: dict[str, Any] = {"benchmark": "bench_vllm_cpu_threads", "created_at": now_iso(),
                           "model": "SmolLM2-135M-Instruct (bundled)", "how": __doc__.strip().splitlines()[0],
                           "host_cpus": cpu_threads(), "versions": package_versions(),
                           "client": {"max_tokens": 64, "ignore_eos": True,
                                      "requests_per_stream": a.requests_per_stream}}
    out["bare"] = bare_rounds(src, work, a.rounds, a.requests_per_stream)
    from side_by_side import medians

    summary = medians(out["bare"], SETTINGS, STREAMS, reference="reserved_1", label="setting")
    out["bare_summary"] = summary
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=1), flush=True)
    if not a.no_bento:
        out["bento_loadtest"] = bento_loadtests(src, work)
        a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
