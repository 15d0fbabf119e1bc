"""The arguments of the bento service template (`services/service.py`, read with `bentoml.use_arguments`).

One flat pydantic model, so every field can also be given on the command line as
`bentoml build --arg max_num_seqs=32` (strings are coerced), or as YAML with `--arg-file`, which is what
`packager build` writes. Everything the running service needs to know is derived from it here, so the
service module stays a thin template and the mapping is unit-tested without a server:

* `engine_config()`      -> packager.config.EngineConfig (dtype, lengths, CPU/GPU settings) for the backend;
* `traffic()`            -> BentoML `traffic` (max_concurrency -> 429, timeout -> 504);
* `resources()`          -> BentoML `resources` (GPU count = tensor parallel size, GPU type);
* `service_labels()`     -> labels of the service and the bento (variant identity);
* `metric_labels()`      -> the constant labels of the packager_* series.

A bento's arguments are frozen at build time (BentoML ignores `--arg` when serving a built bento); the few
settings that depend on where a bento is deployed are read from the environment when it starts
(`PACKAGER_BENTO_BACKEND_PORT`, `PACKAGER_BENTO_USD_PER_HOUR`), see `deployment_overrides()`.
"""
from __future__ import annotations

import os
import re
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from packager.config import EngineConfig, check_kv_cache
from packager.core.validation import format_validation_error, parse_model
from packager.engines.select import ENGINES, check_target
from packager.errors import ConfigError
from packager.serve.bounds import RequestLimits

# BentoML names (bento, service, model): lowercase letters, digits, '-', '_' and '.', starting and ending
# with a letter or digit.
BENTO_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
ENV_BACKEND_PORT = "PACKAGER_BENTO_BACKEND_PORT"
ENV_USD_PER_HOUR = "PACKAGER_BENTO_USD_PER_HOUR"
# Headroom of BentoML's own concurrency limit above the inference limit the gateway enforces, so
# /v1/models, probes of the backend and the like still answer while inference is saturated.
BENTO_CONCURRENCY_HEADROOM = 8


def bento_name(text: str) -> str:
    """A valid BentoML name from any text: 'SmolLM2-135M Instruct' -> 'smollm2-135m-instruct'."""
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return s[:63].strip("-._") or "model"


