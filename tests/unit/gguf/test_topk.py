"""The in-process GGUF top-k reader (packager.gguf.topk), without llama.cpp: its arithmetic, its alignment of
logits rows to answer tokens, and what it refuses or skips before loading anything."""
from __future__ import annotations

import math

import numpy as np
import pytest

from packager.errors import ConfigError
from packager.evaluate.fidelity import ItemResult, teacher_forced_fidelity
from packager.gguf.topk import GgufTopk, topk_rows


def test_rows_hold_the_log_softmax_top_k_plus_the_target():
    logits = np.array([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 5.0, 0.0]])
    rows = topk_rows(logits, targets=[3, 2], k=2)
    norm0 = math.log(sum(math.exp(x) for x in logits[0]))
    assert set(rows[0]) == {"0", "1", "3"}  # the two largest, and the target outside them
    assert rows[0]["0"] == pytest.approx(2.0 - norm0) and rows[0]["3"] == pytest.approx(-1.0 - norm0)
    assert len(rows[1]) == 2 and "2" in rows[1]  # the target is among the top 2: no extra entry
    assert max(rows[1], key=rows[1].__getitem__) == "2"
    assert sum(math.exp(v) for v in rows[1].values()) <= 1.0 + 1e-9
    # k beyond the vocabulary is the whole vocabulary, whose probabilities sum to 1
    whole = topk_rows(logits[:1], targets=[0], k=10)[0]
    assert len(whole) == 4 and sum(math.exp(v) for v in whole.values()) == pytest.approx(1.0)


class FakeLlama:
    """Scores where the logits after token t put all the mass on token t + 1 (mod vocabulary); keeps its context
    like llama-cpp-python's Llama (input_ids, n_tokens, a KV cache cut by kv_cache_seq_rm) and counts decodes."""

    def __init__(self, vocab: int = 8, n_ctx: int = 64, cut_ok: bool = True):
        self.vocab, self.loads, self.decoded = vocab, 1, 0
        self.scores = np.zeros((n_ctx, vocab))
        self.input_ids = np.zeros(n_ctx, dtype=np.intc)
        self.n_tokens = 0
        self._ctx = self
        self.cut_ok = cut_ok

    def kv_cache_seq_rm(self, seq: int, p0: int, p1: int) -> bool:
        return self.cut_ok

    def n_vocab(self) -> int:
        return self.vocab

    def reset(self) -> None:
        self.n_tokens = 0

    def eval(self, ids: list[int]) -> None:
        for i, t in enumerate(ids, start=self.n_tokens):
            self.scores[i] = -20.0
            self.scores[i, (t + 1) % self.vocab] = 20.0
            self.input_ids[i] = t
        self.n_tokens += len(ids)
        self.decoded += len(ids)

    def close(self) -> None:
        pass


def _reader(tmp_path, n_ctx: int = 64, cut_ok: bool = True) -> GgufTopk:
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    r = GgufTopk(tmp_path / "model.gguf", n_ctx=n_ctx, threads=1)
    r._llm = FakeLlama(n_ctx=n_ctx, cut_ok=cut_ok)
    return r


@pytest.mark.parametrize("cut_ok", [True, False])
def test_a_shared_leading_prompt_is_decoded_once_and_reads_the_same(tmp_path, cut_ok):
    seqs = [([1, 2, 3, 4], [5, 6]), ([1, 2, 3, 7], [0, 1]), ([1, 2, 3, 7], [2]), ([6, 2], [3])]
    fresh = []
    for p, o in seqs:  # each from an empty context
        f = _reader(tmp_path)
        fresh.append(f(p, o, k=2, max_positions=8))
    r = _reader(tmp_path, cut_ok=cut_ok)
    assert [r(p, o, k=2, max_positions=8) for p, o in seqs] == fresh
    llm = r._llm
    if cut_ok:
        # 2nd keeps [1, 2, 3]; 3rd keeps [1, 2, 3] (the last prompt token is always decoded again); 4th nothing
        assert r.reused_tokens == 6 and llm.decoded == 6 + 3 + 2 + 3 == r.decoded_tokens
    else:  # a context that cannot be cut starts over every time
        assert r.reused_tokens == 0 and llm.decoded == 6 + 6 + 5 + 3 == r.decoded_tokens


