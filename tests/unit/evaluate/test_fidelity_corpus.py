"""The fidelity corpus: loading (and refusing) prompt files, the baseline's reference answers, greedy-prefix match."""
from __future__ import annotations

import json
import math

import pytest

from packager.errors import ConfigError
from packager.evaluate.fidelity_corpus import load_fidelity_corpus, reference_outputs, spread
from packager.evaluate.runner import ItemResult, greedy_prefix_match, teacher_forced_fidelity

REF = [10, 11, 12, 13, 14, 15]  # the baseline's greedy answer (token ids)


def lp(top: int, other: int = 99, p: float = 0.8) -> dict[str, float]:
    return {str(top): math.log(p), str(other): math.log(1 - p - 0.05)}


class Stub:
    """A fake engine. Chat completions answer REF (or fail for prompts containing 'FAIL'); /tokenize counts words
    (a prompt with 'LONG' has 1000); completions with prompt logprobs put the reference token on top until
    position `diverge` of the answer, another token after it."""

    def __init__(self, diverge: int = len(REF), ctx: int | None = 64, logprobs: bool = True):
        self.diverge, self.ctx, self.logprobs = diverge, ctx, logprobs
        self.chats = 0

    def max_model_len(self):
        return self.ctx

    def tokenize(self, model, messages=None, prompt=None, add_special_tokens=True):
        text = " ".join(m["content"] for m in messages)
        return [1] * (1000 if "LONG" in text else len(text.split()))

    def post(self, path, body):
        from packager.errors import ServerError

        if path == "/v1/chat/completions":
            self.chats += 1
            if "FAIL" in body["messages"][-1]["content"]:
                raise ServerError("POST /v1/chat/completions answered HTTP 500: boom")
            n = min(body["max_tokens"], len(REF))
            return {"prompt_token_ids": [1, 2, 3], "choices": [{"message": {"content": "answer"},
                                                                 "token_ids": REF[:n], "finish_reason": "length"}]}
        assert path == "/v1/completions" and body["max_tokens"] == 1
        if not self.logprobs:
            return {"choices": [{"text": "x"}]}
        ids = body["prompt"]
        out = ids[3:]
        pos = [lp(t) if i < self.diverge else lp(7, other=t) for i, t in enumerate(out)]
        wire = [{k: {"logprob": v} for k, v in d.items()} for d in [lp(2), lp(3)] + pos]
        return {"choices": [{"prompt_logprobs": [None] + wire}]}


def corpus_file(tmp_path, lines):
    p = tmp_path / "c.jsonl"
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return p


def test_the_bundled_corpus_is_large_varied_and_independent_of_the_suites():
    c = load_fidelity_corpus("default")
    assert len(c.prompts) >= 500
    kinds = {p.kind for p in c.prompts}
    langs = {p.lang for p in c.prompts} - {"en"}
    assert len(kinds) >= 10 and len(langs) >= 12, (kinds, langs)
    assert sum(p.messages is not None for p in c.prompts) >= 30  # conversations and system prompts
    from packager.evaluate.suite import load_suite

    suite_texts = {it.prompt for name in ("default", "behaviour") for it in load_suite(name).items if it.prompt}
    assert not suite_texts & {p.prompt for p in c.prompts if p.prompt}


