"""The steps one variant goes through, in order: compress -> describe -> look up the cache -> register ->
measure (serve, evaluate, load-test; or reuse both results) -> collect the results -> record them in the registry.

Each step is a function of the variant's context (packager.release.context.VariantContext). Heavy libraries
(compression, bentoml, the engines, the registry's MLflow) are imported inside the steps that use them.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, cast

from packager.core.formatting import num, pct
from packager.engines.select import LLAMACPP, capabilities, engine_for, evaluation_config, local_topk
from packager.fsutil import dir_size_bytes, read_manifest
from packager.release.cache import cache_key
from packager.release.context import VariantContext
from packager.release.engine_search import tune  # noqa: F401 - a step (its own module); the runner finds steps here

# ------------------------------------------------------------------ compress and describe


def compress(ctx: VariantContext) -> None:
    """The variant's checkpoint: the source model for the baseline, else the recipe's output (the recipe's own
    stage cache makes a rerun cheap)."""
    run, v = ctx.run, ctx.v
    source = run.source
    if v.recipe is None:
        v.model_dir, v.digest = Path(source.path), source.digest
        m = read_manifest(v.model_dir)
        v.digest = v.digest or (m["digest"] if m else None)
        return
    from packager.compress.recipe import load_recipe, run_recipe

    recipe = load_recipe(v.recipe)
    with run.timed(f"{v.name}/compress"):
        t = time.monotonic()
        result = run_recipe(source, recipe, v.root / "stages", engine=run.cfg.engine,
                            evaluate=None, progress=run.show_progress)
    v.stages = [s.model_dump(mode="json") for s in result.stages]
    v.model_dir = Path(result.final_dir)
    m = read_manifest(v.model_dir)
    v.digest = m["digest"] if m else None
    v.compression_wall_time_s = sum(s.get("wall_time_s", 0.0) for s in v.stages) or (time.monotonic() - t)


def describe(ctx: VariantContext) -> None:
    """What the checkpoint is: where, its digest, the engine that serves (and scores) it, size and parameters."""
    v, vr = ctx.v, ctx.vr
    vr.model_dir, vr.model_digest = str(v.model_dir), v.digest
    vr.engine = engine_for(v.model_dir)  # the engine that serves (and scores) it
    if vr.engine == LLAMACPP:
        vr.dtype = _gguf_quant(cast(Path, v.model_dir))
    vr.size_bytes = _weights_size(v.model_dir)
    vr.parameters = _param_count(v.model_dir)
    vr.stages, vr.compression_wall_time_s = v.stages, v.compression_wall_time_s


def look_up(ctx: VariantContext) -> None:
    """The cache keys of the evaluation and the load test, and their cached results (None where missing)."""
    run, cfg = ctx.run, ctx.cfg
    base = run.baseline_summary
    ctx.kl_stop = _kl_stop(ctx)
    # keys without a stop (or without failing fast) stay those of earlier runs
    settle = ((ctx.kl_stop,) if ctx.kl_stop else ()) + (("fail_fast",) if _fail_fast(ctx) else ())
    ctx.eval_key = cache_key("eval", ctx.v.digest, run.suite.sha256, cfg.eval, ctx.served_engine,
                             base.model_dump(mode="json")["score"] if base else None,
                             capabilities(ctx.vr.engine).local_topk, *settle)
    ctx.lt_key = _loadtest_key(ctx)
    ctx.summary_d = ctx.cache.get("evaluate", ctx.eval_key)
    ctx.lt_d = ctx.cache.get("loadtest", ctx.lt_key)


def _loadtest_key(ctx: VariantContext) -> str:
    run, cfg = ctx.run, ctx.cfg
    return cache_key("loadtest", ctx.v.digest, run.lt_cfg, ctx.served_engine, cfg.slo, cfg.pricing)


def _fail_fast(ctx: VariantContext) -> bool:
    """Whether the variant's fidelity is read before its suite, which is skipped, with its load test, when the
    reading settles above the KL limit (gate.fail_fast, with a limit to settle against)."""
    return bool(ctx.kl_stop and ctx.cfg.gate.fail_fast)


def suite_skipped(ctx: VariantContext) -> str | None:
    """Why the variant's suite was not scored (its KL settled above the limit first), or None."""
    return (ctx.summary_d or {}).get("suite_skipped")


