"""Score a model on a task suite THROUGH ITS SERVING ENGINE, against an optional baseline.

`evaluate_model(model_dir, cfg)` starts a local vLLM server for the model (or uses `url=` of any running
OpenAI-compatible endpoint), sends every suite item as a greedy chat completion (concurrently), scores the
outputs, measures perplexity on the held-out corpus from the engine's prompt logprobs, and, given a baseline
summary, computes recovery (score / baseline score) and label-free fidelity: agreement of greedy outputs and the
mean KL(baseline || model) of next-token distributions along the baseline's own outputs (teacher-forced, from
top-k prompt logprobs: a lower bound of the true KL's support, the same estimate for every variant).

Outputs in `out_dir`: items.jsonl (per item: output, score, token ids, top-k logprobs) and summary.json, both
written atomically so an interrupted run leaves nothing half-written.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from packager.config import RunConfig
from packager.core.progress import progress_bar
from packager.core.prompt_format import PromptFormat, answer_text, describe, request_body, resolve_format
from packager.errors import ConfigError, ServerError
from packager.evaluate.client import OpenAIClient
from packager.evaluate.fidelity import (  # noqa: F401 - re-exported: the runner's public names
    FIDELITY_MAX_POSITIONS,
    Fidelity,
    ItemResult,
    TopkFn,
    _teacher_forced_topk,
    greedy_prefix_match,
    kl_topk,
    load_items,
    teacher_forced_fidelity,
)
from packager.evaluate.scorers import SCORERS
from packager.evaluate.sequential import KLStop
from packager.evaluate.stats import PairedStats, bootstrap_stats
from packager.evaluate.suite import Suite, SuiteItem, load_suite
from packager.fsutil import atomic_write_json, atomic_write_text
from packager.provenance import now_iso, package_versions, platform_info

SUMMARY_SCHEMA_VERSION = 1


class EvalSummary(BaseModel):
    schema_version: int = SUMMARY_SCHEMA_VERSION
    name: str
    model_dir: str | None = None
    url: str | None = None
    served_model: str
    engine: dict[str, Any] = Field(default_factory=dict)
    suite: str
    suite_sha256: str
    n_items: int
    n_errors: int
    score: float | None  # None: the suite was not scored (suite_skipped says why)
    suite_skipped: str | None = None
    score_by_tag: dict[str, float]
    score_by_category: dict[str, float]
    perplexity: float | None = None
    perplexity_tokens: int = 0
    corpus_sha256: str | None = None
    baseline_name: str | None = None
    baseline_score: float | None = None
    recovery: float | None = None
    recovery_by_category: dict[str, float] = Field(default_factory=dict)
    fidelity_agreement: float | None = None
    fidelity_mean_kl: float | None = None
    fidelity_p95_kl: float | None = None
    fidelity_top1_agreement: float | None = None  # teacher-forced, per position
    fidelity_kl_positions: int = 0
    fidelity_prefix_match_mean: float | None = None  # tokens of the baseline's greedy answer kept, mean
    fidelity_prefix_match_share: float | None = None  # the same as a share of the compared answer length
    # where fidelity was measured: "corpus:<name>" (packager.evaluate.fidelity_corpus) or "suite" (its answers)
    fidelity_source: str | None = None
    fidelity_corpus_sha256: str | None = None
    # chat (the chat template, /v1/chat/completions) or completion (raw text, /v1/completions: a base model)
    prompt_format: str | None = None
    fidelity_prompts: int = 0  # corpus prompts compared (answers)
    fidelity_prompts_skipped: int = 0  # longer than the engine's context with the answer: skipped, counted
    fidelity_prompts_failed: int = 0
    # why the reading of the corpus stopped before its last answer (eval.fidelity_stop_kl), or None
    fidelity_stopped_early: str | None = None
    fidelity_settled: str | None = None  # "above" / "below" the limit where the reading stopped there
    fidelity_items_path: str | None = None  # the baseline's corpus answers with their top-k (baseline runs)
    # bootstrap intervals of score and recovery, paired with the baseline's items (packager.evaluate.stats)
    stats: PairedStats | None = None
    behaviour: dict[str, float] = Field(default_factory=dict)
    wall_time_s: float
    items_path: str | None = None
    created_at: str = Field(default_factory=now_iso)
    versions: dict[str, str] = Field(default_factory=package_versions)
    platform: dict[str, str] = Field(default_factory=platform_info)
    config: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)  # e.g. figures an engine cannot give, and why


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _score_item(client: OpenAIClient, model: str, item: SuiteItem, want_topk: int | None,
                fmt: PromptFormat = "chat") -> ItemResult:
    t0 = time.perf_counter()
    path, prompt = request_body(fmt, item.chat_messages())
    body = {"model": model, **prompt, "max_tokens": item.max_tokens, "temperature": 0.0, "seed": 0,
            "return_token_ids": True}
    try:
        resp = client.post(path, body)
        choice = resp["choices"][0]
        output = answer_text(fmt, choice)
        res = ItemResult(
            id=item.id, tags=item.tags, scorer=item.scorer, output=output,
            score=SCORERS.get(item.scorer)(output, item), finish_reason=choice.get("finish_reason"),
            latency_s=time.perf_counter() - t0,
            prompt_token_ids=resp.get("prompt_token_ids") or choice.get("prompt_token_ids"),
            output_token_ids=choice.get("token_ids"),
        )
    except ServerError as e:
        return ItemResult(id=item.id, tags=item.tags, scorer=item.scorer, output="", score=0.0,
                          latency_s=time.perf_counter() - t0, error=str(e)[:500])
    if want_topk and res.prompt_token_ids and res.output_token_ids:
        res.topk_logprobs = _teacher_forced_topk(client, model, res.prompt_token_ids, res.output_token_ids, want_topk)
    return res


def perplexity(client: OpenAIClient, model: str, texts: list[str], chunk_chars: int, max_chunks: int,
               concurrency: int, show_progress: bool) -> tuple[float | None, int]:
    """exp(mean negative log-likelihood) of the engine over fixed character chunks of `texts`."""
    joined = "\n\n".join(texts)
    chunks = [joined[i:i + chunk_chars] for i in range(0, len(joined), chunk_chars)][:max_chunks]
    chunks = [c for c in chunks if c.strip()]
    if not chunks:
        return None, 0

    def one(chunk: str) -> list[float]:
        resp = client.post("/v1/completions", {"model": model, "prompt": chunk, "max_tokens": 1,
                                               "temperature": 0.0, "prompt_logprobs": 0, "return_token_ids": True})
        choice = resp["choices"][0]
        plp = choice.get("prompt_logprobs") or resp.get("prompt_logprobs") or []
        ids = choice.get("prompt_token_ids") or resp.get("prompt_token_ids")
        out = []
        for i, pos in enumerate(plp):
            if not pos:
                continue
            # Each position holds the prompt's own token (vLLM lists it first) plus the top-k.
            entry = pos.get(str(ids[i])) if ids and i < len(ids) else None
            out.append((entry or next(iter(pos.values())))["logprob"])
        return out

    nll: list[float] = []
    with progress_bar("perplexity", total=len(chunks), enabled=show_progress) as bar, \
            ThreadPoolExecutor(concurrency) as ex:
        for fut in as_completed([ex.submit(one, c) for c in chunks]):
            nll.extend(-x for x in fut.result())
            bar.advance()
    if not nll:
        return None, 0
    return math.exp(sum(nll) / len(nll)), len(nll)


def _aggregate(results: list[ItemResult]) -> tuple[float, dict[str, float], dict[str, float]]:
    by_tag: dict[str, list[float]] = {}
    by_cat: dict[str, list[float]] = {}
    for r in results:
        for t in r.tags:
            if not t.startswith("group:"):
                by_tag.setdefault(t, []).append(r.score)
        by_cat.setdefault(_category(r), []).append(r.score)
    return (_mean([r.score for r in results]), {k: _mean(v) for k, v in sorted(by_tag.items())},
            {k: _mean(v) for k, v in sorted(by_cat.items())})


def behaviour_metrics(results: list[ItemResult]) -> dict[str, float]:
    """Refusal rate on `refusal` items; paraphrase consistency on `group:<name>` items (all answered alike)."""
    out: dict[str, float] = {}
    refusal = [r.score for r in results if "refusal" in r.tags]
    if refusal:
        out["refusal_rate"] = _mean(refusal)
    groups: dict[str, list[float]] = {}
    for r in results:
        for t in r.tags:
            if t.startswith("group:"):
                groups.setdefault(t, []).append(r.score)
    if groups:
        out["consistency"] = _mean([float(len(set(v)) == 1) for v in groups.values()])
        out["consistency_accuracy"] = _mean([s for v in groups.values() for s in v])
    return out


def fidelity(results: list[ItemResult], baseline_items: dict[str, ItemResult], client: OpenAIClient, model: str,
             top_k: int, concurrency: int, topk_fn: TopkFn | None = None, progress: str | None = None) -> Fidelity:
    pairs = [(r, baseline_items[r.id]) for r in results if r.id in baseline_items and not r.error]
    if not pairs:
        return Fidelity()
    f = teacher_forced_fidelity(baseline_items, client, model, top_k, concurrency, ids=[b.id for _, b in pairs],
                                topk_fn=topk_fn, progress=progress)
    f.agreement = _mean([float(r.output.strip() == b.output.strip()) for r, b in pairs])
    return f


def quality_stats(results: list[ItemResult], baseline_items: dict[str, ItemResult] | None) -> PairedStats | None:
    """Bootstrap intervals of the score (paired with the baseline's items where given: recovery, p-value)."""
    if not results:
        return None
    if baseline_items:
        paired = [r for r in results if r.id in baseline_items]
        if paired:
            return bootstrap_stats([r.score for r in paired], [_category(r) for r in paired],
                                   [baseline_items[r.id].score for r in paired])
    return bootstrap_stats([r.score for r in results], [_category(r) for r in results])


def _category(r: ItemResult) -> str:
    return r.tags[0] if r.tags else "untagged"


def load_summary(path: str | Path) -> EvalSummary:
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    try:
        return EvalSummary.model_validate_json(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"Baseline summary {p} does not exist; run `packager evaluate` on the baseline "
                          "first.") from None


def evaluate_model(model_dir: str | Path | None, cfg: RunConfig, *, url: str | None = None,
                   baseline: EvalSummary | None = None, out_dir: str | Path | None = None,
                   name: str | None = None, suite: Suite | None = None, show_progress: bool = True,
                   baseline_items: dict[str, ItemResult] | None = None,
                   topk_fn: TopkFn | None = None) -> EvalSummary:
    """Score `model_dir` (served by a fresh local engine) or the endpoint at `url` on the configured suite.
    `topk_fn` reads the model's teacher-forced top-k for the fidelity figures where the endpoint gives no prompt
    logprobs (a GGUF served by llama.cpp: packager.engines.select.local_topk; a local GGUF gets it by itself)."""
    if (model_dir is None) == (url is None):
        raise ConfigError("evaluate_model needs exactly one of a model directory or an endpoint URL.")
    suite = suite or load_suite(cfg.eval.suite)
    label = name or (Path(model_dir).name if model_dir else url) or "model"
    t0 = time.perf_counter()
    if url is not None:
        summary, results, reference = _evaluate_endpoint(url, cfg, suite, label, baseline, baseline_items,
                                                         show_progress, None, topk_fn)
    else:
        # The model's own engine (packager.engines.select: llama.cpp for a GGUF artifact, vLLM otherwise).
        from packager.engines.select import evaluation_config, local_topk, server_for_model

        assert model_dir is not None  # exactly one of model_dir and url (checked above)

        log_path = None
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            log_path = Path(out_dir) / "engine.log"
        with server_for_model(model_dir, cfg.engine, served_name=label, log_path=log_path) as srv:
            run_cfg, notes = evaluation_config(srv.engine.backend, cfg.model_copy(update={"engine": srv.engine}))
            own = None if topk_fn is not None else local_topk(model_dir, srv.engine)
            try:
                summary, results, reference = _evaluate_endpoint(srv.base_url, run_cfg, suite, label, baseline,
                                                                 baseline_items, show_progress, model_dir,
                                                                 topk_fn or own)
            finally:
                if own is not None:
                    own.close()
        summary.model_dir, summary.url = str(model_dir), None
        summary.notes.extend(notes)
    summary.wall_time_s = time.perf_counter() - t0
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        items_path = out / "items.jsonl"
        atomic_write_text(items_path, "".join(r.model_dump_json() + "\n" for r in results))
        summary.items_path = str(items_path.resolve())
        if reference:
            ref_path = out / "fidelity_items.jsonl"
            atomic_write_text(ref_path, "".join(r.model_dump_json() + "\n" for r in reference))
            summary.fidelity_items_path = str(ref_path.resolve())
        atomic_write_json(out / "summary.json", summary.model_dump(mode="json"))
    return summary


def _score_items(client: OpenAIClient, model: str, items: list[SuiteItem], want_topk: int | None, fmt: PromptFormat,
                 title: str, concurrency: int, show_progress: bool) -> list[ItemResult]:
    """Every item scored (concurrently, under one progress bar), in the suite's order."""
    results: list[ItemResult] = []
    with progress_bar(title, total=len(items), enabled=show_progress) as bar, ThreadPoolExecutor(concurrency) as ex:
        for fut in as_completed([ex.submit(_score_item, client, model, it, want_topk, fmt) for it in items]):
            results.append(fut.result())
            bar.advance()
    order = {it.id: i for i, it in enumerate(items)}
    return sorted(results, key=lambda r: order[r.id])


def _evaluate_endpoint(url: str, cfg: RunConfig, suite: Suite, label: str, baseline: EvalSummary | None,
                       baseline_items: dict[str, ItemResult] | None, show_progress: bool,
                       model_dir: str | Path | None, topk_fn: TopkFn | None = None,
                       ) -> tuple[EvalSummary, list[ItemResult], list[ItemResult] | None]:
    items = suite.items[: cfg.eval.max_items] if cfg.eval.max_items else suite.items
    t0 = time.perf_counter()
    client = OpenAIClient(url, timeout_s=cfg.eval.request_timeout_s)
    try:
        model = client.model_id()
        # The baseline's format when there is one: a variant is compared on the prompts its baseline answered.
        setting = baseline.prompt_format if baseline is not None and baseline.prompt_format else cfg.eval.prompt_format
        fmt = resolve_format(setting, model_dir=model_dir, chat_template=cfg.engine.chat_template, client=client,
                             model=model)
        # A baseline keeps the top-k along its suite answers only when fidelity is measured along them (no corpus).
        want_topk = cfg.eval.fidelity_top_k if baseline is None and not cfg.eval.fidelity_corpus else None
        reference: list[ItemResult] | None = None
        progress = f"fidelity {label}" if show_progress else None
        # A release reads a variant's fidelity first (eval.skip_suite_above_kl): one whose KL settles above the
        # limit is rejected by the gate whatever its score, so its suite is not scored.
        # the baseline's corpus answers, read from disk once for both readings below
        corpus_items = baseline_corpus_items(baseline) if baseline is not None and cfg.eval.fidelity_corpus else None
        fid = _fidelity_fields([], baseline, baseline_items, corpus_items, client, model, cfg, topk_fn, progress) \
            if baseline is not None and corpus_items and _fidelity_first(cfg) else None
        skipped = _suite_skip_reason(fid, cfg.eval.fidelity_stop_kl)
        results = [] if skipped else _score_items(client, model, items, want_topk, fmt, f"evaluate {label}",
                                                  cfg.eval.concurrency, show_progress)
        errors = [r for r in results if r.error]
        if errors and len(errors) == len(results):
            raise ServerError(f"Every request to {url} failed; first error: {errors[0].error}")
        score, by_tag, by_cat = _aggregate(results)
        ppl, ppl_tokens, corpus_digest = (None, 0, None) if skipped else _perplexity(client, model, cfg,
                                                                                     show_progress)
        summary = EvalSummary(
            name=label, url=url, served_model=model, engine=cfg.engine.model_dump(mode="json"),
            suite=suite.name, suite_sha256=suite.sha256, n_items=len(results), n_errors=len(errors),
            score=None if skipped else score, suite_skipped=skipped,
            score_by_tag=by_tag, score_by_category=by_cat, perplexity=ppl, perplexity_tokens=ppl_tokens,
            corpus_sha256=corpus_digest, behaviour=behaviour_metrics(results),
            wall_time_s=time.perf_counter() - t0, config=cfg.model_dump(mode="json"), prompt_format=fmt,
        )
        if fmt == "completion":
            summary.notes.append(f"prompts sent as {describe(fmt)}")
        if baseline is not None:
            summary.baseline_name = baseline.name
            summary.baseline_score = baseline.score
            summary.recovery = score / baseline.score if baseline.score and not skipped else None
            summary.recovery_by_category = {c: by_cat[c] / s for c, s in baseline.score_by_category.items()
                                            if c in by_cat and s > 0}
            if baseline_items is None and baseline.items_path and Path(baseline.items_path).exists():
                baseline_items = load_items(Path(baseline.items_path))
            if fid is None:
                fid = _fidelity_fields(results, baseline, baseline_items, corpus_items, client, model, cfg, topk_fn,
                                       progress)
            for k, v in fid.items():
                setattr(summary, k, v)
        elif cfg.eval.fidelity_corpus:
            reference = _corpus_reference(client, model, cfg, summary, show_progress, fmt)
        summary.stats = quality_stats(results, baseline_items if baseline is not None else None)
    finally:
        client.close()
    return summary, results, reference


def _fidelity_first(cfg: RunConfig) -> bool:
    """Whether the fidelity corpus (where the baseline answered it) is read before the suite: asked for, with a KL
    limit to settle against."""
    return bool(cfg.eval.skip_suite_above_kl and cfg.eval.fidelity_stop_kl)


def _suite_skip_reason(fid: dict[str, Any] | None, limit: float | None) -> str | None:
    """Why the suite is not scored after a fidelity reading that came first (its mean KL lies above the limit, the
    very figure the gate's KL test judges), or None."""
    fid = fid or {}
    kl = fid.get("fidelity_mean_kl")
    if kl is None or limit is None or kl <= limit:
        return None
    how = fid.get("fidelity_stopped_early") or f"all {fid.get('fidelity_prompts')} answers read"
    return (f"not scored: its mean KL to the baseline, {kl:.4g}, lies above the limit {limit:.4g} ({how}), so the "
            "quality gate rejects it whatever its score (eval.skip_suite_above_kl)")


def _perplexity(client: OpenAIClient, model: str, cfg: RunConfig,
                show_progress: bool) -> tuple[float | None, int, str | None]:
    """Perplexity on the held-out corpus (None where not configured or the endpoint gives no prompt logprobs), its
    token count and the corpus's digest."""
    if not cfg.eval.perplexity:
        return None, 0, None
    from packager.evaluate.corpus import corpus_sha256, split_corpus

    _, heldout = split_corpus()
    try:
        ppl, n = perplexity(client, model, heldout, cfg.eval.perplexity_chunk_tokens * 4,
                            cfg.eval.perplexity_max_chunks, cfg.eval.concurrency, show_progress)
    except ServerError:
        ppl, n = None, 0  # endpoints without prompt logprobs (e.g. llama.cpp) have no perplexity
    return ppl, n, corpus_sha256()


def _fidelity_fields(results: list[ItemResult], baseline: EvalSummary, baseline_items: dict[str, ItemResult] | None,
                     corpus_items: dict[str, ItemResult] | None, client: OpenAIClient, model: str, cfg: RunConfig,
                     topk_fn: TopkFn | None, progress: str | None) -> dict[str, Any]:
    """The model's fidelity to the baseline, as EvalSummary fields: along the baseline's fidelity-corpus answers
    (`corpus_items`) when it has them, else along its suite answers (`results` paired with `baseline_items`), else
    none. `progress`: a bar's title (None: no bar)."""
    if progress and topk_fn is not None:
        progress += " (read by llama.cpp here)"  # a GGUF's answers, read in this process: slower than vLLM's
    out: dict[str, Any] = {}
    if corpus_items:
        stop = KLStop(cfg.eval.fidelity_stop_kl) if cfg.eval.fidelity_stop_kl else None
        f = teacher_forced_fidelity(corpus_items, client, model, cfg.eval.fidelity_top_k, cfg.eval.concurrency,
                                    topk_fn=topk_fn, progress=progress, stop=stop)
        f.agreement = f.full_match
        out.update(fidelity_stopped_early=f.stopped_early, fidelity_settled=f.settled,
                   fidelity_source=baseline.fidelity_source, fidelity_corpus_sha256=baseline.fidelity_corpus_sha256,
                   fidelity_prompts=f.answers, fidelity_prompts_skipped=baseline.fidelity_prompts_skipped)
    elif baseline_items:
        f = fidelity(results, baseline_items, client, model, cfg.eval.fidelity_top_k, cfg.eval.concurrency,
                     topk_fn, progress=progress)
        out["fidelity_source"] = "suite"
    else:
        f = Fidelity()
    out.update(fidelity_agreement=f.agreement, fidelity_mean_kl=f.mean_kl, fidelity_p95_kl=f.p95_kl,
               fidelity_top1_agreement=f.top1_agreement, fidelity_kl_positions=f.positions,
               fidelity_prefix_match_mean=f.prefix_match_mean, fidelity_prefix_match_share=f.prefix_match_share)
    return out


def _corpus_reference(client: OpenAIClient, model: str, cfg: RunConfig, summary: EvalSummary,
                      show_progress: bool, fmt: PromptFormat = "chat") -> list[ItemResult]:
    """The baseline's answers to the fidelity corpus (what variants are compared along), noted on `summary`."""
    from packager.evaluate.fidelity_corpus import load_fidelity_corpus, reference_outputs

    assert cfg.eval.fidelity_corpus is not None
    corpus = load_fidelity_corpus(cfg.eval.fidelity_corpus)
    # no more at once than the engine batches (a bento refuses what is beyond its limit), nor fewer than the suite's
    concurrency = min(cfg.eval.reference_concurrency, max(cfg.eval.concurrency, cfg.engine.max_num_seqs))
    ref = reference_outputs(client, model, corpus, max_tokens=cfg.eval.fidelity_max_tokens,
                            top_k=cfg.eval.fidelity_top_k, concurrency=concurrency,
                            max_prompts=cfg.eval.fidelity_max_prompts, show_progress=show_progress, fmt=fmt)
    if ref.items:
        summary.fidelity_source = f"corpus:{corpus.name}"
        summary.fidelity_corpus_sha256 = corpus.sha256
    summary.fidelity_prompts = len(ref.items)
    summary.fidelity_prompts_skipped = ref.skipped_too_long
    summary.fidelity_prompts_failed = ref.failed
    if ref.skipped_too_long:
        summary.notes.append(f"fidelity corpus: {ref.skipped_too_long} prompt(s) longer than the engine's context "
                             f"with a {cfg.eval.fidelity_max_tokens}-token answer were skipped")
    if ref.no_logprobs:
        summary.notes.append("fidelity corpus: the endpoint gave no answer with prompt logprobs to its first prompt; "
                             "no fidelity figures")
    elif ref.failed:
        summary.notes.append(f"fidelity corpus: {ref.failed} prompt(s) got no answer with logprobs")
    return ref.items


def baseline_corpus_items(baseline: EvalSummary) -> dict[str, ItemResult] | None:
    """The baseline's answers to the fidelity corpus, when its evaluation measured them and they are on disk."""
    if baseline.fidelity_items_path and Path(baseline.fidelity_items_path).exists():
        return load_items(Path(baseline.fidelity_items_path)) or None
    return None
