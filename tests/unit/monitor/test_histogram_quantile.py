"""histogram_quantile against hand-computed values and Prometheus's edge cases (promql/quantile.go)."""
from __future__ import annotations

import math

import pytest

from packager.monitor.scrape import histogram_quantile

INF = math.inf
# 100 observations: 10 in (0, 0.1], 40 in (0.1, 0.5], 30 in (0.5, 1], 15 in (1, 2], 5 above 2.
B = [(0.1, 10), (0.5, 50), (1.0, 80), (2.0, 95), (INF, 100)]


@pytest.mark.parametrize("q,expected", [
    (0.05, 0.05),                       # rank 5 in the first bucket: 0 + 0.1 * 5/10
    (0.10, 0.1),                        # rank 10: top of the first bucket
    (0.30, 0.1 + 0.4 * (30 - 10) / 40),  # 0.3
    (0.50, 0.5),                        # rank 50: top of the second bucket
    (0.60, 0.5 + 0.5 * (60 - 50) / 30),  # 0.6667
    (0.90, 1.0 + 1.0 * (90 - 80) / 15),  # 1.6667
    (0.95, 2.0),                        # rank 95: top of the last finite bucket
    (0.99, 2.0),                        # rank 99 falls in +Inf: the largest finite bound
    (1.00, 2.0),
    (0.0, 0.0),                         # rank 0: bottom of the first bucket
])
def test_hand_computed(q, expected):
    assert histogram_quantile(q, B) == pytest.approx(expected, abs=1e-12)


def test_order_of_buckets_does_not_matter():
    assert histogram_quantile(0.6, list(reversed(B))) == pytest.approx(0.5 + 0.5 / 3)


def test_same_bound_twice_is_summed():
    # two series' buckets given unsummed: the same as their sum by (le)
    two = [(1.0, 3), (INF, 4), (1.0, 5), (INF, 6)]
    assert histogram_quantile(0.5, two) == histogram_quantile(0.5, [(1.0, 8), (INF, 10)]) == pytest.approx(0.625)


def test_non_monotonic_counts_are_raised():
    # 1.0 bucket (7) lower than 0.5 bucket (8): treated as 8, like Prometheus's ensureMonotonic
    assert histogram_quantile(0.5, [(0.5, 8), (1.0, 7), (INF, 10)]) == pytest.approx(0.5 * 5 / 8)


def test_q_outside_0_1_and_nan():
    assert histogram_quantile(-0.1, B) == -INF
    assert histogram_quantile(1.1, B) == INF
    assert math.isnan(histogram_quantile(float("nan"), B))


@pytest.mark.parametrize("buckets", [
    [],                               # nothing
    [(INF, 5)],                       # fewer than two buckets
    [(0.1, 1), (1.0, 5)],             # no +Inf bucket
    [(0.1, 0), (1.0, 0), (INF, 0)],   # no observation
])
def test_nan_cases(buckets):
    assert math.isnan(histogram_quantile(0.5, buckets))


def test_q0_with_empty_first_bucket_is_nan_like_prometheus():
    assert math.isnan(histogram_quantile(0.0, [(0.1, 0), (1.0, 4), (INF, 4)]))


def test_negative_first_bound_is_returned_as_is():
    assert histogram_quantile(0.1, [(-1.0, 5), (0.0, 8), (INF, 10)]) == -1.0


def test_all_observations_above_the_last_finite_bound():
    assert histogram_quantile(0.5, [(0.1, 0), (0.5, 0), (INF, 7)]) == 0.5
