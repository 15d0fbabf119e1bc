"""Bootstrap intervals and the paired test (packager.evaluate.stats)."""
from __future__ import annotations

import numpy as np
import pytest

from packager.evaluate.stats import PairedStats, bootstrap_stats, sign_flip_p_value
from packager.report.model import VariantResult
from packager.report.quality_gate import suite_too_small


def test_a_variant_that_answers_like_the_baseline_has_a_point_interval_and_p_1():
    scores = [1.0, 0.0, 1.0, 1.0, 0.5] * 8
    st = bootstrap_stats(scores, ["a", "b"] * 20, scores)
    assert st.recovery is not None and (st.recovery.low, st.recovery.value, st.recovery.high) == (1.0, 1.0, 1.0)
    assert st.score_difference is not None and st.score_difference.half_width == 0.0
    assert st.p_value == 1.0 and st.n_items == 40


def test_intervals_contain_the_estimate_and_shrink_with_more_items():
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 400):
        base = (rng.random(n) < 0.6).astype(float)
        var = np.where(rng.random(n) < 0.1, 1 - base, base)  # 10% of answers flip
        st = bootstrap_stats(var.tolist(), ["x"] * n, base.tolist())
        for iv in (st.score, st.baseline_score, st.recovery, st.score_difference, st.by_category["x"]):
            assert iv is not None and iv.low <= iv.value <= iv.high
        assert st.recovery is not None
        assert st.recovery.value == pytest.approx(var.mean() / base.mean())
        widths.append(st.recovery.half_width)
    assert widths[1] < widths[0]


def test_same_items_same_intervals():
    a = bootstrap_stats([1, 0, 1, 1, 0, 1], list("aabbcc"), [1, 1, 1, 0, 0, 1])
    b = bootstrap_stats([1, 0, 1, 1, 0, 1], list("aabbcc"), [1, 1, 1, 0, 0, 1])
    assert a == b and set(a.by_category) == {"a", "b", "c"}


def test_a_clear_loss_is_significant_and_excludes_full_recovery():
    base = [1.0] * 60
    var = [1.0] * 30 + [0.0] * 30
    st = bootstrap_stats(var, ["t"] * 60, base)
    assert st.recovery is not None and st.recovery.high < 1.0 and st.recovery.value == 0.5
    assert st.p_value is not None and st.p_value < 0.01


def test_sign_flip_p_value_is_never_zero_and_symmetric():
    d = np.array([1.0] * 10 + [-1.0] * 10)
    assert sign_flip_p_value(d) > 0.5  # no mean difference
    assert 0 < sign_flip_p_value(np.ones(30)) < 0.01
    assert sign_flip_p_value(np.ones(30)) == sign_flip_p_value(-np.ones(30))


def test_bad_input():
    with pytest.raises(ValueError, match="no scored items"):
        bootstrap_stats([], [])
    with pytest.raises(ValueError, match="pair"):
        bootstrap_stats([1.0, 0.0], ["a", "a"], [1.0])
    with pytest.raises(ValueError, match="category"):
        bootstrap_stats([1.0, 0.0], ["a"])


def test_small_suite_warning():
    base = [1.0, 0.0] * 10
    var = [1.0, 0.0] * 8 + [0.0, 1.0] * 2  # same score, different items: a wide interval
    st = bootstrap_stats(var, ["t"] * 20, base)
    msg = suite_too_small(_row(st), 0.97)
    assert msg is not None and "too small" in msg and "20 items" in msg
    assert suite_too_small(_row(st), 0.2) is None
    assert suite_too_small(_row(bootstrap_stats(base, ["t"] * 20)), 0.97) is None  # no baseline: no recovery


def _row(st: PairedStats) -> VariantResult:
    """A report row carrying the intervals as the release puts them there (packager.release.steps)."""
    ci = (st.recovery.low, st.recovery.high) if st.recovery is not None else None
    return VariantResult(name="v", recipe="r", recovery=st.recovery.value if st.recovery else None, recovery_ci=ci,
                         eval={"n_items": st.n_items})
