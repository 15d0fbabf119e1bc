"""What the accuracy-aware W8A8 costs in speed: the baseline, round-to-nearest W8A8 and the mixed-precision
W8A8 served by vLLM CPU one after the other in one run, at 1 and 16 concurrent streams.

Each model is served by a real vLLM server with the default engine settings (compiled; dtype auto), and
measured with the same client as benchmarks/bench_compression.py (greedy, 64 output tokens per request,
ignore_eos, /v1/completions). The ratios to the baseline are computed from the same run.

    .venv/bin/python benchmarks/bench_int8_speed.py --mixed DIR_OF_THE_W8A8_INT8_STAGE
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixed", required=True, type=Path, help="the built-in w8a8-int8 stage's model directory")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/int8_speed.json")
    ap.add_argument("--requests-per-stream", type=int, default=3)
    a = ap.parse_args()

    from bench_compression import _throughput

    from packager.compress.base import StageContext
    from packager.compress.int8 import W8A8Int8Args, apply_w8a8_int8
    from packager.config import EngineConfig
    from packager.core.sources import ensure_default_model
    from packager.engines.vllm import EngineServer

    work = Path(tempfile.mkdtemp(prefix="bench-int8-speed-"))
    src = ensure_default_model().path
    rtn = work / "rtn"
    rtn.mkdir()
    apply_w8a8_int8(W8A8Int8Args(), StageContext(src, rtn, show_progress=False, log=lambda _m: None))
    stage = json.loads((a.mixed / "stage.json").read_text())["report"] if (a.mixed / "stage.json").is_file() else {}
    mp = stage.get("mixed_precision", {})
    engine = EngineConfig()
    out = {"model": "SmolLM2-135M-Instruct", "how": __doc__.strip().splitlines()[0],
           "engine": engine.model_dump(mode="json"), "client": {"max_tokens": 64, "ignore_eos": True,
                                                                "requests_per_stream": a.requests_per_stream},
           "mixed_precision": {"kept_units": len(mp.get("kept_float", [])), "units": mp.get("units"),
                               "weight_share_float": mp.get("weight_share_float"),
                               "smoothquant_alpha": stage.get("smoothquant_alpha")},
           "variants": {}}
    for name, d in (("baseline", src), ("w8a8-int8 round-to-nearest", rtn), ("w8a8-int8 mixed precision", a.mixed)):
        t = time.perf_counter()
        with EngineServer(d, engine, served_name="m", log_path=work / f"{name.replace(' ', '_')}.log") as srv:
            row = {"server_start_s": round(time.perf_counter() - t, 1)}
            for streams in (1, 16):
                row[f"{streams}_streams"] = asyncio.run(_throughput(srv.base_url, "m", streams,
                                                                    a.requests_per_stream, 64))
        out["variants"][name] = row
        print(name, {k: v["output_tokens_per_s"] for k, v in row.items() if isinstance(v, dict)}, flush=True)
    base = out["variants"]["baseline"]
    for name, row in out["variants"].items():
        row["ratio_to_baseline"] = {k: round(row[k]["output_tokens_per_s"] / base[k]["output_tokens_per_s"], 3)
                                    for k in ("1_streams", "16_streams")}
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
