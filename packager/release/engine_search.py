"""The release's engine-argument search step (`tune`): after a variant is described and before its cache is looked
up, try the candidates of packager.engines.tune on the variant's bare engine at one load, each a short load test
judged by the SLO, within `engine_search.budget_s`; the bento (and the load test through it) then runs with the
chosen arguments, and the report row says what was tried and why the winner won.

With `engine_search.only_passing` (the default) a variant other than the baseline is evaluated first, with
packager's own arguments, and searched only if the quality gate passes it: the arguments change how fast it
serves, not what it answers, and a variant the gate rejects cannot be recommended at any speed.

Cached per variant content, candidates, load and settings: a rerun reuses the search. With `engine_search.scope:
engine` (the default) only the first variant of each engine is searched; the later ones take its arguments.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

from packager.engines.select import for_backend
from packager.release.cache import cache_key

if TYPE_CHECKING:  # pragma: no cover
    from packager.config import EngineConfig
    from packager.engines.tune import EngineCandidate, EngineSearch, EngineTrial
    from packager.loadtest.config import LoadTestConfig
    from packager.release.context import VariantContext


def tune(ctx: "VariantContext") -> None:
    """Search the variant's engine arguments when engine_search covers its engine; sets ctx.engine. With
    `engine_search.only_passing` a variant's own search waits for its evaluation (ctx.search_deferred; the measure
    step runs it through `search_now` once the quality gate passes the variant)."""
    run, v, cfg = ctx.run, ctx.v, ctx.cfg
    es = cfg.engine_search
    if not es.enabled or ctx.vr.engine not in es.engines:
        return
    prof = run.lt_cfg.profile
    if prof.kind not in ("sweep", "concurrency", "rate"):
        run.notes.append(f"{v.name}: engine arguments not searched: the load test's {prof.kind} profile has no "
                         "single load to try them at")
        return
    reused = _reused(ctx) if es.scope == "engine" else None
    if reused is None and es.only_passing and v.recipe is not None:
        ctx.search_deferred = True
        run.log(f"{v.name}: engine arguments searched after its evaluation, if the quality gate passes it")
        return
    _take(ctx, reused or _searched(ctx))


def search_now(ctx: "VariantContext") -> None:
    """The deferred search of a variant the gate passed (see `tune`); its load-test cache key then names the
    arguments chosen."""
    ctx.search_deferred = False
    _take(ctx, _searched(ctx))


def not_searched(ctx: "VariantContext", why: str) -> None:
    """A deferred search dropped: the gate rejects the variant, which keeps packager's own arguments."""
    ctx.search_deferred = False
    ctx.run.log(f"{ctx.v.name}: engine arguments not searched, the quality gate rejects it ({why})")
    ctx.run.notes.append(f"{ctx.v.name}: its engine arguments were not searched, the quality gate rejects it; it "
                         "was served with packager's own")


def _take(ctx: "VariantContext", search: "EngineSearch") -> None:
    from packager.engines.tune import apply

    run, v = ctx.run, ctx.v
    ctx.engine = apply(ctx.cfg.engine, search.chosen)
    ctx.vr.engine_search = search.model_dump(mode="json")
    run.log(f"{v.name}: engine arguments: {search.reason}")
    if search.chosen is not None:  # the first of its engine in this release (a later one finds it there)
        run.engine_searches.setdefault(ctx.vr.engine, (v.name, search))


def _searched(ctx: "VariantContext") -> "EngineSearch":
    """The variant's own search: from the step cache, or its trials run now."""
    from packager.engines.tune import EngineSearch, candidates, choose, search_load
    from packager.hardware import cpu_threads

    run, v, cfg = ctx.run, ctx.v, ctx.cfg
    es, lt = cfg.engine_search, run.lt_cfg
    prof = lt.profile
    base_engine = for_backend(cfg.engine, ctx.vr.engine)
    single = getattr(prof, "users", None) or getattr(prof, "requests_per_s", None)
    load = search_load(es.load, list(prof.values), 1.0) if prof.kind == "sweep" else float(single or 1.0)
    cands = candidates(ctx.vr.engine, base_engine, cpu_threads())
    key = cache_key("engine_search", v.digest, [c.model_dump() for c in cands], load, es, lt, cfg.engine, cfg.slo)
    found = ctx.cache.get("engine_search", key)
    if found is not None:
        return EngineSearch.model_validate(found)
    unit = "requests_per_s" if getattr(prof, "mode", prof.kind) == "rate" else "concurrency"  # load_words
    search = EngineSearch(backend=ctx.vr.engine, load=load, load_unit=unit, probe_duration_s=es.probe_duration_s,
                          warmup_s=es.warmup_s, budget_s=es.budget_s)
    with run.timed(f"{v.name}/engine_search"):
        _run_trials(ctx, search, cands, base_engine)
    search.chosen, search.reason = choose(search.trials, es.min_gain)
    ctx.cache.put("engine_search", key, search.model_dump(mode="json"))
    return search


