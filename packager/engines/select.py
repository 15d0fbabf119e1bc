"""THE one place that decides which engine serves a model artifact, and what that engine can do.

Every caller (the evaluator, the release, the bento build, the bento arguments, the report) asks here instead of
re-deriving the rule from file names or backend strings:

* a GGUF artifact (a directory holding model.gguf, from `packager gguf export`) is served by llama.cpp, whatever
  backend was configured; any other model directory (safetensors) by vLLM, and never by llama.cpp;
* what each engine offers: prompt logprobs (perplexity and top-k KL to the baseline need them), the targets it
  runs on, the name people read in reports.

Heavy libraries are imported only by the servers themselves, so importing this module is cheap.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from packager.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from packager.config import EngineConfig, RunConfig
    from packager.engines.base import LocalServer
    from packager.gguf.topk import GgufTopk

VLLM = "vllm"
LLAMACPP = "llamacpp"


@dataclass(frozen=True)
class EngineCapabilities:
    """What one engine can do, as the rest of packager needs to know it."""

    name: str  # the backend name in configurations and bento arguments
    label: str  # the name people read
    artifact: str  # the model format it serves: "safetensors" or "gguf"
    prompt_logprobs: bool  # teacher-forced logprobs of the prompt (perplexity, top-k KL to the baseline)
    targets: tuple[str, ...]  # hardware targets it runs on
    # the top-k KL to the baseline is read from its artifact in this process instead (`local_topk`)
    local_topk: bool = False
    eval_notes: tuple[str, ...] = ()  # figures an evaluation through it cannot measure, and why
    # the most concurrent requests at which its greedy answers repeat from run to run (None: any number)
    reproducible_concurrency: int | None = None


ENGINES: dict[str, EngineCapabilities] = {
    VLLM: EngineCapabilities(VLLM, "vLLM", "safetensors", prompt_logprobs=True, targets=("cpu", "gpu")),
    LLAMACPP: EngineCapabilities(
        LLAMACPP, "llama.cpp", "gguf", prompt_logprobs=False, targets=("cpu",), local_topk=True,
        eval_notes=("perplexity: not measured: llama.cpp's server (llama-server) returns no prompt logprobs",
                    "top-k KL to the baseline: read from the same GGUF by llama.cpp in the evaluating process "
                    "(llama-cpp-python, the llama.cpp source llama-server is built from), since the server gives "
                    "no prompt logprobs"),
        # llama-server's greedy answers depend on which requests decode together: two passes of the 430-item
        # suite on one Q8_0 server differed in 19 answers at 8 concurrent requests (11 without the prompt cache),
        # in none one at a time, which took no longer on 2 cores (69-70 s against 72-82 s;
        # benchmarks/results/llamacpp_repeat.json)
        reproducible_concurrency=1),
}


def capabilities(backend: str) -> EngineCapabilities:
    """The capabilities of a backend by name; a ConfigError naming the known ones otherwise."""
    try:
        return ENGINES[backend]
    except KeyError:
        raise ConfigError(f"unknown engine {backend!r}; known engines: {', '.join(ENGINES)}") from None


def engine_label(backend: str) -> str:
    """`vLLM`, `llama.cpp`: the name people read (an unknown name is shown as given)."""
    caps = ENGINES.get(backend)
    return caps.label if caps is not None else backend


def is_gguf(model_dir: str | Path | None) -> bool:
    """Whether a model directory is a GGUF artifact (holds model.gguf)."""
    from packager.gguf.artifact import is_gguf_artifact

    return model_dir is not None and is_gguf_artifact(model_dir)


def engine_for(model_dir: str | Path | None) -> str:
    """The backend that serves this model directory: llama.cpp for a GGUF artifact, vLLM otherwise."""
    return LLAMACPP if is_gguf(model_dir) else VLLM


def select_engine(model_dir: str | Path, engine: "EngineConfig",
                  log: Optional[Callable[[str], None]] = None) -> "EngineConfig":
    """The engine settings that serve `model_dir`: `engine` with its backend set to the one the artifact needs.

    A GGUF artifact goes to llama.cpp whatever backend was configured (said through `log` when that overrides
    the configuration); a directory without model.gguf cannot be served by llama.cpp (ConfigError with what
    to do)."""
    backend = engine_for(model_dir)
    if backend == LLAMACPP:
        if engine.backend != LLAMACPP:
            if log is not None:
                log(f"{model_dir} is a GGUF artifact: serving it with backend llamacpp (llama.cpp), not "
                    f"{engine.backend}")
        if engine.kv_cache_dtype != "auto" and log is not None:
            log(f"{model_dir} is a GGUF artifact: kv_cache_dtype {engine.kv_cache_dtype} is a vLLM setting; "
                "llama-server keeps its own cache type")
        return for_backend(engine, LLAMACPP)
    if engine.backend == LLAMACPP:
        raise ConfigError(
            f"backend llamacpp serves GGUF artifacts, and {model_dir} has no model.gguf. Export it first "
            f"(`packager gguf export {model_dir} --quant q8_0 --out DIR`) and use DIR/q8_0, or use backend vllm."
        )
    return engine


def for_backend(engine: "EngineConfig", backend: str) -> "EngineConfig":
    """`engine` served by `backend`, without the settings that backend does not take: llama-server keeps the
    GGUF's own KV cache type, so a vLLM kv_cache_dtype falls back to auto. The same object when nothing changes."""
    kv = engine.kv_cache_dtype if backend == VLLM else "auto"
    if (engine.backend, engine.kv_cache_dtype) == (backend, kv):
        return engine
    return engine.model_copy(update={"backend": backend, "kv_cache_dtype": kv})


