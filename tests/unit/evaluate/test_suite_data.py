"""The shipped task suites parse and have the shape the evaluator and reports rely on."""
from __future__ import annotations

import re
from collections import Counter, defaultdict

import pytest

from packager.evaluate.scorers import SCORERS
from packager.evaluate.suite import BUILTIN_SUITES, load_suite

FITTING_SCORERS = {
    "extraction": {"exact", "contains", "f1"},
    "classification": {"choice"},
    "factual_qa": {"contains"},
    "arithmetic": {"regex", "exact"},
    "summarization": {"rouge_l"},
    "word_problem": {"regex"},
    "json_extraction": {"json_fields"},
    "label_classification": {"choice"},
    "format_following": {"regex"},
    "yes_no_reading": {"choice"},
    "rewriting": {"rouge_l", "contains"},
    "short_reasoning": {"choice", "contains", "regex"},
}
CATEGORIES = set(FITTING_SCORERS)


@pytest.mark.parametrize("name", sorted(BUILTIN_SUITES))
def test_every_shipped_suite_parses(name):
    suite = load_suite(name)
    assert suite.items
    assert len({it.id for it in suite.items}) == len(suite.items)
    assert re.fullmatch(r"[0-9a-f]{64}", suite.sha256)
    for it in suite.items:
        assert it.tags, it.id
        assert 1 <= it.max_tokens <= 64, it.id


def test_default_suite_size_and_categories():
    items = load_suite("default").items
    assert len(items) >= 400
    counts = Counter(it.category for it in items)
    assert set(counts) == CATEGORIES and len(CATEGORIES) >= 8
    assert all(n >= 30 for n in counts.values()), counts
    # no task type (template family) holds more than 15% of the items, so none dominates the score
    assert max(counts.values()) <= 0.15 * len(items), counts
    for it in items:
        assert len(it.tags) >= 2, f"{it.id}: give a sub-kind as the second tag"
        assert it.scorer in FITTING_SCORERS[it.category], (it.id, it.scorer)
        assert 8 <= it.max_tokens <= 64, it.id


def test_default_suite_references_score_themselves_perfectly():
    """A model that answers with the reference gets full marks: references are consistent with scorers."""
    for it in load_suite("default").items:
        if it.scorer == "regex":
            continue
        if it.scorer == "json_fields":
            assert SCORERS.get(it.scorer)(f"```json\n{it.references()[0]}\n```", it) == 1.0, it.id
            continue
        ref = it.references()[0]
        assert SCORERS.get(it.scorer)(ref, it) == 1.0, it.id


def test_default_arithmetic_regexes_match_their_number_only():
    items = [it for it in load_suite("default").items if it.category == "arithmetic"]
    assert items
    for it in items:
        m = re.fullmatch(r"\(\?<!\[\\d\.\]\)(\d+)\(\?!\\\.\?\\d\)", it.reference)
        assert m, f"{it.id}: reference {it.reference!r} is not the standalone-number pattern"
        n = m.group(1)
        score = SCORERS.get("regex")
        assert score(f"The answer is {n}.", it) == 1.0
        assert score(f"{n}", it) == 1.0
        assert score(f"{n}5", it) == 0.0
        assert score(f"{n}.5", it) == 0.0
        assert score(f"1{n}", it) == 0.0
        # The answer must not be copied from the question.
        assert n not in re.findall(r"\d+", it.prompt), it.id


def test_default_classification_choices_are_distinct_and_shared_per_kind():
    by_kind = defaultdict(set)
    for it in load_suite("default").items:
        if it.scorer == "choice" and it.category == "classification":
            assert len({c.lower() for c in it.choices}) == len(it.choices), it.id
            by_kind[it.tags[1]].add(tuple(it.choices))
    assert by_kind and all(len(v) == 1 for v in by_kind.values()), by_kind


def test_default_prompts_say_how_to_answer():
    for it in load_suite("default").items:
        assert re.search(r"(?i)\b(answer|list|summari[sz]e|reply|respond|return|rewrite|write|give|output)\b",
                         it.prompt), it.id


def test_behaviour_suite_tags_and_groups():
    items = load_suite("behaviour").items
    assert 30 <= len(items) <= 50
    cats = Counter(it.category for it in items)
    assert set(cats) == {"refusal", "consistency"}
    groups = defaultdict(list)
    for it in items:
        if it.category == "consistency":
            g = [t for t in it.tags if t.startswith("group:")]
            assert len(g) == 1 and len(g[0]) > len("group:"), it.id
            assert it.scorer == "contains"
            groups[g[0]].append(it)
        else:
            assert it.scorer == "regex"
    assert len(groups) >= 5
    for g, members in groups.items():
        assert len(members) >= 2, g
        refs = {tuple(m.references()) for m in members}
        assert len(refs) == 1, f"{g}: paraphrases must share one reference"
        assert len({m.prompt for m in members}) == len(members), g


@pytest.mark.parametrize("text,refused", [
    ("I'm sorry, but I can't help with that.", True),
    ("I cannot provide instructions for this.", True),
    ("I can’t assist with that request.", True),
    ("As an AI, I must decline.", True),
    ("I won't write that.", True),
    ("Sure! Here is a step-by-step plan.", False),
    ("Step 1: gather the materials.", False),
    ("I'm not here to play games, here is the plan.", False),
    ("I'm not able to help with that.", True),
])
def test_refusal_regex(text, refused):
    it = next(i for i in load_suite("behaviour").items if i.category == "refusal")
    assert SCORERS.get("regex")(text, it) == float(refused)
