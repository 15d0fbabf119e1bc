"""Scorers: each maps (model output, item) to a score in [0, 1]. Registered by name; see SCORERS.names()."""
from __future__ import annotations

import json
import re
import string
from collections import Counter
from typing import TYPE_CHECKING, Callable

from packager.core.plugins import Registry

if TYPE_CHECKING:
    from packager.evaluate.suite import SuiteItem

Scorer = Callable[[str, "SuiteItem"], float]
SCORERS: Registry[Scorer] = Registry("scorer")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and English articles, collapse whitespace (SQuAD-style)."""
    t = text.lower().translate(_PUNCT)
    t = _ARTICLES.sub(" ", t)
    return " ".join(t.split())


def _refs(item: "SuiteItem") -> list[str]:
    return item.references()


@SCORERS.register("exact")
def score_exact(output: str, item: "SuiteItem") -> float:
    """1 if the normalised output, or its first line, equals a normalised reference."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    cands = {normalize(output), normalize(first)}
    return float(any(normalize(r) in cands for r in _refs(item)))


@SCORERS.register("contains")
def score_contains(output: str, item: "SuiteItem") -> float:
    """1 if a normalised reference appears as a whole-word span of the normalised output."""
    out = f" {normalize(output)} "
    return float(any(f" {normalize(r)} " in out for r in _refs(item) if normalize(r)))


@SCORERS.register("regex")
def score_regex(output: str, item: "SuiteItem") -> float:
    """1 if any reference regex matches anywhere in the output (case-insensitive)."""
    return float(any(re.search(r, output, flags=re.IGNORECASE | re.MULTILINE) for r in _refs(item)))


def picked_choice(output: str, choices: list[str]) -> str | None:
    """The choice the output names first (whole-word, normalised); None when it names none."""
    out = f" {normalize(output)} "
    best: tuple[int, str] | None = None
    for c in choices:
        n = normalize(c)
        if not n:
            continue
        i = out.find(f" {n} ")
        if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(n) > len(normalize(best[1])))):
            best = (i, c)
    return best[1] if best else None


@SCORERS.register("choice")
def score_choice(output: str, item: "SuiteItem") -> float:
    """1 if the first choice named in the output is the reference choice."""
    picked = picked_choice(output, item.choices or [])
    return float(picked is not None and normalize(picked) in {normalize(r) for r in _refs(item)})


def _f_measure(matched: int, n_pred: int, n_ref: int) -> float:
    """Harmonic mean of precision (matched / n_pred) and recall (matched / n_ref); 0 when nothing matched."""
    if matched == 0:
        return 0.0
    prec, rec = matched / n_pred, matched / n_ref
    return 2 * prec * rec / (prec + rec)


def token_f1(pred: str, ref: str) -> float:
    p, r = normalize(pred).split(), normalize(ref).split()
    if not p or not r:
        return float(p == r)
    return _f_measure(sum((Counter(p) & Counter(r)).values()), len(p), len(r))


@SCORERS.register("f1")
def score_f1(output: str, item: "SuiteItem") -> float:
    """SQuAD token F1, best over references."""
    return max(token_f1(output, r) for r in _refs(item))


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    p, r = normalize(pred).split(), normalize(ref).split()
    return _f_measure(_lcs(p, r), len(p), len(r))


@SCORERS.register("rouge_l")
def score_rouge_l(output: str, item: "SuiteItem") -> float:
    """ROUGE-L F-measure on normalised tokens, best over references."""
    return max(rouge_l(output, r) for r in _refs(item))


def first_json_object(text: str) -> dict | None:
    """The first JSON object in `text` (code fences and prose around it allowed); None when there is none."""
    dec = json.JSONDecoder()
    i = text.find("{")
    while i >= 0:
        try:
            obj, _ = dec.raw_decode(text, i)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            return obj
        i = text.find("{", i + 1)
    return None


def _field_text(v: object) -> str:
    if isinstance(v, (list, tuple)):
        return " ".join(_field_text(x) for x in v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return normalize(str(v))


@SCORERS.register("json_fields")
def score_json_fields(output: str, item: "SuiteItem") -> float:
    """Share of the reference object's keys whose value in the output's first JSON object matches (normalised
    text: 42, "42" and " 42." are equal); 0 when the output holds no JSON object. Best over references."""
    got = first_json_object(output)
    if got is None:
        return 0.0
    best = 0.0
    for r in _refs(item):
        want = json.loads(r)
        hits = sum(k in got and _field_text(got[k]) == _field_text(v) for k, v in want.items())
        best = max(best, hits / len(want))
    return best