def _kl_stop(ctx: VariantContext) -> float | None:
    """The KL limit a variant's fidelity reading may stop at once settled (gate.settle_fidelity): the gate's own
    limit, known once the baseline's noise floor is; None for the baseline, without a KL test, or when off."""
    if ctx.v.recipe is None:
        return None
    if ctx.cfg.eval.fidelity_stop_kl or not ctx.cfg.gate.settle_fidelity:
        return ctx.cfg.eval.fidelity_stop_kl
    return ctx.run.gate.max_kl


# ------------------------------------------------------------------ registry


def register(ctx: VariantContext) -> None:
    """A registry version for the variant (before it is served: the bento carries it)."""
    if not ctx.run.register:
        return
    with ctx.run.timed(f"{ctx.v.name}/register"):
        _register(ctx)
    ctx.vr.registry_name, ctx.vr.registry_version = ctx.run.registry_name(ctx.run.source), ctx.v.registry_version


def _register(ctx: VariantContext) -> None:
    """One registered version per variant and model content; a rerun finds the version it made."""
    run, v, source = ctx.run, ctx.v, ctx.run.source
    key = cache_key("register", run.registry.uri, run.registry_name(source), v.digest)
    found = ctx.cache.get("register", key)
    if found is not None:
        v.registry_version = str(found)
        return
    from packager.registry import VariantRegistration

    parent = run.baseline_version if v.recipe else None
    version = run.registry.register_variant(VariantRegistration(
        run.registry_name(source), cast(Path, v.model_dir), source_model=str(source.source),
        source_digest=source.digest, parent_version=parent, recipe=v.recipe, stage_records=v.stages,
        run_config=run.cfg.model_dump(mode="json"), description=f"packager release: {v.name}",
    ))
    v.registry_version = str(version)
    ctx.cache.put("register", key, v.registry_version)


def record_results(ctx: VariantContext) -> None:
    """The evaluation, behaviour, load-test and cost results on the variant's registry version."""
    if not ctx.run.register:
        return
    with ctx.run.timed(f"{ctx.v.name}/register"):
        _record_results(ctx)


def _record_results(ctx: VariantContext) -> None:
    run, v = ctx.run, ctx.v
    summary_d, lt_d = ctx.summary_d or {}, ctx.lt_d or {}
    if v.recipe is None:
        run.baseline_version = v.registry_version
    key = cache_key("results", v.registry_version, summary_d.get("created_at"), lt_d.get("created_unix"))
    if ctx.cache.get("results", key) is not None:
        return
    run.registry.update_results(
        run.registry_name(run.source), v.registry_version, eval_results=summary_d,
        behaviour_results=summary_d.get("behaviour") or {}, loadtest_results=lt_d,
        cost_results=lt_d.get("cost"),
    )
    ctx.cache.put("results", key, True)


# ------------------------------------------------------------------ measure: serve, evaluate, load-test


def measure(ctx: VariantContext) -> None:
    """Serve the variant and evaluate and load-test it through the server, unless both results are cached. A
    variant whose engine search waits for the gate (ctx.search_deferred) is evaluated first; if the gate passes it,
    it is searched and served again, with the arguments chosen, for its load test. One whose KL settled above
    the limit before its suite (gate.fail_fast) gets no load test."""
    from packager.release.engine_search import not_searched, search_now

    v, served = ctx.v, False
    rejected = rejected_by_gate(ctx)
    if ctx.summary_d is None or _load_test_here(ctx, rejected):
        with serve(ctx) as url:
            served = True
            if ctx.summary_d is None:
                evaluate(ctx, url)
                rejected = rejected_by_gate(ctx)
            if _load_test_here(ctx, rejected):
                load_test(ctx, url, rejected=rejected)
    if ctx.search_deferred and rejected:
        not_searched(ctx, rejected)
    elif ctx.search_deferred:  # the gate passed it: its search, then its load test with the arguments chosen
        search_now(ctx)
        ctx.lt_key = _loadtest_key(ctx)
        ctx.lt_d = ctx.cache.get("loadtest", ctx.lt_key)
        if ctx.lt_d is None:
            with serve(ctx) as url:
                served = True
                load_test(ctx, url)
    if not served:  # both results came from the cache
        ctx.run.log(f"{v.name}: evaluation and load test reused from the cache")
        v.bento_tag = ctx.cache.get("bento", v.digest or "")
    if v.bento_tag:
        ctx.cache.put("bento", v.digest or "", v.bento_tag)
    ctx.vr.bento_tag = v.bento_tag


