"""What an FP8 KV cache costs in quality, on the real bundled model (SmolLM2-135M-Instruct) through vLLM CPU.

`engine.kv_cache_dtype: fp8` stores vLLM's KV cache in 8-bit floats: half the bytes per cached token, which is
what lets FP8 serving on a GPU carry more streams (benchmarks/results/gpu_ceiling_kv8.json, random weights,
speed only). It changes what the model computes, so its quality is measured here, labelled as the bundled model's,
the same way as a compression: the default suite (task score, recovery) and the 557-prompt fidelity corpus (mean
KL and top-1 agreement of the next-token distributions against the baseline), both through the serving engine.

Two `packager evaluate` runs of the same model, one after the other, differing only in the KV cache dtype:

    .venv/bin/packager evaluate default --out WORK/baseline --name baseline
    PACKAGER_ENGINE__KV_CACHE_DTYPE=fp8 .venv/bin/packager evaluate default --baseline WORK/baseline \
        --out WORK/kv-fp8 --name kv-fp8

This script runs both (or, with --assemble, reads the two summaries an earlier run wrote) and writes the JSON:

    .venv/bin/python benchmarks/bench_kv_cache_quality.py --work /tmp/kvq \
        --out benchmarks/results/kv_cache_fp8_quality.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGER = [sys.executable, "-m", "packager.cli"]
KEYS = ("score", "recovery", "perplexity", "fidelity_mean_kl", "fidelity_p95_kl", "fidelity_top1_agreement",
        "fidelity_agreement", "fidelity_kl_positions", "fidelity_prompts", "n_items", "n_errors", "wall_time_s")


def evaluate(work: Path, name: str, kv: str, timeout_s: float) -> None:
    cmd = [*PACKAGER, "evaluate", "default", "--out", str(work / name), "--name", name]
    if name != "baseline":
        cmd += ["--baseline", str(work / "baseline")]
    env = {**os.environ, "PACKAGER_ENGINE__KV_CACHE_DTYPE": kv}
    with open(work / f"{name}.log", "w") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, check=True, cwd=ROOT)


def row(summary: dict[str, Any]) -> dict[str, Any]:
    out = {k: summary.get(k) for k in KEYS}
    out["kv_cache_dtype"] = (summary.get("engine") or {}).get("kv_cache_dtype", "auto")
    return out


def noise_floor() -> dict[str, Any] | None:
    """The bundled model's noise floor (bfloat16 against float32 serving) from quality.json, for scale."""
    p = ROOT / "benchmarks" / "results" / "quality.json"
    return json.loads(p.read_text()).get("noise_floor") if p.is_file() else None


def assemble(work: Path, names: dict[str, str]) -> dict[str, Any]:
    rows = {n: row(json.loads((work / n / "summary.json").read_text())) for n in names}
    nf = noise_floor()
    for n, r in rows.items():
        if nf and r.get("fidelity_mean_kl") is not None:
            r["kl_vs_noise_floor"] = round(r["fidelity_mean_kl"] / nf["mean_kl"], 1)
    return {"benchmark": "kv_cache_quality", "model": "SmolLM2-135M-Instruct (bundled; real weights)",
            "engine": "vLLM CPU (the product's EngineServer), the same settings but the KV cache dtype",
            "suite": "default", "fidelity_corpus": "default (557 prompts)",
            "commands": [f"PACKAGER_ENGINE__KV_CACHE_DTYPE={kv} packager evaluate default --out WORK/{n}"
                         + ("" if n == "baseline" else " --baseline WORK/baseline") for n, kv in names.items()],
            "noise_floor": nf, "variants": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kv", default="fp8", help="the KV cache dtype compared with the baseline's (default fp8)")
    ap.add_argument("--assemble", action="store_true", help="read WORK/<name>/summary.json of an earlier run")
    ap.add_argument("--timeout-s", type=float, default=1500.0, help="bound of each evaluation")
    a = ap.parse_args(argv)
    names = {"baseline": "auto", f"kv-{a.kv}": a.kv}
    a.work.mkdir(parents=True, exist_ok=True)
    if not a.assemble:
        for n, kv in names.items():
            evaluate(a.work, n, kv, a.timeout_s)
    data = assemble(a.work, names)
    a.out.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data["variants"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
