"""The bootstrap behind `packager compare` (packager.report.compare): percentile intervals of the difference
B - A of two runs' latencies, resampling requests (or whole requests' ITL gaps, a cluster bootstrap) with
replacement, independently in each run, seeded and bounded in work. See compare's module doc for when an
interval is given."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

N_RESAMPLES = 1000
MIN_RESAMPLES = 200
SEED = 20261203
CONFIDENCE = 0.95
SMALL_SAMPLE = 1000  # up to this many values, all resamples are drawn in one array
WORK_LIMIT = 200_000_000  # resampled values per side and metric: bounds the bootstrap's time (seconds)
EXPECTED_BEYOND = 5  # values expected beyond a percentile for it to get an interval
QUANTILES = (50, 95, 99)


# ----------------------------------------------------------------------------------------------- the bootstrap
@dataclass
class Sample:
    """Per-request values of one latency figure: `values` with the request (cluster) each came from."""

    values: np.ndarray
    clusters: np.ndarray
    n_clusters: int
    source: str

    @classmethod
    def of(cls, values: Sequence[float], source: str) -> "Sample":
        v = np.asarray(values, dtype=float)
        return cls(v, np.arange(v.size), int(v.size), source)

    @classmethod
    def clustered(cls, groups: Sequence[Sequence[float]], source: str) -> "Sample":
        groups = [g for g in groups if len(g)]
        v = np.asarray([x for g in groups for x in g], dtype=float)
        c = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
        return cls(v, c, len(groups), source)


def min_values(q: float) -> int:
    """Values needed for a q-th percentile interval: EXPECTED_BEYOND expected beyond it, and 10 at least."""
    return max(10, math.ceil(EXPECTED_BEYOND / (1 - q / 100) - 1e-9))


def point_percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q))


def resampled_percentiles(s: Sample, qs: Sequence[float], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, len(qs)) percentiles of cluster-bootstrap resamples: clusters drawn with replacement, every
    value of a drawn cluster counted once per draw; linear interpolation (numpy's default) over the result.
    A resample that drew no value at all (clusters may be empty of values) gives NaN."""
    order = np.argsort(s.values, kind="stable")
    v, c = s.values[order], s.clusters[order]
    q = np.asarray(qs, dtype=float) / 100.0
    out = np.full((resamples, len(qs)), np.nan)
    if v.size == 0:
        return out
    counts = rng.multinomial(s.n_clusters, np.full(s.n_clusters, 1.0 / s.n_clusters), size=resamples)
    if v.size > SMALL_SAMPLE:  # one resample at a time: two passes over the values each
        for i in range(resamples):
            cum = np.cumsum(counts[i][c])
            total = int(cum[-1])
            if total == 0:
                continue
            pos = (total - 1) * q
            lo = np.floor(pos)
            hi = np.minimum(lo + 1, total - 1)
            # the value at rank k is the first whose cumulative count exceeds k
            i_lo = np.searchsorted(cum, lo, side="right")
            i_hi = np.searchsorted(cum, hi, side="right")
            out[i] = v[i_lo] + (v[i_hi] - v[i_lo]) * (pos - lo)
        return out
    # small samples: every resample at once
    ranks = np.cumsum(counts[:, c], axis=1)  # (resamples, values): cumulative counts in each resample
    totals = ranks[:, -1]
    at = (np.maximum(totals, 1) - 1)[:, None] * q[None, :]
    below = np.floor(at)
    above = np.minimum(below + 1, np.maximum(totals, 1)[:, None] - 1)
    j_lo = np.stack([(ranks <= below[:, j:j + 1]).sum(axis=1) for j in range(len(qs))], axis=1).clip(0, v.size - 1)
    j_hi = np.stack([(ranks <= above[:, j:j + 1]).sum(axis=1) for j in range(len(qs))], axis=1).clip(0, v.size - 1)
    got = v[j_lo] + (v[j_hi] - v[j_lo]) * (at - below)
    out[:] = np.where((totals > 0)[:, None], got, np.nan)
    return out


@dataclass
class Bootstrap:
    resamples: int = N_RESAMPLES
    seed: int = SEED
    calls: int = 0

    def rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def n_resamples(self, n_values: int) -> int:
        return min(self.resamples, max(MIN_RESAMPLES, WORK_LIMIT // max(n_values, 1)))

    def percentile_differences(self, sa: Sample | None, sb: Sample | None, why_a: str, why_b: str,
                               stored_a: Sequence[float | None], stored_b: Sequence[float | None],
                               unit: str) -> list[tuple[bool | None, str, tuple[float, float] | None]]:
        """Per quantile of QUANTILES: (beyond noise, reason, 95% interval of B - A)."""
        self.calls += 1
        nq = len(QUANTILES)
        if sa is None or sb is None:
            if sa is None and sb is None and why_a == why_b:
                return [(None, f"no per-request values in either run ({why_a})", None)] * nq
            why = "; ".join(f"{s}: {w}" for s, w, x in (("A", why_a, sa), ("B", why_b, sb)) if x is None)
            return [(None, f"no per-request values ({why})", None)] * nq
        biggest = max(sa.values.size, sb.values.size)
        if biggest * MIN_RESAMPLES > WORK_LIMIT:
            return [(None, f"{biggest} values: too many for a bootstrap in bounded time", None)] * nq
        out: list[tuple[bool | None, str, tuple[float, float] | None]] = [(None, "", None)] * nq
        todo = []
        for j, q in enumerate(QUANTILES):
            need = min_values(q)
            small = [f"{side} has {s.n_clusters} requests" if s.n_clusters < 10 else
                     f"{side} has {s.values.size} values" for side, s in (("A", sa), ("B", sb))
                     if s.values.size < need or s.n_clusters < 10]
            if small:
                out[j] = (None, f"too few values for a p{q} interval ({', '.join(small)}; {need} needed)", None)
                continue
            bad = [f"{side}'s {s.source} gives {point_percentile(s.values, q):.6g}, the run stored {st:.6g}"
                   for side, s, st in (("A", sa, stored_a[j]), ("B", sb, stored_b[j]))
                   if st is not None and s.source == "records.jsonl"
                   and not math.isclose(point_percentile(s.values, q), st, rel_tol=1e-6, abs_tol=1e-6)]
            if bad:
                out[j] = (None, "the records do not reproduce the stored figure (" + "; ".join(bad) + ")", None)
                continue
            todo.append(j)
        if not todo:
            return out
        qs = [QUANTILES[j] for j in todo]
        ra = self.n_resamples(sa.values.size)
        rb = self.n_resamples(sb.values.size)
        r = min(ra, rb)
        pa = resampled_percentiles(sa, qs, r, self.rng(self.calls, 0))
        pb = resampled_percentiles(sb, qs, r, self.rng(self.calls, 1))
        tail = (1 - CONFIDENCE) / 2 * 100
        src = sa.source if sa.source == sb.source else f"A: {sa.source}, B: {sb.source}"
        for k, j in enumerate(todo):
            d = pb[:, k] - pa[:, k]
            d = d[np.isfinite(d)]
            if d.size < max(10, r // 2):
                out[j] = (None, "too few usable resamples", None)
                continue
            lo, hi = (float(x) for x in np.percentile(d, [tail, 100 - tail]))
            beyond = lo > 0 or hi < 0
            words = "excludes 0: beyond noise" if beyond else "includes 0: within noise"
            fewer = f"; {r} resamples" if r != self.resamples else ""
            out[j] = (beyond, f"95% bootstrap interval of B − A [{lo:+.4g}, {hi:+.4g}] {unit} {words} "
                              f"(from {src}{fewer})", (lo, hi))
        return out
