"""llama.cpp's own OpenAI-compatible server, `llama-server`, for a GGUF artifact: its command line (shared by the
bento's `llamacpp` backend and the evaluator), where its binary is, and a launcher.

The binary is built by `make install` from the llama.cpp source vendored in the pinned llama-cpp-python sdist
(packager.engines.llama_server_build); packager looks for it in PACKAGER_LLAMA_SERVER, beside this Python
(the venv's bin/, or /usr/local/bin in a bento image), then on PATH.

What this server does, as packager starts it:

* parallel slots with continuous batching: `--parallel N` requests decode together, each slot holding
  `max_model_len` tokens of context (`--ctx-size` is N x max_model_len; the KV cache is not unified, so one
  slot never takes another's room: memory is N x max_model_len tokens of KV, allocated at start). More requests
  than slots wait in the server's queue, in order; the bento's gateway bounds that queue (429 beyond
  `max_concurrency`);
* `/health` answers 200 once the model is loaded (503 while it loads): the readiness path;
* `--metrics`: its Prometheus page (`llamacpp:*` series), merged into the bento's /metrics;
* usage in streams when asked (`stream_options.include_usage`), as OpenAI does;
* no prompt logprobs: no perplexity through it; the top-k KL of a GGUF variant is read from the same file by
  llama.cpp in the evaluating process instead (packager.gguf.topk).

llama-cpp-python is still installed, for the GGUF export's quantizer; it no longer serves. Its server answered
one request at a time, 1.7-4.7x slower than llama-server on the same file (issue measurements, 1 to 16 users).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Mapping

from packager.config import EngineConfig
from packager.engines.base import LocalServer
from packager.errors import ServerError
from packager.gguf.amx import llama_server_flags
from packager.gguf.artifact import gguf_path
from packager.hardware import cpu_threads

READINESS_PATH = "/health"
METRICS_PATH = "/metrics"
ENV_BINARY = "PACKAGER_LLAMA_SERVER"
BINARY = "llama-server"
# Slots of a server packager starts for itself (evaluation, the release on the bare engine): the engine's
# max_num_seqs, at most this many (the evaluator sends 8 at a time; the load test's default sweep tops at 16).
LOCAL_MAX_SLOTS = 16


def find_binary(environ: Mapping[str, str] | None = None) -> Path | None:
    """The llama-server binary: PACKAGER_LLAMA_SERVER, beside this Python, then on PATH; None when absent."""
    env = os.environ if environ is None else environ
    if env.get(ENV_BINARY):
        return Path(env[ENV_BINARY])
    beside = Path(sys.executable).parent / BINARY
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(BINARY, path=env.get("PATH"))
    return Path(found) if found else None


def binary(environ: Mapping[str, str] | None = None) -> Path:
    """The llama-server binary, or a ServerError that says how to get one."""
    found = find_binary(environ)
    if found is None:
        raise ServerError(
            f"llama.cpp's server ({BINARY}) was not found beside {sys.executable} or on PATH. `make install` builds "
            f"it from the pinned llama.cpp source (about 5 minutes on 2 cores; `make llama-server` alone), or set "
            f"{ENV_BINARY} to a llama-server binary."
        )
    if not (found.is_file() and os.access(found, os.X_OK)):
        raise ServerError(f"{ENV_BINARY}={found} is not an executable file.")
    return found


def llamacpp_command(model_file: str | Path, port: int, *, n_ctx: int, served_name: str, slots: int,
                     host: str = "127.0.0.1", n_threads: int | None = None,
                     extra_args: list[str] | tuple[str, ...] = (), chat_template: str | None = None,
                     server: str | Path | None = None) -> list[str]:
    """argv of llama-server for one GGUF file: `slots` parallel sequences of `n_ctx` tokens each. A chat
    template (a file, or its text) replaces the one the GGUF carries."""
    if slots < 1 or n_ctx < 1:
        raise ValueError(f"llama-server needs slots >= 1 and n_ctx >= 1 (got {slots}, {n_ctx})")
    threads = str(n_threads or cpu_threads())
    return [
        str(server or binary()),
        "--model", str(model_file),
        "--alias", served_name,
        "--host", host, "--port", str(port),
        "--parallel", str(slots),
        "--ctx-size", str(n_ctx * slots),  # split evenly between the slots (--no-kv-unified)
        "--no-kv-unified",
        "--threads", threads, "--threads-batch", threads,
        "--metrics",
        "--no-webui",
        *llama_server_flags(),  # --no-repack on AMX CPUs (packager.gguf.amx)
        *_template_flags(chat_template),
        *extra_args,
    ]


def _template_flags(chat_template: str | None) -> list[str]:
    if not chat_template:
        return []
    if "{" not in chat_template and Path(chat_template).is_file():
        return ["--jinja", "--chat-template-file", chat_template]
    return ["--jinja", "--chat-template", chat_template]


def llamacpp_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables the server needs set (none: threads and slots are flags, and llama-server reads no HF or
    telemetry variables). A hook, so the bento's backend table stays uniform."""
    return {}


def check_installed() -> None:
    binary()


class LlamaCppServer(LocalServer):
    """llama-server for one GGUF artifact directory, as a context manager (like EngineServer).

    >>> with LlamaCppServer(artifact_dir, EngineConfig(backend="llamacpp")) as srv:
    ...     srv.base_url  # http://127.0.0.1:PORT
    """

    what = "llama.cpp server (llama-server)"
    readiness_path = READINESS_PATH
    log_prefix = "packager-llamacpp-"

    def __init__(self, model_dir: str | Path, engine: EngineConfig, served_name: str | None = None,
                 port: int | None = None, log_path: Path | None = None, n_threads: int | None = None,
                 slots: int | None = None):
        super().__init__(port, log_path, engine.startup_timeout_s)
        self.model_dir = str(model_dir)
        self.engine = engine
        self.served_name = served_name or Path(self.model_dir).name
        self.n_threads = n_threads
        self.slots = slots or min(engine.max_num_seqs, LOCAL_MAX_SLOTS)

    def command(self) -> list[str]:
        return llamacpp_command(gguf_path(self.model_dir), self.port, n_ctx=self.engine.max_model_len,
                                served_name=self.served_name, slots=self.slots, n_threads=self.n_threads,
                                extra_args=self.engine.extra_args, chat_template=self.engine.chat_template)

    def launch_spec(self) -> tuple[list[str], dict[str, str]]:
        check_installed()
        env = dict(os.environ)
        env.update(llamacpp_env(os.environ))
        return self.command(), env
