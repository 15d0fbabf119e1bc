"""Start and stop a built bento with the real `bentoml serve` (what `packager serve`, tests and benchmarks use)."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from packager.engine import free_port, stop_process, wait_ready
from packager.serve.args import ENV_BACKEND_PORT
from packager.serve.store import bentoml_env


def serve_command(bento_tag: str, port: int = 3000, host: str = "127.0.0.1") -> list[str]:
    """The exact command that serves a bento (equivalent to `bentoml serve TAG --port PORT --host HOST`)."""
    return [sys.executable, "-m", "bentoml", "serve", bento_tag, "--port", str(port), "--host", host]


def serve_env(backend_port: int | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    env = bentoml_env(base)
    if backend_port is not None:
        env[ENV_BACKEND_PORT] = str(backend_port)
    return env


class BentoServer:
    """A bento served by `bentoml serve` on loopback, as a context manager.

    The backend gets a free port of its own (PACKAGER_BENTO_BACKEND_PORT) so several bentos, or a bento and
    a bare vLLM server, can run side by side. The process runs in its own session and is stopped with its
    whole process group (BentoML's arbiter, its worker and the backend the worker started).
    """

    def __init__(self, bento_tag: str, port: int | None = None, backend_port: int | None = None,
                 log_path: Path | None = None, startup_timeout_s: float = 900.0, extra_env: dict[str, str] | None = None):
        self.tag = bento_tag
        self.port = port or free_port()
        self.backend_port = backend_port or free_port()
        self.log_path = Path(log_path) if log_path else Path(
            tempfile.mkstemp(prefix="packager-bento-", suffix=".log")[1])
        self.startup_timeout_s = startup_timeout_s
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> subprocess.Popen:
        """Start `bentoml serve` without waiting for readiness."""
        env = serve_env(self.backend_port)
        env.update(self.extra_env)
        logf = open(self.log_path, "w")
        self.proc = subprocess.Popen(serve_command(self.tag, self.port), stdout=logf, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        logf.close()
        return self.proc

    def start(self) -> "BentoServer":
        self.launch()
        try:
            wait_ready(self.base_url, self.proc, self.log_path, self.startup_timeout_s, path="/readyz",
                       what=f"bento server ({self.tag})")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=40.0)
            self.proc = None

    def __enter__(self) -> "BentoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
