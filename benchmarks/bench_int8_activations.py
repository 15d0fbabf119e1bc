"""What asymmetric per-token activations cost in speed: W8A8 int8 checkpoints of the bundled model that differ in
their activation scheme (and so in the units kept in float) served by vLLM CPU, side by side in one run.

Each checkpoint is served by the bare engine (packager.engines.vllm.EngineServer, the default engine settings:
compiled, dtype auto, preloads on), one after the other, the order reversed every other round so that drift on the
machine hits every model alike, and measured with the same client as benchmarks/bench_vllm_cpu_threads.py (greedy,
64 output tokens per request, ignore_eos) at 1, 4 and 16 streams. Reported: each round, and per model the median
over rounds with its ratio to the first model's. The quality of the same recipes is in
benchmarks/results/quality_asym.json (bench_quality.py).

    .venv/bin/python benchmarks/bench_int8_activations.py --model symmetric=DIR --model asymmetric=DIR
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
STREAMS = (1, 4, 16)


def _describe(model_dir: Path) -> dict[str, Any]:
    """The checkpoint's activation scheme, its Linears kept in float, and its size."""
    qc = json.loads((model_dir / "config.json").read_text())["quantization_config"]
    acts = qc["config_groups"]["group_0"]["input_activations"]
    return {"input_activations_symmetric": acts["symmetric"],
            "linears_in_float": len([n for n in qc["ignore"] if n != "lm_head"]),
            "size_bytes": sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))}


def rounds(models: dict[str, Path], work: Path, n_rounds: int, per_stream: int) -> list[dict[str, Any]]:
    from bench_compression import _throughput

    from packager.config import EngineConfig
    from packager.engines.vllm import EngineServer

    rows = []
    for r in range(n_rounds):
        order = list(models.items()) if r % 2 == 0 else list(reversed(models.items()))
        for name, src in order:
            t = time.perf_counter()
            with EngineServer(src, EngineConfig(), served_name="m", log_path=work / f"{name}_{r}.log") as srv:
                row: dict[str, Any] = {"round": r, "model": name, "server_start_s": round(time.perf_counter() - t, 1)}
                for s in STREAMS:
                    row[f"{s}_streams"] = asyncio.run(_throughput(srv.base_url, "m", s, per_stream, 64))
            rows.append(row)
            print({"round": r, "model": name, **{s: row[f"{s}_streams"]["output_tokens_per_s"] for s in STREAMS}},
                  flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                    help="a W8A8 checkpoint (a w8a8_int8 stage's directory); the first is the reference")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/int8_activations.json")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests-per-stream", type=int, default=4)
    a = ap.parse_args()

    from packager.hardware import cpu_threads
    from packager.provenance import now_iso, package_versions

    models = {}
    for spec in a.model:
        name, _, d = spec.partition("=")
        if not d or not (Path(d) / "config.json").is_file():
            ap.error(f"--model {spec!r}: expected NAME=DIR of a checkpoint with a config.json")
        models[name] = Path(d)
    work = Path(tempfile.mkdtemp(prefix="bench-int8-acts-"))
    out: dict[str, Any] = {"benchmark": "bench_int8_activations", "created_at": now_iso(),
                           "model": "SmolLM2-135M-Instruct (bundled)", "how": __doc__.strip().splitlines()[0],
                           "host_cpus": cpu_threads(), "versions": package_versions(),
                           "client": {"max_tokens": 64, "ignore_eos": True,
                                      "requests_per_stream": a.requests_per_stream},
                           "checkpoints": {n: _describe(d) for n, d in models.items()}}
    out["rounds"] = rounds(models, work, a.rounds, a.requests_per_stream)
    first = next(iter(models))
    summary: dict[str, Any] = {}
    for s in STREAMS:
        key = f"{s}_streams"
        med = {n: statistics.median(x[key]["output_tokens_per_s"] for x in out["rounds"] if x["model"] == n)
               for n in models}
        summary[key] = {**{f"{n}_median_tok_s": v for n, v in med.items()},
                        **{f"ratio_{n}_to_{first}": round(med[n] / med[first], 3) for n in models if n != first}}
    out["summary"] = summary
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=1), flush=True)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
