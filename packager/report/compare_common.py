"""What both kinds of `packager compare` share: the input read (RunInput), a load test's per-request records
(read_records, phase_samples), the latency-percentile rows with their bootstrap intervals (latency_rows), and the
environment differences (env_differences, cap_env).

packager.report.compare (inputs, load tests) and packager.report.compare_release (releases) import this module;
it imports neither of them."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from packager.core.formatting import DASH
from packager.fsutil import iter_record_file
from packager.report.compare_model import EnvDiff, Kind, Row, make_row
from packager.report.compare_stats import QUANTILES, Bootstrap, Sample

LATENCIES = (("TTFT", "ttft"), ("TPOT", "tpot"), ("ITL", "itl"), ("E2E", "e2e"))
MAX_ENV = 40
LATENCY_NOTE = (
    "Latency percentiles: 95% bootstrap interval of B − A from per-request values (requests resampled with "
    "replacement, seeded); beyond noise when it excludes 0. Each interval is 95% on its own: among many rows, "
    "about one in twenty excludes 0 by chance."
)


@dataclass
class RunInput:
    """One side of a comparison, as packager.report.compare.detect_run found it."""

    kind: Kind
    json_path: Path
    data: Any  # LoadTestResult | Report

    @property
    def root(self) -> Path:
        return self.json_path.parent


# --------------------------------------------------------------------------------------------- latency rows
def latency_rows(stored_a: dict[str, list[float | None]], stored_b: dict[str, list[float | None]],
                 samples_a: dict[str, Sample], samples_b: dict[str, Sample], why_a: str, why_b: str,
                 boot: Bootstrap, cache_key: tuple | None, cache: dict) -> list[Row]:
    """TTFT, TPOT, ITL and E2E at each of QUANTILES: the stored percentiles of A and B, with the bootstrap's
    verdict from the per-request samples (cached under cache_key, when given, for phases compared twice)."""
    rows = []
    for name, key in LATENCIES:
        if all(x is None for x in stored_a[key] + stored_b[key]):
            continue
        ck = (cache_key, key)
        if cache_key is None or ck not in cache:
            cache[ck] = boot.percentile_differences(samples_a.get(key), samples_b.get(key), why_a, why_b,
                                                    stored_a[key], stored_b[key], "ms")
        for j, q in enumerate(QUANTILES):
            if stored_a[key][j] is None and stored_b[key][j] is None:
                continue
            beyond, reason, interval = cache[ck][j]
            rows.append(make_row(f"{name} p{q}", stored_a[key][j], stored_b[key][j], fmt="ms", unit="ms",
                                 better="lower", beyond_noise=beyond, reason=reason, interval=interval))
    return rows


# ------------------------------------------------------------------------------------------- request records
@dataclass
class Records:
    """The per-request values of a load test's records.jsonl, by phase index."""

    path: Path
    by_phase: dict[int, list[dict]] = field(default_factory=dict)
    starts: dict[int, list[float]] = field(default_factory=dict)
    present: bool = False


def read_records(path: Path) -> Records:
    rec = Records(path, present=path.is_file())
    for r in iter_record_file(path):
        t, k = r.get("type"), r.get("phase")
        if not isinstance(k, int):
            continue
        if t == "request":
            rec.by_phase.setdefault(k, []).append(r)
        elif t == "phase_summary" and r.get("start_unix") is not None:
            rec.starts.setdefault(k, []).append(float(r["start_unix"]))
    return rec


def phase_samples(rec: Records, index: int, warmup_s: float) -> dict[str, Sample]:
    """TTFT, TPOT, E2E (one value per successful request) and ITL (gaps, clustered by request) of one phase, the
    requests chosen as packager.loadtest.metrics.summarize_phase chooses them (warm-up left out)."""
    from packager.loadtest.metrics import tpot_ms

    reqs = rec.by_phase.get(index, [])
    if not reqs:
        return {}
    starts = rec.starts.get(index) or []
    t0 = min(starts) if starts else min(float(r.get("t_start_unix") or 0.0) for r in reqs)
    if warmup_s > 0:
        reqs = [r for r in reqs if float(r.get("t_start_unix") or 0.0) >= t0 + warmup_s]
    ok = [r for r in reqs if r.get("ok")]
    src = "records.jsonl"
    tpots = [tpot_ms(r.get("e2e_ms"), r.get("ttft_ms"), r.get("output_tokens")) for r in ok]
    return {
        "ttft": Sample.of([float(r["ttft_ms"]) for r in ok if r.get("ttft_ms") is not None], src),
        "tpot": Sample.of([float(t) for t in tpots if t is not None], src),
        "e2e": Sample.of([float(r["e2e_ms"]) for r in ok if r.get("e2e_ms") is not None], src),
        "itl": Sample.clustered([[float(g) for g in (r.get("itl_ms") or ())] for r in ok], src),
    }


# --------------------------------------------------------------------------------------------- the environment
def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": "1", "c": "[1, 2]"}."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        if not d and prefix:
            out[prefix[:-1]] = "{}"
        return out
    out[prefix[:-1]] = json.dumps(d, sort_keys=True, default=str) if isinstance(d, (list, tuple)) else str(d)
    return out


def env_differences(a: dict[str, Any], b: dict[str, Any], skip: Iterable[str] = ()) -> list[EnvDiff]:
    fa, fb = flatten(a), flatten(b)
    skip = tuple(skip)
    out = []
    for k in sorted(fa.keys() | fb.keys()):
        if skip and k.startswith(skip):
            continue
        va, vb = fa.get(k, DASH), fb.get(k, DASH)
        if va != vb:
            out.append(EnvDiff(key=k, a=va, b=vb))
    return out


def cap_env(diffs: list[EnvDiff]) -> list[EnvDiff]:
    """At most MAX_ENV differences, then one line saying how many more there were."""
    if len(diffs) <= MAX_ENV:
        return diffs
    return diffs[:MAX_ENV] + [EnvDiff(key=f"... and {len(diffs) - MAX_ENV} more", a="", b="")]