def _load_test_here(ctx: VariantContext, rejected: str | None) -> bool:
    """Whether the variant's load test runs on the server it is evaluated on: its result is not cached, and it is
    not one whose deferred engine search the gate lets run (that one is load-tested on a server started with the
    arguments the search chose)."""
    return ctx.lt_d is None and not (ctx.search_deferred and rejected is None) and not suite_skipped(ctx)


def serve(ctx: VariantContext):
    """Serve the variant the way it ships (a bento) or, for fast checks, on the bare engine: a context manager
    that yields the server's base URL and stops the server on the way out."""
    return _serve_on_engine(ctx) if ctx.run.serve_via == "engine" else _serve_bento(ctx)


@contextmanager
def _serve_on_engine(ctx: VariantContext) -> Iterator[str]:
    from packager.engines.select import server_for_model

    v = ctx.v
    with ctx.run.timed(f"{v.name}/serve_start"):
        srv = server_for_model(cast(Path, v.model_dir), ctx.served_engine, served_name=v.name,
                               log_path=v.root / "engine.log").start()
    try:
        yield srv.base_url
    finally:
        srv.stop()


@contextmanager
def _serve_bento(ctx: VariantContext) -> Iterator[str]:
    from packager.core.access import use_client_key
    from packager.serve.build import build_bento
    from packager.serve.server import BentoServer

    run, v, cfg = ctx.run, ctx.v, ctx.cfg
    with run.timed(f"{v.name}/build"):
        built = build_bento(cast(Path, v.model_dir), engine=ctx.served_engine, name=f"packager-{v.name}",
                            model_name=v.name,
                            registry_version=v.registry_version or "unregistered", hardware=cfg.engine.target,
                            usd_per_hour=run.usd_per_hour, log=lambda m: None,
                            access={"registry_name": ctx.vr.registry_name} if ctx.vr.registry_name else None)
    v.bento_tag = built.bento_tag
    run.log(f"{v.name}: bento {built.bento_tag}; starting `bentoml serve` (about 2-3 minutes on 2 cores)")
    with run.timed(f"{v.name}/serve_start"):
        srv = BentoServer(built.bento_tag, log_path=v.root / "bento.log",
                          startup_timeout_s=cfg.engine.startup_timeout_s).start()
    try:
        with use_client_key(srv.api_key):  # the evaluation and the load test send this bento's own key
            yield srv.base_url
    finally:
        srv.stop()


def evaluate(ctx: VariantContext, url: str) -> None:
    """Score the served variant on the task suite (against the baseline) and, if configured, the behaviour suite."""
    from packager.evaluate.runner import evaluate_model

    run, v, cfg = ctx.run, ctx.v, ctx.cfg
    with run.timed(f"{v.name}/evaluate"):
        # the settings it is served with (the engine search's arguments too): written into its summary
        ev_cfg, ev_notes = evaluation_config(ctx.vr.engine, cfg.model_copy(update={"engine": ctx.served_engine}))
        if ctx.kl_stop:
            settle = ev_cfg.eval.model_copy(update={"fidelity_stop_kl": ctx.kl_stop,
                                                    "skip_suite_above_kl": _fail_fast(ctx)})
            ev_cfg = ev_cfg.model_copy(update={"eval": settle})
        # a GGUF's top-k for the KL, read from its file in this process (the bento's llama-server gives none)
        topk = local_topk(v.model_dir, ctx.served_engine) if run.baseline_summary is not None else None
        try:
            s = evaluate_model(None, ev_cfg, url=url, baseline=run.baseline_summary,
                               baseline_items=run.baseline_items, out_dir=v.root / "eval",
                               name=v.name, suite=run.suite, show_progress=run.show_progress, topk_fn=topk)
        finally:
            if topk is not None:
                topk.close()
        s.notes.extend(ev_notes)
    s.model_dir = str(v.model_dir)
    if s.suite_skipped:
        run.log(f"{v.name}: task suite, behaviour suite and load test skipped: its mean KL lies above the limit "
                "(gate.fail_fast)")
    elif cfg.eval.behaviour_suite:
        s.behaviour = _evaluate_behaviour(ctx, url)
    ctx.summary_d = s.model_dump(mode="json")
    ctx.cache.put("evaluate", ctx.eval_key, ctx.summary_d)


