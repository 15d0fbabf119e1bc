"""Engine-argument search: which arguments of a variant's engine serve the most output tokens/s at one load within
the SLO, tried on the bare engine before the release builds the bento with the winner.

What is tried (`candidates`), packager's own arguments first, then one change at a time, most promising first,
as far as the time budget goes:

* llama.cpp (`llama-server`, restarts in seconds): one thread fewer than the CPUs where there are 4 or more
  (the bento's gateway and the HTTP server share them), micro-batches of 256 and 1024 tokens (prompt processing:
  llama.cpp's default is 512), flash attention on (llama.cpp picks it by itself otherwise), micro-batches of 128;
* vLLM (minutes per start on a small CPU, so searched only when `engine_search.engines` names it): on a GPU host
  with 8 CPUs or more, first several API server processes in front of the engine (`api_server_count`, a quarter
  of the CPUs, at most 4); then half and twice the sequences it batches (`max_num_seqs`), and a token budget per
  scheduler step (`--max-num-batched-tokens`) of 2048 and 8192.

Each trial starts the engine with the candidate's arguments, runs one short load test at the search load (the same
locust load test and SLO judgement as a step of the release's sweep; fresh prompts per trial), and stops it
(packager.release.steps.tune). `choose` keeps packager's arguments unless a candidate that meets the SLO gives at
least `min_gain` more output tokens/s: a smaller difference is within the run-to-run noise of short probes, and
an argument picked on noise would be written into the bento for nothing.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:  # pragma: no cover
    from packager.config import EngineConfig

DEFAULTS_LABEL = "packager's arguments"


class EngineCandidate(BaseModel):
    """One set of engine arguments: a change of max_num_seqs and arguments added after packager's own."""

    label: str
    max_num_seqs: int | None = None
    api_server_count: int | None = None
    extra_args: list[str] = Field(default_factory=list)


class EngineTrial(BaseModel):
    """One candidate, measured (or why not)."""

    candidate: EngineCandidate
    output_tokens_per_s: float | None = None
    ttft_ms_p95: float | None = None
    meets_slo: bool | None = None
    wall_s: float = 0.0
    error: str | None = None


class EngineSearch(BaseModel):
    """The search of one variant: where it ran, what was tried, what was chosen and why."""

    backend: str
    load: float
    load_unit: str  # "concurrency" (users) or "requests_per_s", as packager.core.formatting.load_words reads it
    probe_duration_s: float
    warmup_s: float = 0.0  # of each trial, before the probe: load not measured
    budget_s: float
    trials: list[EngineTrial] = Field(default_factory=list)
    not_tried: list[str] = Field(default_factory=list)  # candidates the budget left out
    chosen: EngineCandidate | None = None
    reason: str = ""
    wall_s: float = 0.0
    reused_from: str | None = None  # the variant whose search chose these arguments (engine_search.scope: engine)


def candidates(backend: str, engine: "EngineConfig", cpus: int) -> list[EngineCandidate]:
    """packager's own arguments, then one change at a time, in the order they are tried."""
    out = [EngineCandidate(label=DEFAULTS_LABEL)]
    if backend == "llamacpp":
        if cpus >= 4:  # with 2 or 3 CPUs one fewer is a third or half of the compute (-32 to -39% at 1 stream)
            out.append(EngineCandidate(label=f"--threads {cpus - 1}", extra_args=["--threads", str(cpus - 1)]))
        for label, args in (("--ubatch-size 256", ["--ubatch-size", "256"]),
                            ("--ubatch-size 1024", ["--ubatch-size", "1024"]),
                            ("--flash-attn on", ["--flash-attn", "on"]),
                            ("--ubatch-size 128", ["--ubatch-size", "128"])):
            out.append(EngineCandidate(label=label, extra_args=args))
    elif backend == "vllm":
        # On a GPU one API server process was the knee (an 8B model on an H100: TTFT past the SLO at about 200
        # users, met up to 512 behind 4; benchmarks/results/gpu_speed_8b_frontends.json), so it is tried first.
        # A CPU engine shares its few cores with them: not tried there.
        servers = min(4, cpus // 4)
        if engine.target == "gpu" and servers > engine.api_server_count:
            out.append(EngineCandidate(label=f"api_server_count {servers}", api_server_count=servers))
        seqs = engine.max_num_seqs
        for n in (max(1, seqs // 2), seqs * 2):
            if n != seqs:
                out.append(EngineCandidate(label=f"max_num_seqs {n}", max_num_seqs=n))
        for tokens in (2048, 8192):
            out.append(EngineCandidate(label=f"--max-num-batched-tokens {tokens}",
                                       extra_args=["--max-num-batched-tokens", str(tokens)]))
    return out


def apply(engine: "EngineConfig", cand: EngineCandidate | None) -> "EngineConfig":
    """The engine settings with the candidate's changes (the same settings for None or packager's own)."""
    if cand is None or (cand.max_num_seqs is None and cand.api_server_count is None and not cand.extra_args):
        return engine
    update: dict[str, object] = {"extra_args": [*engine.extra_args, *cand.extra_args]}
    if cand.max_num_seqs is not None:
        update["max_num_seqs"] = cand.max_num_seqs
    if cand.api_server_count is not None:
        update["api_server_count"] = cand.api_server_count
    return engine.model_copy(update=update)


def choose(trials: list[EngineTrial], min_gain: float) -> tuple[EngineCandidate | None, str]:
    """(the chosen candidate, a sentence saying why). packager's arguments stay unless a candidate meeting the SLO
    gives more than `min_gain` more output tokens/s than they did (or they failed, or missed the SLO where another
    met it); None when nothing was measured."""
    ok = [t for t in trials if t.error is None and t.output_tokens_per_s is not None]
    if not ok:
        return None, "no trial was measured: the bento keeps packager's arguments"
    base = next((t for t in ok if t.candidate.label == DEFAULTS_LABEL), None)
    meeting = [t for t in ok if t.meets_slo]
    pool = meeting or ok
    best = max(pool, key=lambda t: t.output_tokens_per_s or 0.0)
    tps = best.output_tokens_per_s or 0.0
    if base is None:
        return best.candidate, (f"packager's arguments could not be measured; {best.candidate.label} gave "
                                f"{tps:.1f} tok/s")
    base_tps = base.output_tokens_per_s or 0.0
    if best is base:
        return base.candidate, f"packager's arguments gave the most output tokens/s ({base_tps:.1f})"
    if meeting and not base.meets_slo:
        return best.candidate, (f"{best.candidate.label} met the SLO at {tps:.1f} tok/s where packager's arguments "
                                f"missed it")
    gain = tps / base_tps - 1 if base_tps > 0 else math.inf
    if gain < min_gain:
        return base.candidate, (f"packager's arguments kept: the best other, {best.candidate.label}, gave {tps:.1f} "
                                f"tok/s against {base_tps:.1f} ({gain * 100:+.1f}%, below the {min_gain * 100:g}% "
                                f"a change must gain)")
    return best.candidate, (f"{best.candidate.label}: {tps:.1f} output tok/s against {base_tps:.1f} with packager's "
                            f"arguments ({gain * 100:+.1f}%)")


def search_load(explicit: float | None, sweep_values: list[float] | None, fallback: float) -> float:
    """The load trials run at: the configured one, else the sweep's highest step (the arguments that carry the
    most load), else `fallback` (the load test's own single load). Not the expected load: ranking the variants at
    another expected load is read from the measurements a release already has, and re-measures nothing."""
    if explicit is not None:
        return explicit
    return max(sweep_values) if sweep_values else fallback