@pytest.mark.parametrize("lines,msg", [
    ([], "holds no prompts"),
    (['{"id": "a"}'], "exactly one of 'prompt' or 'messages'"),
    (['{"id": "a", "prompt": "  "}'], "'prompt' is empty"),
    (['{"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'],
     "must end with a user turn"),
    (['{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "y"}'], "line 2, field 'id': 'a' repeats line 1"),
    (['{"id": "a", "prompt": "x", "answer": "y"}'], "line 1, field 'answer'"),
    (["[1, 2]"], "line 1: expected a JSON object"),
])
def test_a_bad_corpus_file_is_refused_with_its_line(tmp_path, lines, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_fidelity_corpus(corpus_file(tmp_path, lines))


def test_missing_and_binary_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_fidelity_corpus(tmp_path / "nope.jsonl")
    (tmp_path / "b.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_fidelity_corpus(tmp_path / "b.jsonl")


def test_spread_samples_across_the_whole_list():
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread(list(range(4)), 9) == [0, 1, 2, 3]
    assert spread(list(range(100)), 5) == [0, 20, 40, 60, 80]


def test_reference_answers_skip_and_count_prompts_longer_than_the_context(tmp_path):
    c = load_fidelity_corpus(corpus_file(tmp_path, [
        {"id": "p1", "prompt": "short one", "kind": "chat"},
        {"id": "p2", "prompt": "LONG pasted text"},
        {"id": "p3", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
         "lang": "de"},
        {"id": "p4", "prompt": "FAIL please"},
    ]))
    stub = Stub()
    ref = reference_outputs(stub, "m", c, max_tokens=4, top_k=2, concurrency=2)  # type: ignore[arg-type]
    assert [r.id for r in ref.items] == ["p1", "p3"] and ref.skipped_too_long == 1 and ref.failed == 1
    assert stub.chats == 3  # the long prompt was never sent
    r1 = ref.items[0]
    assert r1.output_token_ids == REF[:4] and len(r1.topk_logprobs or []) == 4 and r1.tags == ["chat"]
    assert ref.items[1].tags == ["lang:de"]


def test_an_endpoint_without_prompt_logprobs_is_found_on_the_first_prompt(tmp_path):
    c = load_fidelity_corpus(corpus_file(tmp_path, [{"id": f"p{i}", "prompt": f"q {i}"} for i in range(20)]))
    stub = Stub(logprobs=False)
    ref = reference_outputs(stub, "m", c, max_tokens=4, top_k=2, concurrency=2)  # type: ignore[arg-type]
    assert ref.items == [] and ref.failed == 20 and ref.no_logprobs and stub.chats == 1


def test_max_prompts_takes_them_spread_over_the_corpus(tmp_path):
    c = load_fidelity_corpus(corpus_file(tmp_path, [{"id": f"p{i}", "prompt": f"q {i}"} for i in range(10)]))
    ref = reference_outputs(Stub(), "m", c, max_tokens=3, top_k=2, concurrency=1,  # type: ignore[arg-type]
                            max_prompts=5)
    assert [r.id for r in ref.items] == ["p0", "p2", "p4", "p6", "p8"]


def test_greedy_prefix_match_counts_leading_agreeing_tokens():
    assert greedy_prefix_match([10, 11, 12], [lp(10), lp(11), lp(12)]) == 3
    assert greedy_prefix_match([10, 11, 12], [lp(10), lp(5, other=11), lp(12)]) == 1  # stops at the first miss
    assert greedy_prefix_match([10, 11, 12], [{}, lp(11), lp(12)]) == 0
    assert greedy_prefix_match([], []) == 0


@pytest.mark.parametrize("diverge,prefix,full", [(6, 6.0, 1.0), (2, 2.0, 0.0), (0, 0.0, 0.0)])
def test_fidelity_along_reference_answers_has_the_prefix_match(diverge, prefix, full):
    base = {f"p{i}": ItemResult(id=f"p{i}", tags=[], scorer="fidelity", output="a", score=0.0, latency_s=0.1,
                                prompt_token_ids=[1, 2, 3], output_token_ids=REF, topk_logprobs=[lp(t) for t in REF])
            for i in range(3)}
    f = teacher_forced_fidelity(base, Stub(diverge=diverge), "m", 2, 2)  # type: ignore[arg-type]
    assert f.answers == 3 and f.positions == 18
    assert f.prefix_match_mean == prefix and f.full_match == full
    assert f.prefix_match_share == pytest.approx(prefix / 6)
    assert f.top1_agreement == pytest.approx(diverge / 6)
    assert (f.mean_kl or 0.0) > 0.0 if diverge < 6 else f.mean_kl == pytest.approx(0.0, abs=1e-9)
