"""Teacher-forced fidelity figures (mean and p95 KL, top-1 agreement) from an endpoint's prompt logprobs."""
from __future__ import annotations

import math

import pytest

from packager.evaluate.runner import ItemResult, kl_topk, teacher_forced_fidelity


class StubClient:
    """Answers /v1/completions with prompt logprobs: `shift` moves probability from the first token to the second
    at every position; `flip` makes the second token the most likely one."""

    def __init__(self, shift: float = 0.0, flip: bool = False):
        self.shift, self.flip = shift, flip

    def post(self, path, body):
        assert path == "/v1/completions" and body["prompt_logprobs"] == 2 and body["max_tokens"] == 1
        p = 0.3 if self.flip else 0.7 - self.shift
        pos = {"a": {"logprob": math.log(p)}, "b": {"logprob": math.log(1 - p - 0.05)}}
        return {"choices": [{"prompt_logprobs": [None] + [pos] * (len(body["prompt"]) - 1)}]}


def item(i: str, n_out: int = 4) -> ItemResult:
    base = {"a": math.log(0.7), "b": math.log(0.25)}
    return ItemResult(id=i, tags=["t"], scorer="exact", output="x", score=1.0, latency_s=0.1,
                      prompt_token_ids=[1, 2, 3], output_token_ids=list(range(10, 10 + n_out)),
                      topk_logprobs=[dict(base) for _ in range(n_out)])


def test_the_same_distributions_give_zero_kl_and_full_agreement():
    items = {i: item(i) for i in ("a", "b", "c")}
    f = teacher_forced_fidelity(items, StubClient(), "m", 2, 2)  # type: ignore[arg-type]
    assert f.positions == 12 and f.mean_kl == pytest.approx(0.0, abs=1e-9) and f.top1_agreement == 1.0
    assert f.p95_kl == pytest.approx(0.0, abs=1e-9)


def test_a_moved_model_has_the_kl_of_its_distributions():
    items = {i: item(i) for i in ("a", "b")}
    f = teacher_forced_fidelity(items, StubClient(shift=0.2), "m", 2, 2)  # type: ignore[arg-type]
    want = kl_topk({"a": math.log(0.7), "b": math.log(0.25)}, {"a": math.log(0.5), "b": math.log(0.45)})
    assert want > 0.01 and f.mean_kl == pytest.approx(want) and f.p95_kl == pytest.approx(want)
    assert f.top1_agreement == 1.0
    flipped = teacher_forced_fidelity(items, StubClient(flip=True), "m", 2, 2)  # type: ignore[arg-type]
    assert flipped.top1_agreement == 0.0 and flipped.mean_kl is not None and flipped.mean_kl > f.mean_kl


def test_items_without_logprobs_are_left_out():
    items = {"a": item("a"), "b": item("b").model_copy(update={"topk_logprobs": None})}
    f = teacher_forced_fidelity(items, StubClient(), "m", 2, 1)  # type: ignore[arg-type]
    assert f.positions == 4
    assert teacher_forced_fidelity({}, StubClient(), "m", 2, 1).positions == 0  # type: ignore[arg-type]
