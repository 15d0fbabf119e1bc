"""The fidelity reading that stops once the KL verdict is settled (packager.evaluate.sequential): the statistic,
its error rate on simulated corpora, and the reading itself through teacher_forced_fidelity with a fake top-k."""
from __future__ import annotations

import math
import random

import pytest

from packager.evaluate.fidelity import ItemResult, kl_topk, teacher_forced_fidelity
from packager.evaluate.sequential import KLStop, look, reading_order


def _answers(rng: random.Random, n: int, mean: float) -> list[tuple[float, int]]:
    """n answers of 8-32 positions whose per-position KLs are exponential (heavy enough) with this mean."""
    out = []
    for _ in range(n):
        k = rng.randint(8, 32)
        scale = mean * rng.lognormvariate(0, 0.8) / math.exp(0.32)  # answers differ; the mean stays `mean`
        out.append((sum(rng.expovariate(1 / scale) for _ in range(k)), k))
    return out


def test_look_settles_on_the_right_side_and_only_after_the_minimum():
    rng = random.Random(1)
    stop = KLStop(limit=0.01)
    high, low = _answers(rng, 150, 0.05), _answers(rng, 150, 0.002)
    assert look(high[:99], 557, stop).settled is None  # fewer than min_answers
    assert look(high[:100], 557, stop).settled == "above"
    assert look(low[:100], 557, stop).settled == "below"
    near = look(_answers(rng, 150, 0.01), 557, stop)
    assert near.settled is None and near.mean_kl - near.half_width <= 0.01 <= near.mean_kl + near.half_width
    exact = look(high, len(high), stop)  # every answer read: no sampling error left
    assert exact.half_width == 0 and exact.mean_kl == pytest.approx(sum(s for s, _ in high) / sum(n for _, n in high))


def test_looks_at_every_chunk_rarely_settle_on_the_wrong_side():
    """500 simulated corpora of 557 answers whose true mean KL is 10% off the limit on either side, read in chunks
    of 50 as the reading does: a wrong-side verdict stays rare, and corpora far from the limit settle early."""
    rng = random.Random(7)
    stop = KLStop(limit=0.006)
    wrong = 0
    read_when_far: list[int] = []
    for trial in range(500):
        truth = stop.limit * (1.1 if trial % 2 else 0.9)
        rows = _answers(rng, 557, truth)
        true_mean = sum(s for s, _ in rows) / sum(n for _, n in rows)
        for end in range(100, 557, 50):
            lk = look(rows[:end], 557, stop)
            if lk.settled:
                wrong += (lk.settled == "above") != (true_mean > stop.limit)
                break
        far = _answers(rng, 557, stop.limit * (4 if trial % 2 else 0.25))
        read_when_far.append(next((e for e in range(100, 557, 50) if look(far[:e], 557, stop).settled), 557))
    assert wrong <= 10  # 2% of 500
    assert max(read_when_far) <= 150


def test_reading_order_is_a_seeded_permutation():
    xs = list(range(100))
    assert reading_order(xs) == reading_order(xs) and sorted(reading_order(xs)) == xs and reading_order(xs) != xs


def _baseline(n: int) -> dict[str, ItemResult]:
    top = {"1": math.log(0.7), "2": math.log(0.2), "3": math.log(0.1)}
    return {f"p{i}": ItemResult(id=f"p{i}", tags=[], scorer="none", output="", score=0.0, latency_s=0.0,
                                prompt_token_ids=[5, 6], output_token_ids=[1] * 10, topk_logprobs=[top] * 10)
            for i in range(n)}


def _topk(probs: tuple[float, float, float]):
    q = {"1": math.log(probs[0]), "2": math.log(probs[1]), "3": math.log(probs[2])}
    calls = []

    def read(prompt_ids, output_ids, k, max_positions):
        calls.append(1)
        return [q] * max_positions
    return read, calls


@pytest.mark.parametrize("probs, side", [((0.3, 0.5, 0.2), "above"), ((0.7, 0.2, 0.1), "below")])
def test_the_reading_stops_once_settled(probs, side):
    items = _baseline(300)
    read, calls = _topk(probs)
    per_position = kl_topk(items["p0"].topk_logprobs[0], read([], [], 3, 1)[0])
    f = teacher_forced_fidelity(items, None, "m", 3, 4, topk_fn=read, stop=KLStop(limit=0.01))  # type: ignore
    assert f.answers == 100 and f.answers_planned == 300 and len(calls) == 101
    assert f.positions == 1000 and f.mean_kl == pytest.approx(per_position)
    assert f.stopped_early is not None and f"{side} the limit 0.01" in f.stopped_early and "100 of 300" in f.stopped_early
    assert f.settled == side


def test_without_a_stop_or_near_the_limit_every_answer_is_read():
    items = _baseline(300)
    for i, it in enumerate(items.values()):
        it.prompt_token_ids = [i % 3]
    qs = [{"1": math.log(a), "2": math.log(b), "3": math.log(c)}
          for a, b, c in ((0.3, 0.5, 0.2), (0.6, 0.3, 0.1), (0.5, 0.25, 0.25))]

    def read(prompt_ids, output_ids, k, max_positions):  # three kinds of answer, each its own KL
        return [qs[prompt_ids[0]]] * max_positions

    full = teacher_forced_fidelity(items, None, "m", 3, 4, topk_fn=read)  # type: ignore[arg-type]
    assert full.answers == 300 and full.stopped_early is None
    at = teacher_forced_fidelity(items, None, "m", 3, 4, topk_fn=read,  # type: ignore[arg-type]
                                 stop=KLStop(limit=full.mean_kl))
    assert full.settled is None and at.settled is None
    assert at.answers == 300 and at.stopped_early is None and at.mean_kl == pytest.approx(full.mean_kl)
