"""Quality the recommendation can stand on: the noise floor, fidelity and recovery intervals of W8A8 recipes.

On the bundled SmolLM2-135M-Instruct, through the engine that serves each variant (vLLM; llama.cpp for the GGUF),
on the default task suite, one after the other in one run:

1. the baseline, scored on the suite, with its greedy answers to the fidelity corpus and their teacher-forced
   top-k logprobs;
2. its noise floor: the same baseline served in the other dtype, along those answers (packager.evaluate.noise_floor);
3. each variant: W8A8 round-to-nearest (benchmarks/recipes/w8a8-int8-rtn.yaml), the built-in w8a8-int8
   (accuracy-aware), gptq-w4a16 and gguf-q4_k_m; each scored against the baseline's items and answers
   (`--recipes` takes others, e.g. benchmarks/recipes/w8a8-int8-smoothquant*.yaml).

For every variant: recovery with its 95% paired bootstrap interval and the paired test's p-value, mean and p95 KL
(and their multiple of the noise floor), top-1 and greedy agreement, and the verdict of a release's default
quality gate (recovery >= 0.97, its lower bound >= 0.93, mean KL <= 15x the noise floor); the verdicts of rows kept
from earlier runs are judged again with the gate of this run. With --noise-floor-recovery, the baseline served in
the reference dtype (float32) is scored on the suite as a variant: the recovery interval of the same model, which
shows what the suite can resolve. Results: benchmarks/results/quality.json.

    flock /tmp/packager-heavy.lock .venv/bin/python benchmarks/bench_quality.py

A held-out check: `--suite FILE` scores another suite instead of the default one, and `--no-fidelity` leaves the
fidelity corpus and the noise floor out (they do not depend on the suite; quality.json has them), so the gate
judges recovery alone. With benchmarks/suites/heldout.jsonl (written apart from the default suite) it tells
whether a verdict reached on the default suite holds on tasks nobody tuned on:

    .venv/bin/python benchmarks/bench_quality.py --suite benchmarks/suites/heldout.jsonl --no-fidelity \
        --noise-floor-recovery --out benchmarks/results/quality_heldout.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPES = [str(ROOT / "benchmarks/recipes/w8a8-int8-rtn.yaml"), "w8a8-int8", "gptq-w4a16", "gguf-q4_k_m"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/quality.json"))
    ap.add_argument("--max-items", type=int, default=None)
    ap.add_argument("--suite", default="default", help="the task suite: default, or a JSONL suite file")
    ap.add_argument("--no-fidelity", action="store_true",
                    help="no fidelity corpus and no noise floor: the gate judges recovery alone")
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--recipes", nargs="*", default=None, help="recipes to run (default: all of RECIPES; none "
                                                                 "given: none, e.g. with --merge to judge kept rows)")
    ap.add_argument("--merge", action="store_true",
                    help="keep --out's noise floor (not measured again) and its other variants; rows of the "
                         "recipes run now replace rows of the same name, whose old values are kept as 'before'")
    ap.add_argument("--noise-floor-recovery", action="store_true",
                    help="also score the suite with the baseline served in the reference dtype, as a variant: the "
                         "recovery interval of a model that is the same as the baseline (what the suite resolves)")
    ap.add_argument("--reuse-baseline", action="store_true",
                    help="with --work and --merge: read the baseline's evaluation from <work>/baseline (written by an "
                         "earlier run of the same suite and corpus) instead of evaluating it again")
    a = ap.parse_args()

    from packager.compress.recipe import load_recipe, run_recipe
    from packager.config import RunConfig
    from packager.core.sources import ensure_default_model
    from packager.errors import HardwareError
    from packager.evaluate.noise_floor import NoiseFloor, measure_noise_floor, reference_dtype
    from packager.evaluate.runner import baseline_corpus_items, evaluate_model, load_items, load_summary
    from packager.hardware import serving_dtype
    from packager.report.model import VariantResult
    from packager.report.quality_gate import quality_failure, quality_gate

    work = Path(a.work or tempfile.mkdtemp(prefix="bench-quality-"))
    cfg = RunConfig.model_validate({"eval": {"perplexity": False, "max_items": a.max_items, "suite": a.suite,
                                             "behaviour_suite": None,
                                             **({"fidelity_corpus": None} if a.no_fidelity else {})},
                                    "engine": {"enforce_eager": True}})
    source = ensure_default_model()
    served = serving_dtype(cfg.engine.dtype, cfg.engine.target)
    t0 = time.monotonic()
    if a.reuse_baseline:
        if not (a.work and a.merge and (work / "baseline" / "summary.json").exists()):
            ap.error("--reuse-baseline needs --work with a finished baseline in <work>/baseline, and --merge")
        base = load_summary(work / "baseline")
    else:
        base = evaluate_model(source.path, cfg, out_dir=work / "baseline", name="baseline", show_progress=False)
    items = load_items(Path(str(base.items_path)))
    # fidelity is measured along the baseline's answers to the fidelity corpus; so is the noise floor
    corpus_items = baseline_corpus_items(base) or items
    base_s = time.monotonic() - t0
    old = json.loads(Path(a.out).read_text()) if a.merge else None
    nf: "NoiseFloor | None"
    if a.no_fidelity:
        nf, nf_s = None, None
    elif old is not None:
        nf = NoiseFloor.model_validate({k: v for k, v in old["noise_floor"].items()
                                        if k in NoiseFloor.model_fields})
        nf_s = old["noise_floor"].get("wall_s") or old["noise_floor"].get("measure_s_approx")
    else:
        t0 = time.monotonic()
        nf = measure_noise_floor(source.path, cfg, served, corpus_items, log_path=work / "noise_floor.log",
                                 max_items=cfg.gate.noise_floor_items)
        nf_s = time.monotonic() - t0
    if nf is not None:
        (work / "noise_floor.json").write_text(nf.model_dump_json(indent=2))  # kept: a stopped run loses nothing
    gate = quality_gate(cfg, nf.model_dump(mode="json") if nf is not None else None)
    out = {"model": source.name, "suite": base.suite, "items": base.n_items, "served_dtype": served,
           "baseline": {"score": base.score, "score_ci": [base.stats.score.low, base.stats.score.high]
                        if base.stats else None,
                        "wall_s": old["baseline"]["wall_s"] if a.reuse_baseline and old else round(base_s, 1),
                        "score_by_category": base.score_by_category,
                        "items_by_category": dict(Counter(r.tags[0] if r.tags else "untagged"
                                                          for r in items.values())),
                        "fidelity_source": base.fidelity_source, "fidelity_prompts": base.fidelity_prompts,
                        "fidelity_prompts_skipped": base.fidelity_prompts_skipped},
           "noise_floor": None if nf is None else {**(old["noise_floor"] if old else nf.model_dump(mode="json")),
                                                   "wall_s": round(nf_s, 1) if nf_s else None},
           "gate": {"floor": gate.floor, "use_lower_bound": gate.use_lower_bound,
                    "lower_bound_floor": gate.lower_bound_floor, "max_kl": gate.max_kl,
                    "max_kl_vs_noise": cfg.gate.max_kl_vs_noise},
           "variants": []}
    previous = {v["recipe"]: v for v in (old or {}).get("variants", [])}
    if old is not None:
        run_now = RECIPES if a.recipes is None else a.recipes
        out["earlier_run"] = old.get("earlier_run") or {
            "baseline": old["baseline"], "variants": [v for v in previous if v not in run_now],
            "note": "variants kept from an earlier run, and every 'before' entry, are relative to this baseline"}
    out["variants"] = [v for v in previous.values()]
    if old is not None and "noise_floor_recovery" in old:
        out["noise_floor_recovery"] = old["noise_floor_recovery"]
    if a.noise_floor_recovery:
        ref_dtype = nf.reference_dtype if nf is not None else reference_dtype(served)
        out["noise_floor_recovery"] = _same_model_recovery(source.path, cfg, ref_dtype, base, items, work)
        print(json.dumps({"noise_floor_recovery": out["noise_floor_recovery"]}), flush=True)
    _judge_again(out["variants"], gate)
    for r in RECIPES if a.recipes is None else a.recipes:
        recipe = load_recipe(r)
        t0 = time.monotonic()
        try:
            res = run_recipe(source, recipe, work / recipe.name / "stages", engine=cfg.engine, progress=False)
        except HardwareError as e:  # e.g. GPTQ on a CPU whose vLLM build has no kernel for it: said, not run
            out["refused"] = {**out.get("refused", {}), recipe.name: str(e)}
            print(json.dumps({"recipe": recipe.name, "refused": str(e)[:300]}), flush=True)
            continue
        comp_s = time.monotonic() - t0
        t0 = time.monotonic()
        s = evaluate_model(res.final_dir, cfg, out_dir=work / recipe.name / "eval", name=recipe.name,
                           baseline=base, baseline_items=items, show_progress=False)
        eval_s = time.monotonic() - t0
        st = s.stats
        vr = VariantResult(name=recipe.name, recipe=r, score=s.score, recovery=s.recovery,
                           recovery_ci=(st.recovery.low, st.recovery.high) if st and st.recovery else None,
                           fidelity_mean_kl=s.fidelity_mean_kl)
        why = quality_failure(vr, gate)
        row = {"recipe": recipe.name, "score": s.score, "recovery": s.recovery,
               "recovery_ci": list(vr.recovery_ci) if vr.recovery_ci else None,
               "p_value": st.p_value if st else None,
               "mean_kl": s.fidelity_mean_kl, "p95_kl": s.fidelity_p95_kl,
               "kl_vs_noise_floor": (s.fidelity_mean_kl / nf.mean_kl)
               if nf is not None and s.fidelity_mean_kl and nf.mean_kl else None,
               "top1_agreement": s.fidelity_top1_agreement, "greedy_agreement": s.fidelity_agreement,
               "prefix_match_mean": s.fidelity_prefix_match_mean, "prefix_match_share": s.fidelity_prefix_match_share,
               "fidelity_source": s.fidelity_source, "fidelity_prompts": s.fidelity_prompts,
               "score_by_category": s.score_by_category, "passes_gate": why is None, "gate_verdict": why,
               "compress_s": round(comp_s, 1), "evaluate_s": round(eval_s, 1), "notes": s.notes,
               "stage": res.stages[-1].report if res.stages else None}
        if recipe.name in previous:
            row["before"] = {k: v for k, v in previous[recipe.name].items() if k not in ("before", "stage")}
        out["variants"] = [v for v in out["variants"] if v["recipe"] != recipe.name] + [row]
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")  # after every variant
        print(json.dumps({k: row[k] for k in ("recipe", "recovery", "recovery_ci", "mean_kl", "kl_vs_noise_floor",
                                              "passes_gate")}), flush=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


def _same_model_recovery(model_dir, cfg, dtype: str, base, items, work: Path) -> dict:
    """The baseline served in `dtype`, scored on the suite against the baseline: a variant that is the same model."""
    from packager.evaluate.runner import evaluate_model

    t0 = time.monotonic()
    other = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"dtype": dtype})})
    s = evaluate_model(model_dir, other, out_dir=work / f"baseline-{dtype}", name=f"baseline-{dtype}",
                       baseline=base, baseline_items=items, show_progress=False)
    st = s.stats
    ci = [st.recovery.low, st.recovery.high] if st and st.recovery else None
    return {"dtype": dtype, "score": s.score, "recovery": s.recovery, "recovery_ci": ci,
            "half_width": (ci[1] - ci[0]) / 2 if ci else None, "p_value": st.p_value if st else None,
            "greedy_agreement": s.fidelity_agreement, "mean_kl": s.fidelity_mean_kl,
            "evaluate_s": round(time.monotonic() - t0, 1)}


def _judge_again(rows: list[dict], gate) -> None:
    """The gate's verdict on every row (kept ones too), from the recovery, interval and KL each row stores."""
    from packager.report.model import VariantResult
    from packager.report.quality_gate import quality_failure

    for row in rows:
        if row.get("recovery") is None:
            continue
        ci = row.get("recovery_ci")
        vr = VariantResult(name=row["recipe"], recipe=row["recipe"], score=row.get("score"), recovery=row["recovery"],
                           recovery_ci=tuple(ci) if ci else None, fidelity_mean_kl=row.get("mean_kl"))
        why = quality_failure(vr, gate)
        row["passes_gate"], row["gate_verdict"] = why is None, why


if __name__ == "__main__":
    main()
