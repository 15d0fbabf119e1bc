"""The governance scenario against a REAL MLflow tracking server process (the multi-user path): the server
is started here on a free port with a SQLite backend and its own artifact directory, and stopped afterwards."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integration.test_registry_scenario import make_checkpoints, run_governance_scenario

pytestmark = pytest.mark.slow


class MlflowServer:
    """A started `mlflow server` process; `wait_ready()` blocks until /health answers (or the process dies)."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path):
        self.proc, self.url, self.log_path = proc, url, log_path

    def wait_ready(self, timeout_s: float = 120.0) -> str:
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer /health within {timeout_s:.0f} s")
            time.sleep(0.5)


@pytest.fixture
def mlflow_server(tmp_path):
    """Starts the server and returns at once (it needs ~20 s to start; the test prepares its models meanwhile)."""
    from packager.engines.base import free_port

    port = free_port()
    log_path = tmp_path / "mlflow-server.log"
    log = open(log_path, "w")
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_exe), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
    )
    try:
        yield MlflowServer(proc, f"http://127.0.0.1:{port}", log_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)  # nothing to flush: the test is over
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_governance_scenario_against_a_real_mlflow_server(mlflow_server, request, tmp_path):
    from packager.registry import ModelRegistry

    tiny_llama_dir = request.getfixturevalue("tiny_llama_dir")  # built while the server starts
    base, var = make_checkpoints(tiny_llama_dir, tmp_path)
    url = mlflow_server.wait_ready()
    reg = ModelRegistry(url)
    run_governance_scenario(reg, "tiny-llama", base, var, tmp_path)
    # a second client (another user) sees the same versions, decisions and states through the server
    other = ModelRegistry(url)
    rows = {r.version: r.status for r in other.list("tiny-llama")}
    assert rows == {1: "rejected", 2: "tampered"}
    # the server stored the documents in its own artifact directory, and no weights
    stored = tmp_path / "server-artifacts"
    assert any(stored.rglob("record.json")) and not any(stored.rglob("*.safetensors"))
    assert mlflow_server.proc.poll() is None