def test_each_answer_position_reads_the_logits_of_the_token_before_it(tmp_path):
    r = _reader(tmp_path)
    rows = r([1, 2, 3], [4, 5, 7], k=1, max_positions=8)
    assert rows is not None and len(rows) == 3
    # after prompt token 3 the model predicts 4, after 4 it predicts 5, after 5 it predicts 6 (not the answer's 7)
    assert [max(x, key=x.__getitem__) for x in rows] == ["4", "5", "6"]
    assert rows[2]["7"] < -30 and rows[0]["4"] == pytest.approx(0.0, abs=1e-9)
    assert r([1, 2, 3], [4, 5, 7], k=1, max_positions=2) == rows[:2]


def test_what_is_skipped_rather_than_read(tmp_path):
    r = _reader(tmp_path, n_ctx=6)
    assert r([1, 2, 3], [4, 5, 6, 7], k=2, max_positions=8) is None  # 7 tokens > n_ctx 6: skipped, not cut
    assert r([1, 2, 3], [4, 5, 6, 7], k=2, max_positions=3) is not None  # only the measured positions count
    assert r([], [4], k=2, max_positions=8) is None and r([1], [], k=2, max_positions=8) is None
    assert r([1, 2], [99], k=2, max_positions=8) is None  # a token id beyond the vocabulary: another tokenizer


def test_a_missing_file_is_refused_at_once(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        GgufTopk(tmp_path / "model.gguf", n_ctx=64, threads=1)


def test_fidelity_reads_through_the_given_reader_not_the_endpoint(tmp_path):
    r = _reader(tmp_path)

    class NoEndpoint:
        def post(self, *a, **k):
            raise AssertionError("the endpoint must not be asked")

    # baseline: sure of the next token t + 1 along an answer that follows that rule, then breaks it
    base_topk = [{"4": 0.0}, {"5": 0.0}, {"6": 0.0}]
    items = {"a": ItemResult(id="a", tags=["t"], scorer="s", output="x", score=1.0, latency_s=0.0,
                             prompt_token_ids=[1, 2, 3], output_token_ids=[4, 5, 6], topk_logprobs=base_topk)}
    f = teacher_forced_fidelity(items, NoEndpoint(), "m", 2, 2, topk_fn=r)  # type: ignore[arg-type]
    assert f.positions == 3 and f.top1_agreement == 1.0 and f.mean_kl == pytest.approx(0.0, abs=1e-6)
    assert f.prefix_match_mean == 3 and f.answers == 1


def test_a_long_read_shows_its_progress_and_gives_the_same_figures(tmp_path, capsys):
    r = _reader(tmp_path)
    items = {f"a{i}": ItemResult(id=f"a{i}", tags=["t"], scorer="s", output="x", score=1.0, latency_s=0.0,
                                 prompt_token_ids=[1, 2, 3], output_token_ids=[4, 5],
                                 topk_logprobs=[{"4": 0.0}, {"5": 0.0}]) for i in range(3)}
    quiet = teacher_forced_fidelity(items, None, "m", 2, 1, topk_fn=r)  # type: ignore[arg-type]
    assert capsys.readouterr().err == ""
    shown = teacher_forced_fidelity(items, None, "m", 2, 1, topk_fn=r,  # type: ignore[arg-type]
                                    progress="fidelity gguf-q4_k_m")
    err = capsys.readouterr().err
    assert "fidelity gguf-q4_k_m" in err and "3/3" in err
    assert shown == quiet and shown.positions == 6
