"""How sure a task score is: paired bootstrap confidence intervals and a paired test against the baseline.

The unit is the suite item. A variant and its baseline answer the same items, so their scores are paired: each
bootstrap resample draws items with replacement (the same draw for both) and recomputes the variant's score,
the baseline's score and their ratio, the recovery. The 2.5th and 97.5th percentiles of the resampled figures
are the 95% interval (percentile bootstrap, Efron & Tibshirani 1993). Category scores are resampled within their
category's items.

The paired test asks whether the variant scores differently from the baseline at all: a sign-flip permutation
test on the per-item differences (under "no difference" each difference is as likely negated), two-sided,
Monte Carlo with the same number of draws. Its p-value is the share of flipped mean differences at least as far
from zero as the observed one (with the observed one counted, so it is never 0).

Everything is seeded: the same items give the same intervals on every run and machine.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import BaseModel, Field

N_RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 20261203


class Interval(BaseModel):
    """A point estimate and its confidence interval."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


class PairedStats(BaseModel):
    """Intervals of a variant's task score (and, against a baseline, of its recovery), per category too."""

    confidence: float = CONFIDENCE
    resamples: int = N_RESAMPLES
    n_items: int
    score: Interval
    by_category: dict[str, Interval] = Field(default_factory=dict)
    baseline_score: Interval | None = None
    recovery: Interval | None = None
    score_difference: Interval | None = None  # variant - baseline, in score units
    p_value: float | None = None  # sign-flip permutation test: "scores like the baseline"


def _interval(value: float, samples: np.ndarray, confidence: float) -> Interval:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return Interval(value=value, low=value, high=value)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return Interval(value=value, low=float(min(lo, value)), high=float(max(hi, value)))


def _mean_resamples(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return x[idx].mean(axis=1)


def bootstrap_stats(scores: Sequence[float], categories: Sequence[str],
                    baseline_scores: Sequence[float] | None = None, *, resamples: int = N_RESAMPLES,
                    confidence: float = CONFIDENCE, seed: int = SEED) -> PairedStats:
    """Intervals of the mean score (and per category); given the baseline's scores of the same items (same order),
    also of the baseline's score, the recovery and the difference, and the paired test's p-value."""
    x = np.asarray(scores, dtype=float)
    n = x.size
    if n == 0:
        raise ValueError("no scored items")
    if len(categories) != n:
        raise ValueError("one category per item")
    if baseline_scores is not None and len(baseline_scores) != n:
        raise ValueError("the baseline's scores must pair with the variant's, item by item")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    stats = PairedStats(confidence=confidence, resamples=resamples, n_items=n,
                        score=_interval(float(x.mean()), _mean_resamples(x, idx), confidence))
    cats = np.asarray(categories)
    for c in sorted(set(categories)):
        xc = x[cats == c]
        cidx = rng.integers(0, xc.size, size=(resamples, xc.size))
        stats.by_category[c] = _interval(float(xc.mean()), _mean_resamples(xc, cidx), confidence)
    if baseline_scores is None:
        return stats
    b = np.asarray(baseline_scores, dtype=float)
    xs, bs = _mean_resamples(x, idx), _mean_resamples(b, idx)
    stats.baseline_score = _interval(float(b.mean()), bs, confidence)
    d = x - b
    stats.score_difference = _interval(float(d.mean()), xs - bs, confidence)
    if b.mean() > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(bs > 0, xs / np.where(bs > 0, bs, 1.0), np.nan)
        stats.recovery = _interval(float(x.mean() / b.mean()), ratios, confidence)
    stats.p_value = sign_flip_p_value(d, resamples=resamples, seed=seed)
    return stats


def sign_flip_p_value(differences: np.ndarray, *, resamples: int = N_RESAMPLES, seed: int = SEED) -> float:
    """Two-sided Monte Carlo sign-flip test of "the mean difference is 0"; 1.0 when every difference is 0."""
    d = np.asarray(differences, dtype=float)
    observed = abs(d.mean())
    if not np.any(d):
        return 1.0
    rng = np.random.default_rng(seed + 1)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(resamples, d.size))
    flipped = np.abs((signs * d).mean(axis=1))
    return float((1 + np.count_nonzero(flipped >= observed - 1e-12)) / (resamples + 1))

