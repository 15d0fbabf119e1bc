"""The perplexity corpus: deterministic, disjoint calibration / held-out split of pydoc_data.topics."""
from __future__ import annotations

import re

import pytest

from packager.errors import ConfigError
from packager.evaluate import corpus
from packager.evaluate.corpus import (clean_text, corpus_documents, corpus_sha256, heldout_topic_names,
                                      split_corpus, split_documents)


def test_documents_sorted_unique_and_clean():
    docs = corpus_documents()
    names = [n for n, _ in docs]
    assert len(docs) >= 20
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    for name, text in docs:
        assert text == text.strip() and text, name
        assert "\n\n\n" not in text, name
        assert "\t" not in text, name
        assert not any(line != line.rstrip() for line in text.splitlines()), name
        assert not re.search(r"^\*{3,}$", text, flags=re.M), name


def test_documents_come_from_pydoc_topics():
    from pydoc_data.topics import topics

    docs = dict(corpus_documents())
    assert set(docs) == {k for k, v in topics.items() if v.strip()}
    assert "assert" in docs["assert"]


def test_documents_returns_a_fresh_list():
    a = corpus_documents()
    a.clear()
    assert corpus_documents()


def test_clean_text_collapses_whitespace_and_drops_rules():
    raw = "Title\r\n*****\n\n\n\nSome   words\there  \n\n   code  block\n"
    assert clean_text(raw) == "Title\n\nSome words here\n\n   code block"


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_split_disjoint_complete_and_near_fraction(fraction):
    calib_docs, held_docs = split_documents(fraction)
    calib_names = {n for n, _ in calib_docs}
    held_names = {n for n, _ in held_docs}
    assert calib_names and held_names
    assert not calib_names & held_names
    assert calib_names | held_names == {n for n, _ in corpus_documents()}
    share = len(held_names) / (len(held_names) + len(calib_names))
    assert abs(share - fraction) <= 0.10
    calib_texts, held_texts = split_corpus(fraction)
    assert calib_texts == [t for _, t in calib_docs]
    assert held_texts == [t for _, t in held_docs]
    assert not set(calib_texts) & set(held_texts)


def test_default_split_is_deterministic_and_a_quarter():
    calib1, held1 = split_corpus()
    corpus._documents.cache_clear()
    calib2, held2 = split_corpus()
    assert (calib1, held1) == (calib2, held2)
    share = len(held1) / (len(held1) + len(calib1))
    assert 0.15 <= share <= 0.35


def test_split_depends_on_names_not_order_or_randomness():
    import hashlib

    names = [n for n, _ in corpus_documents()]
    k = len(heldout_topic_names(0.25))
    expected = sorted(sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())[:k])
    assert heldout_topic_names(0.25) == expected


def test_larger_fraction_holds_out_a_superset():
    assert set(heldout_topic_names(0.2)) <= set(heldout_topic_names(0.4))


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, "a lot", None])
def test_bad_fraction_is_refused_with_the_value(bad):
    with pytest.raises(ConfigError, match="holdout_fraction"):
        split_corpus(bad)


def test_corpus_sha256_is_stable_hex_and_tracks_content(monkeypatch):
    h = corpus_sha256()
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert corpus_sha256() == h
    docs = corpus._documents()
    monkeypatch.setattr(corpus, "_documents", lambda: docs[:-1] + ((docs[-1][0], docs[-1][1] + "!"),))
    assert corpus_sha256() != h
