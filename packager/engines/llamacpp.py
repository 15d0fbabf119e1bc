"""llama.cpp's OpenAI-compatible server (`python -m llama_cpp.server`, llama-cpp-python 0.3.36) for a GGUF
artifact: its command line (shared by the bento's `llamacpp` backend and the evaluator) and a launcher.

What this server is and is not:
* it loads the model BEFORE it starts listening, so any answer from it means the model is loaded; it has no
  /health route, and /v1/models waits for the model lock (it blocks while a request is generating), so
  readiness asks /openapi.json, which never takes that lock;
* one llama.cpp context serves ONE request at a time; concurrent requests wait for it in order. Packager
  starts it with `--interrupt_requests False` (its default, True, ends a running stream with [DONE] as soon
  as another request arrives). The bento's gateway bounds the queue: more than `max_concurrency`
  requests in flight get 429;
* it reports no Prometheus metrics (the bento's packager_* series cover requests, TTFT, TPOT and tokens),
  no prompt logprobs (no perplexity or top-k KL through it), and no usage in streams (the gateway counts
  streamed content events instead).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

from packager.config import EngineConfig
from packager.engines.base import LocalServer
from packager.errors import ServerError
from packager.gguf.artifact import gguf_path

READINESS_PATH = "/openapi.json"
# Prompt tokens llama.cpp evaluates per batch (its default, 512, also for the bento).
N_BATCH = 512


def cpu_threads() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def llamacpp_command(model_file: str | Path, port: int, *, n_ctx: int, served_name: str,
                     host: str = "127.0.0.1", n_threads: int | None = None,
                     extra_args: list[str] | tuple[str, ...] = ()) -> list[str]:
    """argv of llama-cpp-python's server for one GGUF file (flags as `python -m llama_cpp.server --help`), run
    through packager.gguf.llamacpp_main, which adds the token counts (usage) to streamed answers."""
    threads = str(n_threads or cpu_threads())
    return [
        sys.executable, "-m", "packager.gguf.llamacpp_main",  # llama_cpp.server + usage in streams
        "--model", str(model_file),
        "--model_alias", served_name,
        "--host", host, "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_batch", str(N_BATCH),
        "--n_threads", threads, "--n_threads_batch", threads,
        "--interrupt_requests", "False",  # queue concurrent requests instead of cutting the running stream
        "--logits_all", "False",  # logits of the last position only (prompt logprobs are not offered)
        *extra_args,
    ]


def llamacpp_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables the server needs set (none today: threads are passed as flags, and the server reads no
    HF or telemetry variables). A hook, so the bento's backend table stays uniform."""
    return {}


def check_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
        raise ServerError(
            "llama-cpp-python with its server is not installed: run `make install` (it builds "
            "llama-cpp-python[server]==0.3.36 from source with the 'cpu' extra)."
        )


class LlamaCppServer(LocalServer):
    """llama.cpp's OpenAI server for one GGUF artifact directory, as a context manager (like EngineServer).

    >>> with LlamaCppServer(artifact_dir, EngineConfig(backend="llamacpp")) as srv:
    ...     srv.base_url  # http://127.0.0.1:PORT
    """

    what = "llama.cpp server"
    readiness_path = READINESS_PATH
    log_prefix = "packager-llamacpp-"

    def __init__(self, model_dir: str | Path, engine: EngineConfig, served_name: str | None = None,
                 port: int | None = None, log_path: Path | None = None, n_threads: int | None = None):
        super().__init__(port, log_path, engine.startup_timeout_s)
        self.model_dir = str(model_dir)
        self.engine = engine
        self.served_name = served_name or Path(self.model_dir).name
        self.n_threads = n_threads

    def command(self) -> list[str]:
        return llamacpp_command(gguf_path(self.model_dir), self.port, n_ctx=self.engine.max_model_len,
                                served_name=self.served_name, n_threads=self.n_threads,
                                extra_args=self.engine.extra_args)

    def launch_spec(self) -> tuple[list[str], dict[str, str]]:
        check_installed()
        env = dict(os.environ)
        env.update(llamacpp_env(os.environ))
        return self.command(), env