def _reused(ctx: "VariantContext") -> "EngineSearch | None":
    """The search an earlier variant of the same engine ran in this release (same model, same machine, same
    load), as this variant's record: no trials of its own; None when none ran yet."""
    first = ctx.run.engine_searches.get(ctx.vr.engine)
    if first is None:
        return None
    name, done = first
    return done.model_copy(update={
        "trials": [], "not_tried": [], "wall_s": 0.0, "reused_from": name,
        "reason": f"the arguments searched for {name} on the same engine ({done.chosen.label}); "
                  "engine_search.scope: variant searches each variant"})


def _run_trials(ctx: "VariantContext", search: "EngineSearch", cands: list["EngineCandidate"],
                base_engine: "EngineConfig") -> None:
    """Each candidate in turn while the budget lasts (the first trial's time says what one costs)."""
    from packager.engines.tune import apply

    t0 = time.monotonic()
    for i, cand in enumerate(cands):
        spent = time.monotonic() - t0
        per_trial = search.trials[0].wall_s if search.trials else 0.0
        if search.trials and spent + per_trial > search.budget_s:
            search.not_tried = [c.label for c in cands[i:]]
            break
        search.trials.append(_trial(ctx, cand, apply(base_engine, cand), search.load, i))
        t = search.trials[-1]
        what = t.error or (f"{t.output_tokens_per_s:.1f} output tok/s, TTFT p95 {t.ttft_ms_p95:.0f} ms, "
                           f"SLO {'met' if t.meets_slo else 'missed'}")
        ctx.run.log(f"{ctx.v.name}: engine arguments {cand.label}: {what}")
    search.wall_s = round(time.monotonic() - t0, 1)


def _trial(ctx: "VariantContext", cand: "EngineCandidate", engine: "EngineConfig", load: float,
           index: int) -> "EngineTrial":
    """One candidate: start the bare engine with it, one short load test at `load`, stop."""
    from packager.engines.select import server_for_model
    from packager.engines.tune import EngineTrial
    from packager.errors import PackagerError
    from packager.loadtest.runner import run_loadtest

    run, v, cfg = ctx.run, ctx.v, ctx.cfg
    es = cfg.engine_search
    out = v.root / "engine_search" / f"{index:02d}"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        with server_for_model(cast(Path, v.model_dir), engine, served_name=v.name,
                              log_path=out.parent / f"{index:02d}-engine.log") as srv:
            r = run_loadtest(srv.base_url, trial_config(run.lt_cfg, load, es.probe_duration_s, index, es.warmup_s),
                             cfg.slo, cfg.pricing, out, log=lambda m: None)
    except (PackagerError, OSError) as e:
        return EngineTrial(candidate=cand, error=f"{type(e).__name__}: {e}"[:400], wall_s=time.monotonic() - t0)
    ph = r.phases[0]
    if ph.requests_sent == 0:  # every request started in the warm-up: the first wave outlasted the trial
        return EngineTrial(candidate=cand, error=f"no request started after the {es.warmup_s:g} s "
                           "warm-up and within the probe; lengthen engine_search.probe_duration_s",
                           wall_s=round(time.monotonic() - t0, 1))
    return EngineTrial(candidate=cand, output_tokens_per_s=round(ph.output_token_throughput_per_s, 2),
                       ttft_ms_p95=ph.ttft.p95_ms if ph.ttft else None, meets_slo=ph.meets_slo,
                       wall_s=round(time.monotonic() - t0, 1))


def trial_config(lt: "LoadTestConfig", load: float, probe_s: float, index: int,
                 warmup_s: float = 0.0) -> "LoadTestConfig":
    """One trial's load test: a step of the sweep at `load` (or the single-load profile itself), `warmup_s` of
    load left out of the figures and then `probe_s` measured, its own prompts (another seed), no capacity search."""
    from packager.loadtest.config import KneeSearch, LoadTestConfig
    from packager.loadtest.knee import probe_config

    total = warmup_s + probe_s
    if lt.profile.kind == "sweep":
        data = probe_config(lt, load, total, index=500 + index).model_dump()
    else:
        data = lt.model_dump()
        data["profile"] = {**data["profile"], "duration_s": total}
        data.update(knee=KneeSearch().model_dump(), max_duration_s=total, seed=lt.seed + 500 + index)
    data["warmup_s"] = warmup_s
    return LoadTestConfig.model_validate(data)