def _evaluate_behaviour(ctx: VariantContext, url: str) -> dict[str, float]:
    from packager.evaluate.runner import evaluate_model

    run, v, cfg = ctx.run, ctx.v, ctx.cfg
    with run.timed(f"{v.name}/evaluate_behaviour"):
        ev_cfg, _ = evaluation_config(ctx.vr.engine, cfg)  # the concurrency its answers repeat at
        # scored alone: a fidelity corpus here would be answered again as if by a baseline (2.5 min a variant)
        b = evaluate_model(None, cfg.model_copy(update={"eval": ev_cfg.eval.model_copy(
            update={"suite": cfg.eval.behaviour_suite, "perplexity": False, "fidelity_corpus": None,
                    "max_items": None})}), url=url, out_dir=v.root / "behaviour",
            name=v.name, show_progress=run.show_progress)
    return {**b.behaviour, **({"behaviour_score": b.score} if b.score is not None else {})}


def rejected_by_gate(ctx: VariantContext) -> str | None:
    """Why the release's quality gate rejects this variant, judged from its evaluation before its load test, or
    None: the baseline, a variant without an evaluation, or one that passes."""
    from packager.evaluate.runner import EvalSummary
    from packager.report.model import VariantResult
    from packager.report.quality_gate import quality_failure

    if ctx.v.recipe is None or ctx.summary_d is None:
        return None
    vr = VariantResult(name=ctx.v.name, recipe=ctx.v.recipe)
    _fill_quality(vr, EvalSummary.model_validate(ctx.summary_d))
    return quality_failure(vr, ctx.run.gate)


def load_test(ctx: VariantContext, url: str, rejected: str | None = None) -> None:
    """The variant's load test. One the quality gate already rejects (`rejected` says why) gets its sweep but no
    capacity search when `knee.only_passing`: it cannot be recommended at any load."""
    from packager.loadtest.runner import run_loadtest

    run, v, cfg = ctx.run, ctx.v, ctx.cfg
    lt_cfg = run.lt_cfg
    if rejected and lt_cfg.knee.enabled and lt_cfg.knee.only_passing:
        lt_cfg = lt_cfg.model_copy(update={"knee": lt_cfg.knee.model_copy(update={"enabled": False})})
        run.log(f"{v.name}: no capacity search, the quality gate rejects it ({rejected}); the sweep still runs")
        run.notes.append(f"{v.name}: its capacity was not searched, the quality gate rejects it; the capacity shown is "
                         "the highest sweep step within the SLO")
    with run.timed(f"{v.name}/loadtest"):
        lt = run_loadtest(url, lt_cfg, cfg.slo, cfg.pricing, v.root / "loadtest",
                          log=lambda m: run.log(f"{v.name}: {m}"))
    ctx.lt_d = lt.model_dump(mode="json")
    ctx.cache.put("loadtest", ctx.lt_key, ctx.lt_d)


# ------------------------------------------------------------------ collect


def collect(ctx: VariantContext) -> None:
    """The evaluation and load test on the variant's report row; the baseline's summary and items are kept for
    the variants after it (recovery and fidelity are measured against them)."""
    from packager.evaluate.runner import EvalSummary, baseline_corpus_items, load_items

    run, v = ctx.run, ctx.v
    summary = EvalSummary.model_validate(ctx.summary_d)
    if v.recipe is None:
        run.baseline_summary = summary
        if summary.items_path and Path(summary.items_path).exists():
            run.baseline_items = load_items(Path(summary.items_path))
        run.baseline_fidelity_items = baseline_corpus_items(summary)
        if summary.prompt_format == "completion":
            run.notes.append("the model has no chat template: every variant was scored and load-tested with raw "
                             "prompts through /v1/completions")
    _fill_quality(ctx.vr, summary)
    if summary.fidelity_stopped_early:
        run.notes.append(f"{v.name}: its fidelity figures come from part of the corpus, "
                         f"{summary.fidelity_stopped_early}")
    if summary.suite_skipped:
        run.notes.append(f"{v.name}: task suite and load test skipped: its mean KL to the baseline, read first, "
                         "lies above the limit, so the gate rejects it whatever its score (gate.fail_fast: false "
                         "measures it in full)")
    ctx.vr.load = load_summary_from(ctx.lt_d, v.root / "loadtest") if ctx.lt_d else None


