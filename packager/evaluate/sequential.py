"""Reading a fidelity corpus only as far as the KL verdict needs: a sequential test of the mean KL against a limit.

Each answer read teacher-forced gives the sum of its positions' KLs and its number of positions; the corpus's mean
KL is the ratio of the two totals. The answers are read in a seeded random order, so every prefix of the reading
is a simple random sample of the corpus, and after each chunk the ratio's standard error is taken by linearization
(the answers are the sampling unit: positions within an answer are not independent), with the finite-population
correction for the share already read. Reading stops once the mean lies `z` standard errors above or below the
limit, after at least `min_answers` answers: the verdict of the gate's KL test is then settled, and the rest of
the corpus would only sharpen a figure on the settled side. z = 3 (two-sided 0.27% at one look) leaves room for
the repeated looks: with at most a dozen of them the chance that any look settles on the wrong side stays near 2%
where the true mean sits exactly at the limit, and falls off fast away from it. Variants near the limit read the
whole corpus.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class KLStop:
    limit: float  # the gate's KL limit
    z: float = 3.0
    min_answers: int = 100
    chunk: int = 50  # answers read between two looks


@dataclass(frozen=True)
class Look:
    answers: int
    mean_kl: float
    half_width: float  # z standard errors
    settled: str | None  # "above" / "below" the limit, or None


def reading_order(items: list[T], seed: int = 0) -> list[T]:
    """The corpus in a seeded random order: every prefix a random sample, the same order on every run."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def look(per_answer: list[tuple[float, int]], total_answers: int, stop: KLStop) -> Look:
    """The mean KL of the answers read so far ((sum of KLs, positions) each), its z-standard-error half width, and
    which side of the limit it has settled on (None: not yet, or too few answers)."""
    rows = [(s, n) for s, n in per_answer if n > 0]
    k = len(rows)
    if k == 0:
        return Look(0, 0.0, math.inf, None)
    positions = sum(n for _, n in rows)
    mean = sum(s for s, _ in rows) / positions
    if k < 2:
        return Look(k, mean, math.inf, None)
    nbar = positions / k
    resid = sum((s - mean * n) ** 2 for s, n in rows) / (k - 1)
    fpc = max(0.0, 1.0 - k / total_answers) if total_answers > 0 else 1.0
    half = stop.z * math.sqrt(resid / k * fpc) / nbar
    settled = None
    if k >= min(stop.min_answers, total_answers):
        if mean - half > stop.limit:
            settled = "above"
        elif mean + half < stop.limit:
            settled = "below"
    return Look(k, mean, half, settled)
