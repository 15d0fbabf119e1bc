"""Results documents: canonical JSON, digests, and the few numbers the registry shows and gates on.

Results come from other parts of packager (evaluation, behaviour suite, load test, cost model) as plain JSON-able
dicts; the registry stores them verbatim and only *reads* a few well-known keys to summarise them:

* task score: ``task_score``, ``score``, ``mean_score`` or ``accuracy`` at the top level of the evaluation
  results, or inside ``summary``/``overall``/``aggregate``;
* recovery (score / baseline score): ``recovery`` or ``recovery_ratio`` (a ratio), or ``recovery_pct`` (percent),
  same places; otherwise ``baseline_score`` in the evaluation results; otherwise the task score of the lineage's
  root version (the baseline registered without a parent);
* per-tag scores: a mapping under ``score_by_tag``, ``per_tag``, ``by_tag``, ``tags``, ``score_by_category``,
  ``per_category`` or ``categories`` whose values are numbers or objects with
  ``score``/``mean``/``mean_score``/``pass_rate``/``accuracy`` (packager.evaluate's EvalSummary: score_by_tag);
* behaviour: ``refusal`` (also ``refusal_rate``) and ``consistency``, read from the behaviour results, then
  from the evaluation results, each time at the top level, inside ``behaviour`` (EvalSummary.behaviour), then
  from the per-tag scores;
* load test / cost: ``output_tokens_per_s``, ``ttft_ms_p95``, ``goodput_rps``, ``usd_per_million_output_tokens``
  found anywhere up to three levels deep.
"""
from __future__ import annotations

import json
import math
from typing import Any

from packager.errors import ConfigError
from packager.fsutil import sha256_bytes
from packager.registry.records import RESULT_KINDS, ResultsSummary

BEHAVIOUR_TAGS = ("refusal", "consistency")
_SCORE_KEYS = ("task_score", "score", "mean_score", "accuracy")
_NESTS = ("summary", "overall", "aggregate")
_TAG_MAPS = ("score_by_tag", "per_tag", "by_tag", "tags", "score_by_category", "per_category", "categories")
# keys under which a behaviour number may be found (packager.evaluate writes behaviour.refusal_rate/consistency)
_BEHAVIOUR_KEYS = {"refusal": ("refusal", "refusal_rate"), "consistency": ("consistency",)}
_TAG_VALUE_KEYS = ("score", "mean", "mean_score", "pass_rate", "accuracy")
_PERF_KEYS = ("output_tokens_per_s", "ttft_ms_p95", "goodput_rps", "usd_per_million_output_tokens")


def canonical_json(obj: Any) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8 kept; used for every digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def digest(obj: Any) -> str:
    return sha256_bytes(canonical_json(obj).encode("utf-8"))


def _json_default(obj: Any) -> Any:
    """What json cannot write by itself but results commonly hold: pydantic models, dataclasses, paths, times."""
    import dataclasses
    import datetime
    from pathlib import PurePath

    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (datetime.datetime, datetime.date)):
        return obj.isoformat()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def to_jsonable(value: Any, what: str) -> Any:
    """Plain JSON-able data from dicts and lists (which may hold pydantic models, dataclasses, paths, datetimes);
    refuse anything else with a message naming `what`."""
    try:
        return json.loads(json.dumps(value, allow_nan=True, default=_json_default))
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"{what} must be JSON-able data (dicts, lists, strings, numbers); got {type(value).__name__}: {e}. "
            "Pass plain dicts (e.g. `model.model_dump(mode='json')`)."
        ) from None


def results_document(eval: Any = None, behaviour: Any = None, loadtest: Any = None, cost: Any = None) -> dict[str, Any]:
    doc = {"eval": eval, "behaviour": behaviour, "loadtest": loadtest, "cost": cost}
    for k in RESULT_KINDS:
        if doc[k] is not None:
            doc[k] = to_jsonable(doc[k], f"{k} results")
    return doc


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def _first_num(d: Any, keys: tuple[str, ...]) -> tuple[str, float] | None:
    if not isinstance(d, dict):
        return None
    for k in keys:
        v = _num(d.get(k))
        if v is not None:
            return k, v
    return None


def _lookup(doc: Any, keys: tuple[str, ...]) -> tuple[str, float] | None:
    """First of `keys` at the top level of doc, then inside summary/overall/aggregate."""
    hit = _first_num(doc, keys)
    if hit is not None:
        return hit
    if isinstance(doc, dict):
        for n in _NESTS:
            hit = _first_num(doc.get(n), keys)
            if hit is not None:
                return f"{n}.{hit[0]}", hit[1]
    return None


def task_score(ev: Any) -> float | None:
    hit = _lookup(ev, _SCORE_KEYS)
    return None if hit is None else hit[1]


def explicit_recovery(ev: Any) -> tuple[str, float] | None:
    hit = _lookup(ev, ("recovery", "recovery_ratio"))
    if hit is not None:
        return f"eval.{hit[0]}", hit[1]
    hit = _lookup(ev, ("recovery_pct",))
    if hit is not None:
        return f"eval.{hit[0]}", hit[1] / 100.0
    return None