def _fill_quality(vr, s) -> None:
    vr.score = s.score
    vr.score_by_category = s.score_by_category
    vr.recovery = 1.0 if vr.is_baseline else s.recovery
    vr.perplexity = s.perplexity
    vr.fidelity_agreement = s.fidelity_agreement
    vr.fidelity_mean_kl = s.fidelity_mean_kl
    vr.fidelity_p95_kl = s.fidelity_p95_kl
    vr.fidelity_top1_agreement = s.fidelity_top1_agreement
    vr.fidelity_prefix_match_mean = s.fidelity_prefix_match_mean
    vr.fidelity_source = s.fidelity_source
    st = s.stats
    if st is not None:
        vr.score_ci = (st.score.low, st.score.high)
        if st.recovery is not None and not vr.is_baseline:
            vr.recovery_ci, vr.p_value = (st.recovery.low, st.recovery.high), st.p_value
    vr.behaviour = s.behaviour
    vr.eval = {k: v for k, v in s.model_dump(mode="json").items() if k not in ("config", "versions", "platform")}


def load_summary_from(lt: dict, run_dir: Path | None = None) -> Any:
    """Map a LoadTestResult (as JSON) onto the report's LoadSummary, with latency samples from its records."""
    from packager.report.loadsummary import from_loadtest_result

    return from_loadtest_result(lt, run_dir)


# ------------------------------------------------------------------ the baseline's noise floor


def noise_floor(ctx: VariantContext) -> None:
    """The baseline served in the other dtype, measured against its own items (packager.evaluate.noise_floor):
    what the KL limit of the quality gate is a multiple of. Once per baseline content, suite and settings (cached);
    a failure is a note, and the gate then has no KL test."""
    run, v, cfg = ctx.run, ctx.v, ctx.cfg
    if v.recipe is not None or not cfg.gate.kl_test:
        return
    from packager.errors import PackagerError

    # Measured where the variants are: along the baseline's fidelity-corpus answers, else its suite answers.
    items = run.baseline_fidelity_items or run.baseline_items
    if not capabilities(ctx.vr.engine).prompt_logprobs or not items:
        run.notes.append("noise floor not measured: the baseline has no teacher-forced logprobs; no KL test")
        return
    key = cache_key("noise_floor", v.digest, run.suite.sha256, cfg.eval, cfg.engine, ctx.vr.dtype,
                    cfg.gate.noise_floor_items, bool(run.baseline_fidelity_items))
    found = ctx.cache.get("noise_floor", key)
    if found is None:
        from packager.evaluate.noise_floor import measure_noise_floor

        try:
            with run.timed(f"{v.name}/noise_floor"):
                nf = measure_noise_floor(cast(Path, v.model_dir), cfg, ctx.vr.dtype or "float32",
                                         items, log_path=v.root / "noise_floor.log",
                                         max_items=cfg.gate.noise_floor_items, show_progress=run.show_progress)
        except PackagerError as e:
            run.notes.append(f"noise floor not measured ({e}); no KL test")
            run.log(f"[yellow]noise floor not measured:[/] {e}")
            return
        found = nf.model_dump(mode="json")
        ctx.cache.put("noise_floor", key, found)
        run.log(f"{v.name}: noise floor (served in {nf.reference_dtype} against {nf.served_dtype}): mean KL "
                f"{num(nf.mean_kl, '.2g')}, top-1 agreement {pct(nf.top1_agreement)} over {nf.positions} positions")
    run.noise_floor = found


# ------------------------------------------------------------------ facts of a checkpoint


def _weights_size(model_dir: Path | None) -> int | None:
    if model_dir is None:
        return None
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")) or dir_size_bytes(model_dir)


def _gguf_quant(model_dir: Path) -> str | None:
    from packager.gguf.artifact import read_export_record

    rec = read_export_record(model_dir) or {}
    return rec.get("quant") or rec.get("quant_type")


def _param_count(model_dir: Path | None) -> int | None:
    from packager.compress.checkpoint import parameter_count_or_none

    return parameter_count_or_none(model_dir)
