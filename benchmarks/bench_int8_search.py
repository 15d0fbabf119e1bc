"""What the W8A8 search costs, and what running its calibration samples as one batch saves: the built-in
`w8a8-int8` recipe's search (packager.compress.int8_search.search: SmoothQuant strength, GPTQ rounding,
mixed precision) on the bundled model, twice in one run: once with the samples one at a time (as before
stack_equal_lengths), once batched. Wall time per phase, the number of simulated passes, and whether the two
searches decided the same (strength, every KL, the units kept).

    .venv/bin/python benchmarks/bench_int8_search.py [--out benchmarks/results/int8_search.json]

About 10 minutes on 2 cores. Keep the machine otherwise idle.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _timed(target: Any, name: str, into: dict[str, float]) -> Any:
    """Wrap target.name so that its wall time adds up in into[name]; returns the original."""
    orig = getattr(target, name)

    def wrapper(*a, **k):
        t0 = time.monotonic()
        try:
            return orig(*a, **k)
        finally:
            into[name] = into.get(name, 0.0) + time.monotonic() - t0
    setattr(target, name, wrapper)
    return orig


def run_once(batched: bool) -> dict[str, Any]:
    import packager.compress.gptq_int8 as G
    import packager.compress.int8_search as S
    from packager.compress.calibration import load_calibration
    from packager.compress.ct_format import select_linears
    from packager.compress.int8 import W8A8Int8Args
    from packager.compress.recipe import chat_renderer, load_recipe
    from packager.core.sources import resolve_model

    src = resolve_model("default").path
    stage = load_recipe("w8a8-int8").stages[0]
    assert isinstance(stage, W8A8Int8Args)
    # the calibration text a recipe run gets: the default mix rendered with the model's chat template
    texts, label, _ = load_calibration("default", stage.n_samples, stage.seq_len, render=chat_renderer(src))
    quantizable, _ = select_linears(src, list(stage.ignore))
    phases: dict[str, float] = {}
    saved = [(S, n, _timed(S, n, phases)) for n in ("activation_maxima", "keep_in_float")]
    saved.append((G, "round_simulated", _timed(G, "round_simulated", phases)))
    stack = S.stack_equal_lengths
    if not batched:
        S.stack_equal_lengths = lambda batches: list(batches)  # type: ignore[assignment]
    try:
        t0 = time.monotonic()
        res = S.search(src, texts, alpha=stage.smoothquant_alpha, alpha_candidates=stage.alpha_candidates,
                       mixed=stage.mixed_precision, quantizable=quantizable, seq_len=stage.seq_len,
                       search_samples=stage.search_samples, search_seq_len=stage.search_seq_len,
                       show_progress=False, log=lambda _m: None, weight_rounding=stage.weight_rounding,
                       gptq_damp=stage.gptq_damp)
        wall = time.monotonic() - t0
    finally:
        S.stack_equal_lengths = stack  # type: ignore[assignment]
        for mod, name, orig in saved:
            setattr(mod, name, orig)
    mp = res.record.get("mixed_precision", {})
    return {"batched": batched, "wall_s": round(wall, 1), "phases_s": {k: round(v, 1) for k, v in phases.items()},
            "simulated_passes": res.record.get("simulated_passes"), "calibration": label,
            "alpha": res.alpha, "alpha_kl": res.record.get("alpha_kl"),
            "kl_all_quantized": res.record.get("kl_all_quantized"),
            "kept_float": mp.get("kept_float"), "weight_share_float": mp.get("weight_share_float"),
            "kl_after": mp.get("kl"), "target_met": mp.get("met"), "sensitivity": mp.get("sensitivity")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_search.json")
    a = ap.parse_args()
    import os
    import platform

    import torch

    runs = [run_once(batched=False), run_once(batched=True)]
    one, batch = runs
    same = {k: one[k] == batch[k] for k in ("alpha", "alpha_kl", "kl_all_quantized", "kept_float", "kl_after",
                                            "sensitivity")}
    doc = {"benchmark": "bench_int8_search", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "model": "SmolLM2-135M-Instruct (bundled)", "recipe": "w8a8-int8 (built-in)",
           "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "processor": platform.processor() or platform.machine()},
           "runs": [{k: v for k, v in r.items() if k != "sensitivity"} for r in runs],
           "identical_decisions": same,
           "batched_over_one_at_a_time_wall": round(batch["wall_s"] / one["wall_s"], 3)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"one at a time {one['wall_s']} s, batched {batch['wall_s']} s "
          f"({doc['batched_over_one_at_a_time_wall']}x); identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
