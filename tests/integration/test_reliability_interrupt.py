"""Interrupting commands that start a real vLLM engine: `packager release` and `packager evaluate MODEL_DIR`.

The signal lands while the engine is starting (a few seconds after its process appears), which is where
these commands spend their first minutes. What must hold: the command ends, nothing half-written is left
(no report, no variant record, no cached step), and the engine process it started does not outlive it.

(The cheap interruption tests, compress and evaluate against the fake server, are in
tests/unit/reliability/test_interrupt.py.)
Run under the heavy-job lock: flock /tmp/packager-heavy.lock .venv/bin/pytest -m slow tests/integration/test_reliability_interrupt.py
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import sigint_default
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}


def engines_for(model_dir: Path) -> list[int]:
    """pids of vLLM OpenAI servers serving model_dir (however they were started)."""
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info.get("cmdline") or []
        if "vllm.entrypoints.openai.api_server" in cmd and str(model_dir) in cmd:
            pids.append(p.info["pid"])
    return pids


def kill_engines(model_dir: Path) -> None:
    for pid in engines_for(model_dir):
        try:
            os.killpg(pid, signal.SIGKILL)  # EngineServer starts vLLM in a session (group) of its own
        except (ProcessLookupError, PermissionError):
            pass


def wait_until(pred, timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(pred())
        time.sleep(0.2)
    return False


@pytest.fixture
def tiny_copy(tiny_llama_dir, tmp_path) -> Path:
    """A private copy of the tiny model, so the engine processes of this test are recognisable by path."""
    d = tmp_path / "tiny-model"
    shutil.copytree(tiny_llama_dir, d)
    yield d
    kill_engines(d)


def test_release_interrupted_while_its_engine_starts(tiny_copy, tmp_path):
    run = tmp_path / "run"
    cfg = {
        "model": str(tiny_copy), "recipes": ["w8a8-int8"], "output_dir": str(run),
        "engine": {"max_model_len": 512, "max_num_seqs": 4},
        "eval": {"max_items": 4, "perplexity": False, "fidelity_max_prompts": 4},
        "loadtest": {"profile": {"kind": "concurrency", "users": 1, "duration_s": 3},
                     "prompts": {"kind": "synthetic", "input_tokens": {"mean": 16}, "output_tokens": {"mean": 8}},
                     "max_duration_s": 10, "max_requests": 20},
        "time_budget_s": 600,
    }
    cfg_path = tmp_path / "release.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "packager.cli", "release", "--config", str(cfg_path),
                             "--serve-via", "engine", "--no-register"], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    try:
        started = wait_until(lambda: bool(engines_for(tiny_copy)), 180, proc)
        if not started:
            out, err = proc.communicate(timeout=30) if proc.poll() is not None else ("", "")
            pytest.fail(f"the release never started its engine (exit {proc.poll()}):\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(3)  # the engine is loading
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (proc.returncode, err[-3000:])
        assert "interrupted: nothing half-written was kept" in " ".join(err.split())
        # The engine it started is stopped with it (EngineServer.start stops it on any exception).
        assert wait_until(lambda: not engines_for(tiny_copy), 60), engines_for(tiny_copy)
        # Nothing half-written: the configuration it ran with (written whole at the start), the run's log and the
        # engine's log, and no report, no variant record, no cached step result, no temporary file.
        files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
        assert "config.yaml" in files and yaml.safe_load((run / "config.yaml").read_text())["model"] == str(tiny_copy)
        assert not [f for f in files if f.endswith((".done.json", "variant.json", ".tmp")) or f.startswith("report")], files
        assert set(files) <= {"config.yaml", "packager.log", "variants/baseline/engine.log"}, files
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_evaluate_terminated_while_its_engine_starts_does_not_leave_the_engine_running(tiny_copy, tmp_path):
    """SIGTERM (what `timeout`, systemd, CI runners and Kubernetes send) to `packager evaluate MODEL_DIR`."""
    out = tmp_path / "eval"
    proc = subprocess.Popen([sys.executable, "-m", "packager.cli", "evaluate", str(tiny_copy), "--out", str(out),
                             "--max-items", "4", "--no-perplexity"], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    try:
        assert wait_until(lambda: bool(engines_for(tiny_copy)), 180, proc), proc.communicate(timeout=30)
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
        assert not (out / "summary.json").exists() and not (out / "items.jsonl").exists()
        orphaned = not wait_until(lambda: not engines_for(tiny_copy), 15)
        if orphaned:
            kill_engines(tiny_copy)
        assert not orphaned, "the engine outlived `packager evaluate` after SIGTERM"
        assert proc.returncode == 143, proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
