"""The perplexity and calibration corpus: the help topics every Python install ships (`pydoc_data.topics`).

No download, no data set to vendor: the text is the standard library's own documentation of the
language (statements, expressions, data model, ...), one document per help topic. It is English prose
with code, like much of what a deployed assistant reads and writes.

The corpus is split by topic into two disjoint parts, deterministically:

- calibration texts feed compression (GPTQ calibration, pruning importance, distillation);
- held-out texts are used only to measure perplexity, so a compressed model is never scored on text
  it was calibrated on.

A topic goes to the held-out part when it ranks among the lowest sha256 digests of its name; the split
is the same on every machine and run for the same corpus, never random. The topics' text differs
between Python versions, so reports record `corpus_sha256()` next to the numbers.
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache

from packager.errors import ConfigError

DEFAULT_HOLDOUT_FRACTION = 0.25

# A line that only underlines a heading in the reStructuredText-like help output ("*****", "=====").
_RULE_LINE = re.compile(r"^\s*([*=\-~^#+])\1{2,}\s*$")
_BLANK_RUNS = re.compile(r"\n{3,}")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]{2,}")


def clean_text(text: str) -> str:
    """Plain text with the excess whitespace removed.

    Tabs become spaces, trailing spaces go, heading underlines go, runs of spaces inside a line
    collapse to one (leading indentation of code examples is kept), and runs of blank lines collapse
    to a single blank line.
    """
    lines = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4).split("\n"):
        line = line.rstrip()
        if _RULE_LINE.match(line):
            continue
        lines.append(_INNER_SPACES.sub(" ", line))
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


@lru_cache(maxsize=1)
def _documents() -> tuple[tuple[str, str], ...]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - every CPython ships it; some stripped distributions do not
        raise ConfigError(
            "The perplexity corpus comes from the standard library module 'pydoc_data.topics', which this "
            "Python does not have (a stripped-down distribution). Use a full CPython install, or turn "
            "perplexity off (evaluate.perplexity: false)."
        ) from None
    docs = []
    for name in sorted(topics):
        text = clean_text(str(topics[name]))
        if text:
            docs.append((str(name), text))
    if len(docs) < 2:
        raise ConfigError(f"pydoc_data.topics holds {len(docs)} non-empty topic(s); the corpus needs at least 2.")
    return tuple(docs)


def corpus_documents() -> list[tuple[str, str]]:
    """All documents as (topic name, cleaned text), sorted by topic name."""
    return list(_documents())


def _name_key(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def _check_fraction(holdout_fraction: float) -> float:
    try:
        f = float(holdout_fraction)
    except (TypeError, ValueError):
        raise ConfigError(f"holdout_fraction must be a number between 0 and 1, got {holdout_fraction!r}.") from None
    if not 0.0 < f < 1.0:
        raise ConfigError(
            f"holdout_fraction must be strictly between 0 and 1 so both parts are non-empty, got {holdout_fraction!r}; "
            f"the default is {DEFAULT_HOLDOUT_FRACTION}."
        )
    return f


def heldout_topic_names(holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION) -> list[str]:
    """Names of the held-out topics, sorted: the round(n * fraction) topics whose names hash lowest
    (at least one, and at least one topic is left for calibration)."""
    f = _check_fraction(holdout_fraction)
    names = [n for n, _ in _documents()]
    k = min(max(round(len(names) * f), 1), len(names) - 1)
    return sorted(sorted(names, key=lambda n: (_name_key(n), n))[:k])


def split_documents(holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
                    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(calibration documents, held-out documents), each as (topic name, text) sorted by name; disjoint."""
    held = set(heldout_topic_names(holdout_fraction))
    docs = _documents()
    return [d for d in docs if d[0] not in held], [d for d in docs if d[0] in held]


def split_corpus(holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION) -> tuple[list[str], list[str]]:
    """(calibration_texts, heldout_texts): compression may read only the first, perplexity only the second."""
    calib, held = split_documents(holdout_fraction)
    return [t for _, t in calib], [t for _, t in held]


def corpus_sha256() -> str:
    """sha256 of the whole cleaned corpus (every topic's name and text, in order), for reports."""
    h = hashlib.sha256()
    for name, text in _documents():
        for part in (name, text):
            data = part.encode("utf-8")
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
    return h.hexdigest()
