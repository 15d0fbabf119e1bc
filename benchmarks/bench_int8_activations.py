"""What a W8A8 scheme costs in speed: W8A8 int8 checkpoints of the bundled model that differ in their activation
scheme, or in down_proj's run-time rotation (and so in the units kept in float), or the bfloat16 baseline beside
them, served by vLLM CPU, side by side in one run.

Each checkpoint is served by the bare engine with the default engine settings (compiled, dtype auto, preloads on),
one after the other, the order reversed every other round, and measured at 1, 4 and 16 streams
(benchmarks/side_by_side.py: the loop bench_vllm_cpu_threads.py uses too). Reported: each round, and per model the
median over rounds with its ratio to the first model's. The quality of the same recipes is in
benchmarks/results/quality_asym.json and quality_rot.json (bench_quality.py).

    .venv/bin/python benchmarks/bench_int8_activations.py --model symmetric=DIR --model asymmetric=DIR
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
STREAMS = (1, 4, 16)


def _describe(model_dir: Path) -> dict[str, Any]:
    """The checkpoint's activation scheme, its Linears kept in float, and its size (a float checkpoint, e.g. the
    baseline: its dtype and size)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    if "quantization_config" not in cfg:
        return {"float": cfg.get("torch_dtype") or cfg.get("dtype"), "size_bytes": size}
    qc = cfg["quantization_config"]
    acts = qc["config_groups"]["group_0"]["input_activations"]
    block = ((qc.get("transform_config") or {}).get("config_groups", {}).get("down_hadamard") or {}).get("head_dim")
    return {"input_activations_symmetric": acts["symmetric"], "down_rotation_block": block,
            "linears_in_float": len([n for n in qc["ignore"] if n != "lm_head"]), "size_bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                    help="a W8A8 checkpoint (a w8a8_int8 stage's directory) or a float one (the baseline); the "
                         "first is the reference")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/int8_activations.json")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests-per-stream", type=int, default=4)
    a = ap.parse_args()

    from side_by_side import Contender, medians, serve_rounds

    from packager.config import EngineConfig
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
    contenders = {n: Contender(d, EngineConfig()) for n, d in models.items()}
    out["rounds"] = serve_rounds(contenders, work, range(a.rounds), STREAMS, a.requests_per_stream)
    summary = medians(out["rounds"], models, STREAMS, reference=next(iter(models)))
    out["summary"] = summary
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=1), flush=True)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