def explicit_baseline_score(ev: Any) -> float | None:
    hit = _lookup(ev, ("baseline_score", "baseline_task_score"))
    if hit is not None:
        return hit[1]
    if isinstance(ev, dict) and isinstance(ev.get("baseline"), dict):
        return task_score(ev["baseline"])
    return None


def tag_scores(doc: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if not isinstance(doc, dict):
        return out
    for m in _TAG_MAPS:
        mapping = doc.get(m)
        if not isinstance(mapping, dict):
            continue
        for tag, val in mapping.items():
            v = _num(val)
            if v is None:
                hit = _first_num(val, _TAG_VALUE_KEYS)
                v = None if hit is None else hit[1]
            if v is not None and str(tag) not in out:
                out[str(tag)] = v
    return out


def behaviour_value(doc: Any, tag: str) -> float | None:
    if not isinstance(doc, dict):
        return None
    keys = _BEHAVIOUR_KEYS.get(tag, (tag,))
    for where in (doc, doc.get("behaviour"), doc.get("behavior")):
        hit = _first_num(where, keys)
        if hit is not None:
            return hit[1]
    v = tag_scores(doc).get(tag)
    if v is not None:
        return v
    hit = _first_num(doc.get(tag), _TAG_VALUE_KEYS)
    return None if hit is None else hit[1]


def _find_deep(doc: Any, key: str, depth: int = 3) -> float | None:
    if depth < 0 or not isinstance(doc, dict):
        return None
    v = _num(doc.get(key))
    if v is not None:
        return v
    for sub in doc.values():
        if isinstance(sub, dict):
            v = _find_deep(sub, key, depth - 1)
            if v is not None:
                return v
    return None


def summarize(results: dict[str, Any], root_score: float | None = None,
              root_label: str | None = None) -> ResultsSummary:
    """The summary of one results document. `root_score` is the lineage root's task score, used for the
    recovery when the evaluation results carry neither a recovery nor a baseline score."""
    ev = results.get("eval")
    beh = results.get("behaviour")
    score = task_score(ev)
    tags = tag_scores(ev)
    beh_tags = tag_scores(beh)
    behaviour: dict[str, float | None] = {}
    for t in BEHAVIOUR_TAGS:
        v = behaviour_value(beh, t)
        behaviour[t] = v if v is not None else behaviour_value(ev, t)
    for t, v in beh_tags.items():
        tags.setdefault(t, v)

    recovery: float | None = None
    source: str | None = None
    baseline = explicit_baseline_score(ev)
    rec = explicit_recovery(ev)
    if rec is not None:
        source, recovery = rec
    elif score is not None and baseline is not None and baseline > 0:
        recovery, source = score / baseline, "eval.baseline_score"
    elif score is not None and root_score is not None and root_score > 0:
        baseline, recovery, source = root_score, score / root_score, root_label or "lineage root"
    perf = {}
    for k in _PERF_KEYS:
        v = None
        for kind in ("loadtest", "cost"):
            v = _find_deep(results.get(kind), k)
            if v is not None:
                break
        perf[k] = v
    clean = {k: v for k, v in tags.items() if math.isfinite(v)}
    return ResultsSummary(
        task_score=score, baseline_score=baseline, recovery=recovery, recovery_source=source,
        refusal=behaviour["refusal"], consistency=behaviour["consistency"], tag_scores=clean, **perf,
    )


def root_summary(s: ResultsSummary) -> ResultsSummary:
    """A root (baseline) without an explicit recovery is its own reference: recovery 1.0."""
    if s.recovery is None and s.task_score is not None:
        return s.model_copy(update={"baseline_score": s.task_score, "recovery": 1.0,
                                    "recovery_source": "this version is the lineage root (baseline)"})
    return s


def flatten_numbers(doc: Any, prefix: str, max_depth: int = 5) -> dict[str, float]:
    """Numeric leaves of nested dicts as {"a.b.c": value} (lists are skipped: they stay in the JSON artifacts)."""
    out: dict[str, float] = {}

    def walk(node: Any, key: str, depth: int) -> None:
        v = _num(node)
        if v is not None:
            out[key] = v
        elif isinstance(node, dict) and depth < max_depth:
            for k, sub in node.items():
                walk(sub, f"{key}.{k}" if key else str(k), depth + 1)

    walk(doc, prefix, 0)
    return out


def flatten_scalars(doc: Any, prefix: str, max_depth: int = 5) -> dict[str, str]:
    """Scalar leaves (and lists of scalars) of nested data as strings, for MLflow params."""
    out: dict[str, str] = {}

    def walk(node: Any, key: str, depth: int) -> None:
        if isinstance(node, dict):
            if depth < max_depth:
                for k, sub in node.items():
                    walk(sub, f"{key}.{k}" if key else str(k), depth + 1)
        elif isinstance(node, list):
            if all(not isinstance(x, (dict, list)) for x in node):
                out[key] = json.dumps(node)
            elif depth < max_depth:
                for i, sub in enumerate(node):
                    walk(sub, f"{key}.{i}" if key else str(i), depth + 1)
        elif node is not None:
            out[key] = str(node)

    walk(doc, prefix, 0)
    return out
