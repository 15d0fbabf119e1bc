"""What a release will take, decided before any work: the default load test, the time estimate, and whether an
expected load can be measured by the configured load test."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from packager.config import RunConfig
from packager.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from packager.loadtest.config import LoadTestConfig

# Seconds each step takes for the bundled model on a 2-core CPU, used for the up-front estimate: a default release
# measured them (benchmarks/results/release_cpu_default.json), rounded up by a fifth or more, as a start-up or a
# search varies between runs (w8a8_int8: the built-in recipe's SmoothQuant, GPTQ rounding and mixed-precision search,
# 285 s; gptq: the built-in recipe, 256 samples and its mixed-precision search; gguf: conversion and quantization,
# 63 s with the importance matrix of a 4-bit type; awq: the built-in awq-w4a16, 374 s in
# benchmarks/results/quality_awq.json). Serving starts with the bento: vLLM's engine takes most of it
# (86-90 s), llama-server a few seconds. The noise floor's float32 engine runs eager: 52 s on 2 AMD EPYC cores
# (benchmarks/results/release_cpu_default_epyc.json), 148 s when it was compiled.
_ESTIMATE_S: dict[str, Any] = {"serve_start": {"vllm": 110.0, "llamacpp": 15.0}, "register": 10.0,
                               "noise_floor": 60.0,
                               "compress": {"gptq": 660.0, "awq": 450.0, "w8a8_int8": 330.0, "fp8": 30.0, "prune": 60.0,
                                            "distill": 300.0, "gguf": 70.0}}
# Evaluation, per unit of work (2 cores, concurrency 8; measured: 0.10 s a suite item through vLLM, 0.19 through
# llama-server, 0.36 s a corpus answer through the bento at 8 concurrent requests, 0.73 of that at 32
# (eval.reference_concurrency, bare engine), 0.088 s a vLLM read, 0.39 s a GGUF read, 0.865 of that with the shared
# prompt start kept, benchmarks/results/gguf_topk_prefix.json): a suite item; a fidelity prompt
# answered by the baseline (32 greedy tokens and their top-k); the same answer read teacher-forced by a variant (one
# prefill; a GGUF's read by llama.cpp in-process, packager.gguf.topk); perplexity and the behaviour suite together.
_EVAL_S = {"item": 0.2, "answer": 0.3, "read": 0.1, "read_gguf": 0.37, "fixed": 20.0}
_DEFAULT_SIZES = {"suite": 430, "fidelity_corpus": 557}
# A variant's fidelity reading that may stop once its KL verdict is settled (gate.settle_fidelity) reads at least
# 100 answers and looks again every 50: the estimate takes 150 (the default release's four readings all settled
# at 100, benchmarks/results/release_cpu_default.json; one near the KL limit reads more, up to the whole corpus).
_SETTLED_READS = 150
# The steps above were measured on the bundled model (134,515,008 parameters). For another model the steps whose
# work grows with the weights (compression, the evaluation's items and answers, the noise floor) are scaled by its
# parameter count against this (`model_scale`); an engine start, a search's budget and a load test are not.
_BUNDLED_PARAMS = 134_515_008


def model_scale(model: str) -> float:
    """How much more work a step that grows with the weights does for `model` than for the bundled model: the
    ratio of parameter counts (read from a checkpoint directory's safetensors headers), 1 for the bundled model
    or a model not yet on disk (a registry reference), or when the headers cannot be read."""
    from pathlib import Path

    from packager.compress.checkpoint import parameter_count_or_none

    d = Path(model).expanduser()
    if model == "default" or not d.is_dir():
        return 1.0
    n = parameter_count_or_none(d)
    return n / _BUNDLED_PARAMS if n else 1.0


def default_loadtest() -> dict[str, Any]:
    """A bounded default: a concurrency sweep of 1, 4 and 16 users, 20 s each, 128 tokens in, 32 to 96 out (64 on
    average), then the capacity search between its steps: at most 5 probes of 10 s (50 s of load per variant). Five:
    on vLLM CPU every step met the SLOs, so two probes go to doubling the load (32, 64 users), and the knee near 37
    users then needs three more to be bracketed within 10% (benchmarks/results/knee_guided.json).

    Why not exactly 64 out: closed-loop users that all start at once and all ask for the same lengths stay in
    lockstep, every wave's prompts prefilled together (benchmarks/results/lockstep.json). Lengths of 32-96 let them
    drift apart after the first wave. That first wave is no burst: the users of a step start one by one over its
    first quarter (`ramp_fraction`), and all of their requests are judged. Leaving the first seconds out instead
    (`warmup_s`) left probes at 22-64 users on llama-server with no request to judge, their first wave outlasting
    them, and a capacity read from the few requests that did start would be too high."""
    return {
        "profile": {"kind": "sweep", "mode": "concurrency", "values": [1, 4, 16], "step_duration_s": 20},
        "knee": {"enabled": True, "probe_duration_s": 10, "budget_s": 50, "max_probes": 5, "precision": 0.1},
        "prompts": {"kind": "synthetic", "input_tokens": {"mean": 128},
                    "output_tokens": {"dist": "uniform", "mean": 64, "min": 32, "max": 96}},
        "max_duration_s": 120,
        "max_requests": 5000,
    }


def loadtest_seconds(lt: "LoadTestConfig") -> float:
    """What one load test is planned to take (its dispatch, else its cap) plus 10 s to drain, and its capacity
    search's budget (each probe drained 5 s)."""
    knee = lt.knee.budget_s + 5 * lt.knee.max_probes if lt.knee.enabled else 0.0
    return (lt.profile.planned_dispatch_s() or lt.max_duration_s) + 10 + knee


def check_expected_load(expected_load: float | None, lt_cfg) -> None:
    """Refuse, before any work, an expected load the configured load test cannot measure: it needs a sweep
    whose highest step reaches it (the recommendation reads cost and SLO at the step it falls on)."""
    if expected_load is None:
        return
    from packager.report.analysis import falls_on, load_words
    from packager.report.loadsummary import SWEEP_UNITS

    prof = lt_cfg.profile
    if prof.kind != "sweep":
        raise ConfigError(f"expected_load={expected_load:g} needs a load-test sweep (loadtest.profile.kind: sweep), "
                          f"but the profile is {prof.kind!r}: there is one load, so no step to rank the variants at.")
    top = max(prof.values)
    if not falls_on(top, expected_load):
        unit = SWEEP_UNITS[prof.mode]
        raise ConfigError(f"expected_load={load_words(expected_load, unit)} is above the highest step of the load-test "
                          f"sweep ({load_words(top, unit)}); add a step of at least {expected_load:g} to "
                          "loadtest.profile.values.")


def estimate_seconds(cfg: RunConfig, recipes: list[str], loadtest_s: float, scale: float = 1.0) -> float:
    order: list[str | None] = [None, *recipes]
    return sum(sum(step_seconds(r, loadtest_s, cfg, searched=s, scale=scale).values())
               for r, s in zip(order, searches(cfg, order)))


def searches(cfg: RunConfig | None, recipes: list[str | None]) -> list[bool]:
    """Per variant in release order (None: the baseline): whether its engine-argument search runs. With
    engine_search.scope "engine" only the first variant of each searched engine runs one."""
    es = (cfg or RunConfig()).engine_search
    seen: set[str] = set()
    out = []
    for r in recipes:
        eng = _served_engine(r)
        out.append(es.enabled and eng in es.engines and (es.scope == "variant" or eng not in seen))
        seen.add(eng)
    return out


def step_seconds(recipe: str | None, loadtest_s: float, cfg: RunConfig | None = None,
                 searched: bool = True, scale: float = 1.0) -> dict[str, float]:
    """The estimated seconds of one variant's steps (the baseline's compress is free; only the baseline measures
    the noise floor; `searched`: whether its engine-argument search runs, see `searches`; `scale`: the model's
    size against the bundled model's, see `model_scale`): the up-front estimate and the weights of the release's
    progress bar."""
    gate = cfg.gate if cfg is not None else None
    floor = recipe is None and gate is not None and gate.kl_test
    return {"compress": scale * _compress_seconds(recipe) if recipe else 0.0, "register": _ESTIMATE_S["register"],
            "tune": _search_seconds(recipe, cfg) if searched else 0.0,
            "measure": _ESTIMATE_S["serve_start"][_served_engine(recipe)] + loadtest_s
            + evaluate_seconds(cfg, baseline=recipe is None, gguf=_served_engine(recipe) == "llamacpp", scale=scale),
            "noise_floor": scale * _ESTIMATE_S["noise_floor"] if floor else 0.0}


def _search_seconds(recipe: str | None, cfg: RunConfig | None) -> float:
    """The engine-argument search's budget where it runs (the variant's engine)."""
    es = (cfg or RunConfig()).engine_search
    return es.budget_s if es.enabled and _served_engine(recipe) in es.engines else 0.0


def _served_engine(recipe: str | None) -> str:
    """The engine a variant is served by, told by its recipe's name: a GGUF recipe by llama.cpp, the rest by vLLM."""
    return "llamacpp" if recipe is not None and "gguf" in recipe else "vllm"


def evaluate_seconds(cfg: RunConfig | None, baseline: bool, gguf: bool = False, scale: float = 1.0) -> float:
    """Estimated seconds of one evaluation: the suite's items, then the fidelity corpus (answered by the baseline,
    read by a variant: a GGUF's more slowly; a variant's reading that may stop once settled, as if it stopped after
    _SETTLED_READS answers), from the configured sizes (the default suite and corpus when not capped)."""
    ev = (cfg or RunConfig()).eval
    items = min(ev.max_items or _DEFAULT_SIZES["suite"], _DEFAULT_SIZES["suite"]) \
        if ev.suite == "default" else (ev.max_items or _DEFAULT_SIZES["suite"])
    prompts = 0 if not ev.fidelity_corpus else (ev.fidelity_max_prompts or _DEFAULT_SIZES["fidelity_corpus"])
    if not baseline and _reading_may_stop(cfg or RunConfig()):
        prompts = min(prompts, _SETTLED_READS)
    per_prompt = _EVAL_S["answer"] if baseline else _EVAL_S["read_gguf" if gguf else "read"]
    return round(_EVAL_S["fixed"] + scale * (items * _EVAL_S["item"] + prompts * per_prompt))


def _reading_may_stop(cfg: RunConfig) -> bool:
    """Whether a variant's fidelity reading may stop once settled: a limit given, or the gate's own (a KL test
    against a measured noise floor, with gate.settle_fidelity)."""
    g = cfg.gate
    return bool(cfg.eval.fidelity_stop_kl) or (g.settle_fidelity and g.kl_test)


def _compress_seconds(recipe: str) -> float:
    """The measured time of the recipe's kind (matched by name), or 120 s for a recipe of unknown kind."""
    for kind, s in _ESTIMATE_S["compress"].items():
        if kind.split("_")[0] in recipe.replace("-", "_"):
            return s
    return 120.0
