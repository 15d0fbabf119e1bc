"""Summarize a finished `packager release` run directory into benchmarks/results/ (no machine paths).

    python benchmarks/release_summary.py runs/latest --out benchmarks/results/release_cpu_default.json \
        [--wall-s SECONDS] [--estimated-min MINUTES] [--note TEXT]

Keeps, per variant: quality (score, recovery with its interval, fidelity beside the noise floor, the gate's
verdict), the engine and its searched arguments, load (capacity at the SLO, tokens/s, price), and the step
timings; plus the recommendation, the up-front estimate against the measured total, and the versions."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

_KEEP = ("name", "recipe", "is_baseline", "engine", "dtype", "size_bytes", "compression_wall_time_s", "score",
         "score_ci", "recovery", "recovery_ci", "p_value", "perplexity", "fidelity_mean_kl", "fidelity_p95_kl",
         "fidelity_top1_agreement", "fidelity_prefix_match_mean", "fidelity_source", "meets_quality_floor",
         "meets_slo", "errors")


def _engine_search(es: dict[str, Any] | None) -> dict[str, Any] | None:
    if not es:
        return None
    return {"load": es.get("load"), "probe_duration_s": es.get("probe_duration_s"),
            "warmup_s": es.get("warmup_s", 0.0), "wall_s": es.get("wall_s"), "reason": es.get("reason"),
            "reused_from": es.get("reused_from"),
            "chosen": (es.get("chosen") or {}).get("label") if isinstance(es.get("chosen"), dict) else es.get("chosen"),
            "trials": [{"label": t["candidate"].get("label"), "output_tokens_per_s": t.get("output_tokens_per_s"),
                        "ttft_ms_p95": t.get("ttft_ms_p95"), "meets_slo": t.get("meets_slo"),
                        "error": t.get("error")} for t in es.get("trials", [])]}


def _load(load: dict[str, Any] | None) -> dict[str, Any] | None:
    if not load:
        return None
    keep = ("max_load_meeting_slo", "output_tokens_per_s", "ttft_ms_p95", "tpot_ms_p95", "usd_per_hour",
            "usd_per_million_output_tokens", "slo_attainment_fraction", "knee_resolved")
    return {k: load[k] for k in keep if k in load}


def _no_paths(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _no_paths(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_paths(v) for v in obj]
    if isinstance(obj, str):
        return re.sub(r"(/[\w.+-]+){2,}", "<path>", obj)
    return obj


def summarize(run_dir: Path, wall_s: float | None, note: str | None,
              estimated_min: float | None = None) -> dict[str, Any]:
    report = json.loads((run_dir / "report.json").read_text())
    variants = []
    for v in report["variants"]:
        row = {k: v.get(k) for k in _KEEP}
        row["engine_search"] = _engine_search(v.get("engine_search"))
        row["load"] = _load(v.get("load"))
        row["gate_verdict"] = report["recommendation"].get("rejected", {}).get(v["name"])
        variants.append(row)
    log = (run_dir / "packager.log").read_text(errors="replace") if (run_dir / "packager.log").exists() else ""
    est = re.search(r"estimated (\d+) min on this machine", log)
    return _no_paths({
        "benchmark": "a default `packager release` on the bundled model (release_summary.py)",
        "model": report.get("model"), "created_at": report.get("created_at"),
        "estimated_min": estimated_min if estimated_min is not None else (int(est.group(1)) if est else None),
        "measured_wall_s": wall_s, "timings_s": report.get("timings_s"),
        "time_budget_s": report.get("time_budget_s"), "gate": report.get("gate"),
        "noise_floor": report.get("noise_floor"), "baseline": report.get("baseline"),
        "slo": report.get("slo"), "recommendation": {k: report["recommendation"].get(k)
                                                     for k in ("variant", "reason", "rejected")},
        "variants": variants, "versions": report.get("versions"), "platform": report.get("platform"),
        "notes": report.get("notes"), "note": note,
    })


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--wall-s", type=float, default=None, help="the release's wall time as measured outside it")
    ap.add_argument("--note", default=None)
    ap.add_argument("--estimated-min", type=float, default=None, help="the release's up-front estimate, as it "
                    "printed it (when its log is not in the run directory)")
    a = ap.parse_args(argv)
    a.out.write_text(json.dumps(summarize(a.run_dir, a.wall_s, a.note, a.estimated_min), indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
