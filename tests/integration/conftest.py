"""Integration fixtures shared by every test_<area>_*.py here.

`bento_server` (session scope): ONE real bento for the whole test session, because starting one takes about
2.5 minutes on 2 cores. It is built from the bundled model (fixture `default_model`) with the real CLI
(`packager build`, which runs `bentoml build`), served with the real `bentoml serve` on free ports, and
stopped (its whole process group: BentoML's arbiter, its worker and the vLLM server) when the session ends.

    def test_something(bento_server):
        httpx.post(bento_server.base_url + "/v1/chat/completions", headers=bento_server.headers,
                   json={"model": bento_server.model, "messages": [...]})

Attributes of what it yields (BentoServerInfo):
    base_url     http://127.0.0.1:PORT of the bento (OpenAI API under /v1, /readyz, /livez, /metrics)
    tag          the bento tag (name:version) in packager's BentoML store
    proc         the `bentoml serve` subprocess.Popen (its own process group)
    log_path     file holding the server's stdout and stderr (BentoML's and vLLM's logs)
    model        the served model name clients put in "model"
    backend_url  http://127.0.0.1:PORT of the vLLM server behind the bento (to compare against the bare engine)
    usd_per_hour the price the bento was built with (its packager_usd_per_hour gauge)
    registry_version, hardware   the variant labels of its packager_* series
    api_key, headers  the key the bento was started with (PACKAGER_API_KEYS) and `Authorization: Bearer KEY`

Run integration tests under the heavy-job lock: `flock /tmp/packager-heavy.lock .venv/bin/pytest -m slow ...`.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_cli

BENTO_USD_PER_HOUR = 0.1785  # c7i.xlarge on-demand list price (see the pricing table); any number would do
BENTO_REGISTRY_VERSION = "it-1"
BENTO_NAME = "packager-it-default"


@dataclass
class BentoServerInfo:
    base_url: str
    tag: str
    proc: subprocess.Popen
    log_path: Path
    model: str
    backend_url: str
    usd_per_hour: float
    registry_version: str
    hardware: str
    api_key: str
    headers: dict[str, str]  # Authorization: Bearer api_key, what every client of the bento sends


def packager_cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """Run the real `packager` CLI in a subprocess (stdout and stderr captured as text; stacks on a hang)."""
    return run_cli(*args, env=env, timeout_s=timeout_s)


def build_bento_cli(variant_dir: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    """`packager build VARIANT_DIR ...` -> the bento tag it prints (fails the test with its output)."""
    r = packager_cli("build", str(variant_dir), *extra, env=env)
    if r.returncode != 0:
        pytest.fail(f"packager build failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session", name="build_bento_cli")
def build_bento_cli_fixture():
    """`build_bento_cli(variant_dir, *flags, env=None) -> bento tag`: the real `packager build` CLI."""
    return build_bento_cli


@pytest.fixture(scope="session")
def bento_server(default_model, tmp_path_factory):
    """A real bento of the bundled model, served by `bentoml serve` for the whole session (see module doc)."""
    from packager.serve.server import BentoServer

    tag = build_bento_cli(default_model.path, "--name", BENTO_NAME, "--usd-per-hour", str(BENTO_USD_PER_HOUR),
                          "--registry-version", BENTO_REGISTRY_VERSION, "--max-model-len", "2048")
    log_path = tmp_path_factory.mktemp("bento-server") / "bento-serve.log"
    srv = BentoServer(tag, log_path=log_path, startup_timeout_s=float(os.environ.get("PACKAGER_BENTO_STARTUP_S", 900)))
    srv.start()
    try:
        yield BentoServerInfo(base_url=srv.base_url, tag=tag, proc=srv.proc, log_path=log_path,
                              model=default_model.name, backend_url=f"http://127.0.0.1:{srv.backend_port}",
                              usd_per_hour=BENTO_USD_PER_HOUR, registry_version=BENTO_REGISTRY_VERSION,
                              hardware="cpu", api_key=srv.api_key, headers=srv.headers)
    finally:
        srv.stop()
