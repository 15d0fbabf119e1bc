"""Start and stop a built bento with the real `bentoml serve` (what `packager serve`, tests and benchmarks use)."""
from __future__ import annotations

import sys
from pathlib import Path

from packager.core.access import client_headers
from packager.engines.base import LocalServer, free_port
from packager.serve.args import ENV_BACKEND_PORT
from packager.serve.auth import ENV_API_KEYS, ENV_API_KEYS_FILE, generate_key
from packager.serve.store import bentoml_env


def serve_command(bento_tag: str, port: int = 3000, host: str = "127.0.0.1") -> list[str]:
    """The exact command that serves a bento (equivalent to `bentoml serve TAG --port PORT --host HOST`)."""
    return [sys.executable, "-m", "bentoml", "serve", bento_tag, "--port", str(port), "--host", host]


def serve_env(backend_port: int | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    env = bentoml_env(base)
    if backend_port is not None:
        env[ENV_BACKEND_PORT] = str(backend_port)
    return env


class BentoServer(LocalServer):
    """A bento served by `bentoml serve` on loopback, as a context manager.

    The backend gets a free port of its own (PACKAGER_BENTO_BACKEND_PORT) so several bentos, or a bento and
    a bare vLLM server, can run side by side. The process runs in its own session and is stopped with its
    whole process group (BentoML's arbiter, its worker and the backend the worker started).
    """

    readiness_path = "/readyz"
    log_prefix = "packager-bento-"
    stop_grace_s = 40.0

    def __init__(self, bento_tag: str, port: int | None = None, backend_port: int | None = None,
                 log_path: Path | None = None, startup_timeout_s: float = 900.0,
                 extra_env: dict[str, str] | None = None, api_key: str | None = None):
        super().__init__(port, log_path, startup_timeout_s)
        self.tag = bento_tag
        self.what = f"bento server ({bento_tag})"
        self.backend_port = backend_port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.extra_env = dict(extra_env or {})
        # The key its clients send: the given one, else a fresh one for this server alone (its environment
        # gets it as PACKAGER_API_KEYS), unless extra_env sets the bento's keys itself.
        keyed = any(k in self.extra_env for k in (ENV_API_KEYS, ENV_API_KEYS_FILE))
        self.api_key = api_key or (None if keyed else generate_key())
        if self.api_key and not keyed:
            self.extra_env[ENV_API_KEYS] = self.api_key

    @property
    def headers(self) -> dict[str, str]:
        """What a client of this server sends: `Authorization: Bearer KEY` (empty when the key is not known)."""
        return client_headers(self.api_key) if self.api_key else {}

    def launch_spec(self) -> tuple[list[str], dict[str, str]]:
        env = serve_env(self.backend_port)
        for k in (ENV_API_KEYS, ENV_API_KEYS_FILE):  # only the keys given here, never the caller's own
            env.pop(k, None)
        env.update(self.extra_env)
        return serve_command(self.tag, self.port), env
