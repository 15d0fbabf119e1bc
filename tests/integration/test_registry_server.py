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


@pytest.fixture
def mlflow_server(tmp_path):
    import httpx

    from packager.engine import free_port

    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_exe), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{(tmp_path / 'mlflow-server.log').read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not answer /health within 120 s")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_governance_scenario_against_a_real_mlflow_server(mlflow_server, tiny_llama_dir, tmp_path):
    from packager.registry import ModelRegistry

    base, var = make_checkpoints(tiny_llama_dir, tmp_path)
    reg = ModelRegistry(mlflow_server)
    run_governance_scenario(reg, "tiny-llama", base, var, tmp_path)
    # a second client (another user) sees the same versions, decisions and states through the server
    other = ModelRegistry(mlflow_server)
    rows = {r.version: r.status for r in other.list("tiny-llama")}
    assert rows == {1: "rejected", 2: "tampered"}
    # the server stored the documents in its own artifact directory, and no weights
    stored = tmp_path / "server-artifacts"
    assert any(stored.rglob("record.json")) and not any(stored.rglob("*.safetensors"))