def check_target(backend: str, target: str) -> None:
    """ValueError (for pydantic validators) when `backend` does not run on `target`."""
    caps = capabilities(backend)
    if target not in caps.targets:
        raise ValueError(
            f"backend {backend} runs on target {' or '.join(caps.targets)} only (got target={target}); "
            f"serve {target.upper()} variants with backend "
            f"{next(e.name for e in ENGINES.values() if target in e.targets)}"
        )


def evaluation_config(backend: str, cfg: "RunConfig") -> tuple["RunConfig", list[str]]:
    """(run configuration, notes) for evaluating through `backend`: without prompt logprobs there is no
    perplexity pass (its requests would carry nothing to measure), nor a fidelity corpus unless the top-k is read
    in-process (`local_topk`); an engine whose answers repeat only at a lower concurrency is sent that many
    requests at a time (unless eval.reproducible is off); the notes say what is measured otherwise or not at
    all."""
    caps = capabilities(backend)
    update: dict[str, object] = {}
    notes: list[str] = []
    if not caps.prompt_logprobs:
        update["perplexity"] = False
        if not caps.local_topk:
            update["fidelity_corpus"] = None
        notes.extend(caps.eval_notes)
    n = caps.reproducible_concurrency
    if cfg.eval.reproducible and n is not None:
        if cfg.eval.reference_concurrency > n:
            update["reference_concurrency"] = n
        if cfg.eval.concurrency > n:
            update["concurrency"] = n
            notes.append(f"answers: {n} request(s) at a time, not eval.concurrency {cfg.eval.concurrency}: "
                         f"{caps.label}'s greedy answers depend on which requests it decodes together "
                         "(eval.reproducible: false uses eval.concurrency)")
    if not update:
        return cfg, notes
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update=update)}), notes


def local_topk(model_dir: str | Path | None, engine: "EngineConfig") -> "GgufTopk | None":
    """The fidelity figures' top-k reader for a model its engine gives no prompt logprobs for, read from the
    artifact in this process (a GGUF through llama.cpp: packager.gguf.topk), or None (the endpoint's own logprobs
    serve, or there is no local artifact). Loads nothing until first called."""
    if model_dir is None or engine_for(model_dir) != LLAMACPP:
        return None
    from packager.gguf.artifact import gguf_path
    from packager.gguf.topk import GgufTopk
    from packager.hardware import cpu_threads

    return GgufTopk(gguf_path(model_dir), n_ctx=engine.max_model_len, threads=cpu_threads())


def server_for_model(model_dir: str | Path, engine: "EngineConfig", served_name: str | None = None,
                     port: int | None = None, log_path: Path | None = None) -> "LocalServer":
    """A local server (not started) for a model directory, on the engine `select_engine` chooses."""
    eng = select_engine(model_dir, engine)
    if eng.backend == LLAMACPP:
        from packager.engines.llamacpp import LlamaCppServer

        return LlamaCppServer(model_dir, eng, served_name=served_name, port=port, log_path=log_path)
    from packager.engines.vllm import EngineServer

    return EngineServer(model_dir, eng, served_name=served_name, port=port, log_path=log_path)