class BentoArgs(BaseModel):
    """Arguments of the packager service template; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # What is served.
    model_tag: str = Field(description="BentoML model tag (name:version) of the imported variant")
    model_digest: str = Field(description="tree digest of the variant's files, checked before the backend starts")
    service_name: str = "packager-llm"
    served_model_name: str | None = None  # the name clients put in "model"; default: model_name
    # Backend and engine settings (see packager.config.EngineConfig).
    backend: str = "vllm"
    target: Literal["cpu", "gpu"] = "cpu"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # "auto": resolved on the serving host
    max_model_len: int = Field(2048, ge=64)
    max_num_seqs: int = Field(64, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)  # GPUs per replica (resources.gpu)
    gpu_type: str | None = None  # BentoML gpu_type, e.g. nvidia-l4, nvidia-h100-80gb
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    gpu_int4_kernel: Literal["auto", "marlin"] = "auto"  # int4 (W4A16) weights on a GPU: vLLM's choice or Marlin
    api_server_count: int = Field(1, ge=1, le=64)  # vLLM API server processes in front of the engine
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"  # vLLM's --kv-cache-dtype
    cpu_kvcache_space_gib: int = Field(1, ge=1)
    cpu_omp_threads_bind: str = "auto"
    cpu_reserved_cpus: int | None = Field(None, ge=0)  # None: decided on the serving host (vllm.reserved_cpus)
    enforce_eager: bool = False
    extra_args: list[str] = Field(default_factory=list)
    # A Jinja chat template's text (`packager build --chat-template FILE`), for a model without one or to replace
    # its own; None: the model's.
    chat_template: str | None = None
    backend_port: int = Field(8000, ge=1, le=65535)  # the service's proxy port; the backend listens there
    # BentoML worker processes relaying to the one backend. One relays a few thousand tokens per second
    # (about 0.1-0.2 ms of CPU per streamed token); a fast GPU replica may need more.
    workers: int = Field(1, ge=1, le=64)
    # Traffic: in-flight inference requests beyond max_concurrency get 429; no response start within
    # timeout_s gives 504 (for streams: no first token within timeout_s).
    max_concurrency: int | None = Field(None, ge=1)  # default: max_num_seqs
    timeout_s: float = Field(300.0, gt=0)
    # BentoML's OpenTelemetry middleware costs ~0.04 ms of CPU per streamed token even when it samples
    # nothing (its default); the inference routes are left out of tracing unless this is set.
    trace_inference: bool = False
    # Access and bounds (packager/serve/frontdoor.py, packager/serve/gateway.py). The API keys themselves are
    # never arguments: the bento reads them where it runs (PACKAGER_API_KEYS or PACKAGER_API_KEYS_FILE).
    require_api_key: bool = True  # refuse to start without a key; every route but the probes needs one
    # refuse to start unless registry_name/registry_version is approved in the registry (PACKAGER_REGISTRY_URI)
    require_approved: bool = False
    max_body_bytes: int = Field(4 << 20, ge=1024)  # larger request bodies get 413
    body_timeout_s: float = Field(15.0, gt=0)  # a body not received within this gets 408, holding no slot
    max_tokens_default: int | None = Field(1024, ge=1)  # set on requests that give no max_tokens
    max_tokens_limit: int | None = Field(None, ge=1)  # larger max_tokens get 400; default: max_model_len
    max_stream_s: float | None = Field(900.0, gt=0)  # a stream still running after this is ended
    # Cost and identity of the variant (labels of the service, the bento and every packager_* series).
    usd_per_hour: float | None = Field(None, ge=0)
    model_name: str = "model"
    registry_version: str = "unregistered"
    registry_name: str | None = None  # the registered model name (default: model_name)
    hardware: str | None = None  # default: "cpu", or "<gpu_type>x<n>"

    @field_validator("extra_args", mode="before")
    @classmethod
    def _split_args(cls, v: Any) -> Any:
        # `--arg extra_args="--enforce-eager --seed 1"` arrives as one string.
        if isinstance(v, str):
            return v.split()
        return v

    @field_validator("service_name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not BENTO_NAME_RE.match(v):
            raise ValueError(
                f"service_name {v!r} is not a valid BentoML name: use lowercase letters, digits, '-', '_' "
                f"and '.', e.g. {bento_name(v)!r}"
            )
        return v

    @field_validator("model_tag")
    @classmethod
    def _valid_tag(cls, v: str) -> str:
        name, _, version = v.partition(":")
        if not BENTO_NAME_RE.match(name) or (version and not re.match(r"^[a-z0-9._-]+$", version)):
            raise ValueError(f"model_tag {v!r} is not a BentoML model tag (name:version in lowercase)")
        return v

    @model_validator(mode="after")
    def _check_combination(self) -> "BentoArgs":
        if self.backend not in ENGINES:  # the bento's backends are the engines (tests/unit/serve checks)
            raise ValueError(
                f"backend {self.backend!r} is not available; known backends: {', '.join(sorted(ENGINES))}"
            )
        check_target(self.backend, self.target)
        check_kv_cache(self.backend, self.kv_cache_dtype)
        if self.target == "cpu" and self.tensor_parallel_size != 1:
            raise ValueError(
                f"tensor_parallel_size={self.tensor_parallel_size} needs target=gpu; a CPU replica uses one "
                "engine process (set target=gpu, or tensor_parallel_size=1)"
            )
        return self

    # ----- derived settings -------------------------------------------------------------------
    def engine_config(self) -> EngineConfig:
        """The engine settings of this bento as the run configuration's EngineConfig."""
        return EngineConfig(
            backend=self.backend, target=self.target, dtype=self.dtype, max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs, cpu_kvcache_space_gib=self.cpu_kvcache_space_gib,
            cpu_omp_threads_bind=self.cpu_omp_threads_bind, cpu_reserved_cpus=self.cpu_reserved_cpus,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_type=self.gpu_type, gpu_memory_utilization=self.gpu_memory_utilization,
            gpu_int4_kernel=self.gpu_int4_kernel, api_server_count=self.api_server_count,
            kv_cache_dtype=self.kv_cache_dtype,
            enforce_eager=self.enforce_eager, extra_args=list(self.extra_args), chat_template=self.chat_template,
        )

    @property
    def inference_concurrency(self) -> int:
        """In-flight inference requests the gateway admits; follows max_num_seqs unless set."""
        return self.max_concurrency or self.max_num_seqs

    @property
    def concurrency_per_worker(self) -> int:
        """The gateway's limit in each worker (BentoML divides traffic.max_concurrency the same way)."""
        return -(-self.inference_concurrency // self.workers)

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model_name

    @property
    def hardware_label(self) -> str:
        if self.hardware:
            return self.hardware
        if self.target == "cpu":
            return "cpu"
        return f"{self.gpu_type or 'gpu'}x{self.tensor_parallel_size}"

    def request_limits(self) -> RequestLimits:
        return RequestLimits(max_tokens_default=self.max_tokens_default,
                             max_tokens_limit=self.max_tokens_limit or self.max_model_len,
                             max_stream_s=self.max_stream_s)

    def traffic(self) -> dict[str, Any]:
        """BentoML traffic: a hard ceiling on in-flight requests (429 above it) and a timeout (504)."""
        return {
            "timeout": self.timeout_s,
            "max_concurrency": self.inference_concurrency + BENTO_CONCURRENCY_HEADROOM,
            # Target concurrency for autoscalers (BentoCloud): what one replica batches well.
            "concurrency": self.inference_concurrency,
        }

    def tracing(self) -> dict[str, Any]:
        """BentoML tracing settings of the service (only what differs from BentoML's defaults)."""
        if self.trace_inference:
            return {}
        return {"excluded_urls": ["/v1/chat/completions", "/v1/completions"]}

    def resources(self) -> dict[str, Any]:
        if self.target == "gpu":
            res: dict[str, Any] = {"gpu": self.tensor_parallel_size}
            if self.gpu_type:
                res["gpu_type"] = self.gpu_type
            return res
        return {}

    def service_labels(self) -> dict[str, str]:
        return {
            "packager.model": self.model_name,
            "packager.registry_version": self.registry_version,
            "packager.backend": self.backend,
            "packager.hardware": self.hardware_label,
            "packager.target": self.target,
            "packager.model_tag": self.model_tag,
            "packager.model_digest": self.model_digest,
            "openai_endpoint": "/v1",
        }

    def metric_labels(self) -> dict[str, str]:
        """Constant labels of every packager_* series (names match packager.monitor's expectations)."""
        return {
            "model": self.model_name,
            "registry_version": self.registry_version,
            "backend": self.backend,
            "hardware": self.hardware_label,
        }


def deployment_overrides(args: BentoArgs, environ: Mapping[str, str] | None = None) -> BentoArgs:
    """Apply the settings that belong to the place a bento runs, read from the environment."""
    env = os.environ if environ is None else environ
    updates: dict[str, Any] = {}
    if env.get(ENV_BACKEND_PORT):
        updates["backend_port"] = env[ENV_BACKEND_PORT]
    if env.get(ENV_USD_PER_HOUR):
        updates["usd_per_hour"] = env[ENV_USD_PER_HOUR]
    if not updates:
        return args
    try:
        return BentoArgs.model_validate({**args.model_dump(), **updates})
    except ValidationError as e:
        raise ConfigError(
            format_validation_error(e, f"the environment ({ENV_BACKEND_PORT}, {ENV_USD_PER_HOUR})")) from None


def parse_args(data: Mapping[str, Any]) -> BentoArgs:
    """Validate bento arguments, raising ConfigError that names each bad field and its value."""
    return parse_model(BentoArgs, dict(data), "the bento arguments")
