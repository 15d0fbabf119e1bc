"""What preloading tcmalloc and Intel OpenMP does to vLLM CPU: the bundled model served without and with the
preloads (engine.cpu_preload, packager.engines.cpu_preload), alternating, in one run.

Each round starts a real vLLM server with the default engine settings (compiled; dtype auto) once without and
once with LD_PRELOAD, and measures it with the same client as benchmarks/bench_compression.py (greedy, 64 output
tokens per request, ignore_eos, /v1/completions) at 1, 4 and 16 concurrent streams. Rounds alternate the order
(off-on, then on-off) so that a machine that warms or slows over the run does not favour one side. The ratios are
computed from the same run; the lines of each server's log that mention LD_PRELOAD are kept.

    .venv/bin/python benchmarks/bench_vllm_cpu_preload.py
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
STREAMS = (1, 4, 16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/vllm_cpu_preload.json")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests-per-stream", type=int, default=3)
    a = ap.parse_args()

    from bench_compression import _throughput

    from packager.config import EngineConfig
    from packager.core.sources import ensure_default_model
    from packager.engines.cpu_preload import find_preloads, search_dirs
    from packager.engines.vllm import EngineServer, vllm_env

    work = Path(tempfile.mkdtemp(prefix="bench-preload-"))
    src = ensure_default_model().path
    found, missing = find_preloads(search_dirs())
    found = [Path(f).name for f in found]  # file names only: no paths of this machine in the results
    out: dict = {"model": "SmolLM2-135M-Instruct", "how": __doc__.strip().splitlines()[0],
                 "preloads_found": found, "preloads_missing": missing,
                 "client": {"max_tokens": 64, "ignore_eos": True, "requests_per_stream": a.requests_per_stream},
                 "runs": []}
    for r in range(a.rounds):
        for preload in ((False, True) if r % 2 == 0 else (True, False)):
            engine = EngineConfig(cpu_preload=preload)
            log = work / f"round{r}_{'on' if preload else 'off'}.log"
            t = time.perf_counter()
            with EngineServer(src, engine, served_name="m", log_path=log) as srv:
                row: dict = {"round": r, "preload": preload, "server_start_s": round(time.perf_counter() - t, 1),
                             "ld_preload": ":".join(Path(x).name for x in
                                                    (vllm_env(engine, base={}).get("LD_PRELOAD") or "").split(":")
                                                    if x) or None}
                for streams in STREAMS:
                    row[f"{streams}_streams"] = asyncio.run(_throughput(srv.base_url, "m", streams,
                                                                        a.requests_per_stream, 64))
            row["log_lines_on_ld_preload"] = [ln[ln.find("["):].strip()[:240] for ln in
                                              log.read_text(errors="replace").splitlines() if "LD_PRELOAD" in ln][:4]
            out["runs"].append(row)
            print({"round": r, "preload": preload,
                   **{f"{s}": row[f"{s}_streams"]["output_tokens_per_s"] for s in STREAMS}}, flush=True)
            a.out.write_text(json.dumps(out, indent=2) + "\n")
    summary = {}
    for s in STREAMS:
        key = f"{s}_streams"
        on = [x[key]["output_tokens_per_s"] for x in out["runs"] if x["preload"]]
        off = [x[key]["output_tokens_per_s"] for x in out["runs"] if not x["preload"]]
        summary[key] = {"off_tok_s": off, "on_tok_s": on, "off_median": statistics.median(off),
                        "on_median": statistics.median(on),
                        "ratio_on_to_off": round(statistics.median(on) / statistics.median(off), 3)}
    out["summary"] = summary
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
