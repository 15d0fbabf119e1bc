"""The baseline's own noise floor: how far the SAME model moves when only its serving dtype changes.

A compressed variant is judged against this floor, not against zero: serving the bundled model in float32
instead of bfloat16 already leaves a mean KL of about 0.0004 and changes about a quarter of its greedy answers.
A compression that moves the model only as much as a dtype change is indistinguishable from serving noise; one
that moves it tens of times more is visible as a change of the model.

`measure_noise_floor` serves the baseline a second time in the other precision (float32 <-> bfloat16; float16
counts as a half precision too) and measures, along the baseline's own greedy outputs, the same teacher-forced
figures as every variant (mean and p95 KL over the top-k, top-1 agreement, greedy-prefix match), on the same
answers the variants are compared along: the fidelity corpus's (packager.evaluate.fidelity_corpus), or the suite's
when no corpus is used. Only prompt logprobs are asked for, no generation, so each answer costs one prefill; a
bfloat16 that a CPU emulates makes that prefill slow (about 4 s an item over the full vocabulary on 2 AVX2 cores),
so a release measures the floor on `gate.noise_floor_items` answers spread evenly over the corpus: a mean over
about a thousand positions.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from packager.config import RunConfig
from packager.errors import ConfigError
from packager.evaluate.client import OpenAIClient
from packager.evaluate.fidelity import ItemResult, teacher_forced_fidelity
from packager.evaluate.fidelity_corpus import spread


class NoiseFloor(BaseModel):
    """The fidelity figures of the baseline served in `reference_dtype` against itself served in `served_dtype`."""

    served_dtype: str
    reference_dtype: str
    mean_kl: float | None = None
    p95_kl: float | None = None
    top1_agreement: float | None = None
    prefix_match_mean: float | None = None  # tokens of the baseline's greedy answers the other dtype keeps
    full_match: float | None = None  # answers the other dtype reproduces entirely
    positions: int = 0
    items: int = 0


def reference_dtype(served: str) -> str:
    """The other precision: float32 for a half-precision baseline, bfloat16 for a float32 one."""
    return "bfloat16" if served == "float32" else "float32"


def measure_noise_floor(model_dir: str | Path, cfg: RunConfig, served_dtype: str,
                        baseline_items: dict[str, ItemResult], log_path: Path | None = None,
                        max_items: int | None = None, show_progress: bool = False) -> NoiseFloor:
    """Serve `model_dir` (the baseline, on vLLM) in the other dtype and measure its fidelity to `baseline_items`
    (`max_items` of those that carry top-k logprobs, spread evenly in their order; all when None), under a
    progress bar when `show_progress`."""
    from packager.engines.select import capabilities, select_engine, server_for_model

    other = reference_dtype(served_dtype)
    # eager: a few dozen teacher-forced reads do not repay vLLM's compilation (about a minute on 2 cores)
    engine = cfg.engine.model_copy(update={"dtype": other, "enforce_eager": True})
    if not capabilities(select_engine(model_dir, engine).backend).prompt_logprobs:
        raise ConfigError(f"{model_dir} is served by an engine without prompt logprobs: no noise floor to measure.")
    usable = {k: v for k, v in baseline_items.items() if v.topk_logprobs and not v.error}
    if max_items is not None:
        usable = dict(spread(list(usable.items()), max_items))
    if not usable:
        raise ConfigError("The baseline's items carry no top-k logprobs (was it scored through an engine that gives "
                          "them?): no noise floor to measure.")
    with server_for_model(model_dir, engine, served_name="noise-floor", log_path=log_path) as srv:
        client = OpenAIClient(srv.base_url, timeout_s=cfg.eval.request_timeout_s)
        try:
            f = teacher_forced_fidelity(usable, client, client.model_id(), cfg.eval.fidelity_top_k,
                                        cfg.eval.concurrency,
                                        progress=f"noise floor ({other})" if show_progress else None)
        finally:
            client.close()
    return NoiseFloor(served_dtype=served_dtype, reference_dtype=other, mean_kl=f.mean_kl, p95_kl=f.p95_kl,
                      top1_agreement=f.top1_agreement, prefix_match_mean=f.prefix_match_mean,
                      full_match=f.full_match, positions=f.positions, items=len(usable))
