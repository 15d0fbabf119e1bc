"""Target settings -> the backend's command line and environment."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from packager.errors import ConfigError
from packager.serve.args import parse_args
from packager.serve.backends import BACKENDS, VLLM_PACKAGES, launch_command

BASE = {"model_tag": "m:v1", "model_digest": "d" * 64, "model_name": "SmolLM2-135M-Instruct"}


def opt(cmd: list[str], flag: str) -> str | None:
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def test_vllm_on_cpu_listens_on_the_proxy_port_of_loopback():
    args = parse_args({**BASE, "backend_port": 18005, "dtype": "bfloat16", "max_model_len": 1024, "max_num_seqs": 16})
    cmd = BACKENDS.get("vllm").command(Path("/store/m/v1/model"), args)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert opt(cmd, "--model") == "/store/m/v1/model"
    assert (opt(cmd, "--host"), opt(cmd, "--port")) == ("127.0.0.1", "18005")
    assert (opt(cmd, "--dtype"), opt(cmd, "--max-model-len"), opt(cmd, "--max-num-seqs")) == ("bfloat16", "1024", "16")
    assert opt(cmd, "--served-model-name") == "SmolLM2-135M-Instruct"
    assert "--tensor-parallel-size" not in cmd and "--gpu-memory-utilization" not in cmd


def test_vllm_on_gpu_gets_tensor_parallelism_and_memory_share():
    args = parse_args({**BASE, "target": "gpu", "tensor_parallel_size": 4, "gpu_memory_utilization": 0.85,
                       "max_num_seqs": 256, "extra_args": ["--enforce-eager"]})
    cmd = BACKENDS.get("vllm").command(Path("/m"), args)
    assert opt(cmd, "--tensor-parallel-size") == "4"
    assert opt(cmd, "--gpu-memory-utilization") == "0.85"
    assert opt(cmd, "--max-num-seqs") == "256"
    assert cmd[-1] == "--enforce-eager"
    env = BACKENDS.get("vllm").env(args, {})
    assert "VLLM_CPU_KVCACHE_SPACE" not in env and env["VLLM_USE_FLASHINFER_SAMPLER"] == "0"


@pytest.mark.parametrize("deployed, expect", [
    ({}, "MacheteLinearKernel"),
    ({"VLLM_DISABLED_KERNELS": "CutlassFP8ScaledMMLinearKernel"},
     "CutlassFP8ScaledMMLinearKernel,MacheteLinearKernel"),
    ({"VLLM_DISABLED_KERNELS": "MacheteLinearKernel"}, None),  # already disabled: nothing to pass
])
def test_marlin_int4_kernel_disables_machete_and_keeps_the_deployments_own_list(deployed, expect):
    from packager.config import EngineConfig
    from packager.serve.build import make_args

    # from the run configuration into the bento's arguments, and back into the engine settings
    args = make_args(model_tag="m:v1", model_digest="d" * 64, service_name="packager-m", model_name="m",
                     engine=EngineConfig(target="gpu", gpu_int4_kernel="marlin"))
    assert args.gpu_int4_kernel == "marlin" and args.engine_config().gpu_int4_kernel == "marlin"
    env = BACKENDS.get("vllm").env(args, deployed)
    assert env.get("VLLM_DISABLED_KERNELS") == expect


def test_int4_kernel_auto_or_on_cpu_leaves_vllms_choice_alone():
    for extra in ({"target": "gpu"}, {"target": "cpu", "gpu_int4_kernel": "marlin"}):
        env = BACKENDS.get("vllm").env(parse_args({**BASE, **extra}), {})
        assert "VLLM_DISABLED_KERNELS" not in env
    with pytest.raises(ConfigError):
        parse_args({**BASE, "target": "gpu", "gpu_int4_kernel": "exllama"})


def test_vllm_cpu_environment_sets_kv_cache_and_thread_binding_but_keeps_an_operator_choice():
    args = parse_args({**BASE, "cpu_kvcache_space_gib": 4, "cpu_omp_threads_bind": "0-3"})
    vllm = BACKENDS.get("vllm")
    env = vllm.env(args, {})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0-3"
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    # a binding the deployment already sets is left alone; only what changes is passed
    env2 = vllm.env(args, {"VLLM_CPU_OMP_THREADS_BIND": "4-7", "HF_HUB_OFFLINE": "1"})
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env2 and "HF_HUB_OFFLINE" not in env2
    assert env2["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_launch_command_hides_bentomls_prometheus_directory_from_the_backend():
    args = parse_args({**BASE, "cpu_kvcache_space_gib": 2})
    cmd = launch_command(BACKENDS.get("vllm"), Path("/m"), args, {"PROMETHEUS_MULTIPROC_DIR": "/tmp/prom"})
    assert cmd[:3] == ["env", "-u", "PROMETHEUS_MULTIPROC_DIR"]
    assert "VLLM_CPU_KVCACHE_SPACE=2" in cmd
    i = cmd.index(sys.executable)
    assert all("=" in c for c in cmd[3:i])  # only assignments between `env -u X` and the program


def test_backend_table_readiness_and_metrics_paths():
    vllm = BACKENDS.get("vllm")
    assert (vllm.readiness_path, vllm.metrics_path) == ("/health", "/metrics")
    with pytest.raises(ConfigError, match="Unknown serving backend 'tgi'. Known: llamacpp, vllm"):
        BACKENDS.get("tgi")


def test_vllm_packages_match_the_pyproject_extras():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for target, pkgs in VLLM_PACKAGES.items():
        assert set(pkgs) <= set(extras[target]), (target, pkgs, extras[target])
    assert BACKENDS.get("vllm").python_packages("gpu") == VLLM_PACKAGES["gpu"]


def test_the_bento_backends_are_the_engines():
    """Bento arguments accept exactly the engines packager.engines.select knows, each with a backend entry."""
    from packager.engines.select import ENGINES

    assert BACKENDS.names() == sorted(ENGINES)
    with pytest.raises(ConfigError, match=r"backend 'tgi' is not available; known backends: llamacpp, vllm"):
        parse_args({"model_tag": "m:v1", "model_digest": "d" * 64, "model_name": "m", "backend": "tgi"})


def test_a_chat_template_travels_as_text_into_the_bento_and_the_vllm_command(tmp_path):
    from packager.config import EngineConfig
    from packager.serve.build import make_args

    tmpl = tmp_path / "chat_template.jinja"
    tmpl.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    args = make_args(model_tag="m:v1", model_digest="d" * 64, engine=EngineConfig(chat_template=str(tmpl)),
                     service_name="packager-m", model_name="m")
    assert args.chat_template == tmpl.read_text()  # the text, not a path of the build machine
    cmd = BACKENDS.get("vllm").command(Path("/m"), args)
    assert opt(cmd, "--chat-template") == tmpl.read_text()
    plain = BACKENDS.get("vllm").command(Path("/m"), parse_args(BASE))
    assert "--chat-template" not in plain
    with pytest.raises(ConfigError, match="is not a file"):
        make_args(model_tag="m:v1", model_digest="d" * 64, engine=EngineConfig(chat_template=str(tmp_path / "x")),
                  service_name="packager-m", model_name="m")


def test_several_api_servers_start_through_vllm_serve_with_the_same_arguments():
    from packager.config import EngineConfig
    from packager.serve.build import make_args

    # from the run configuration into the bento's arguments, and back into the engine settings
    args = make_args(model_tag="m:v1", model_digest="d" * 64, service_name="packager-m", model_name="m",
                     engine=EngineConfig(target="gpu", api_server_count=4, max_num_seqs=256,
                                         extra_args=["--stream-interval", "4"]))
    assert args.api_server_count == 4 and args.engine_config().api_server_count == 4
    cmd = BACKENDS.get("vllm").command(Path("/store/m/v1/model"), args)
    # `vllm serve MODEL`: the server's own module starts one API server only, whatever it is told
    assert cmd[:4] == [sys.executable, "-m", "packager.engines.vllm_serve", "/store/m/v1/model"]
    assert "--model" not in cmd
    assert opt(cmd, "--api-server-count") == "4" and opt(cmd, "--max-num-seqs") == "256"
    assert (opt(cmd, "--host"), opt(cmd, "--port")) == ("127.0.0.1", "8000")
    assert cmd[-2:] == ["--stream-interval", "4"]  # the deployment's own arguments still come last


def test_one_api_server_keeps_the_servers_own_module_and_no_count_flag():
    cmd = BACKENDS.get("vllm").command(Path("/m"), parse_args({**BASE, "target": "gpu", "api_server_count": 1}))
    assert cmd[:5] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"]
    assert "--api-server-count" not in cmd
    for bad in (0, -1, 65):
        with pytest.raises(ConfigError):
            parse_args({**BASE, "api_server_count": bad})


def test_the_vllm_command_parses_with_vllms_own_serve_arguments():
    """The argv the product builds is read by the installed vLLM's own `serve` parser, as the launcher reads it (no
    engine starts): every flag exists there and lands where it should."""
    pytest.importorskip("vllm")
    from packager.config import EngineConfig
    from packager.engines import vllm_serve
    from packager.engines.vllm import vllm_command

    cmd = vllm_command("/m", 18123, EngineConfig(target="gpu", api_server_count=3, max_num_seqs=200,
                                                 max_model_len=4096, kv_cache_dtype="fp8"), served_name="svc")
    assert cmd[1:3] == ["-m", vllm_serve.__name__]
    _, a = vllm_serve.parse(cmd[3:])
    assert (a.model_tag, a.api_server_count, a.max_num_seqs, a.max_model_len) == ("/m", 3, 200, 4096)
    assert a.kv_cache_dtype == "fp8"
    assert (a.port, a.served_model_name, a.load_format) == (18123, ["svc"], "safetensors")


def test_an_fp8_kv_cache_travels_from_the_run_configuration_into_the_bento_and_the_vllm_command():
    from packager.config import EngineConfig
    from packager.serve.build import make_args

    args = make_args(model_tag="m:v1", model_digest="d" * 64, service_name="packager-m", model_name="m",
                     engine=EngineConfig(target="gpu", kv_cache_dtype="fp8"))
    assert args.kv_cache_dtype == "fp8" and args.engine_config().kv_cache_dtype == "fp8"
    vllm = BACKENDS.get("vllm")
    assert opt(vllm.command(Path("/models/m"), args), "--kv-cache-dtype") == "fp8"
    # the default leaves vLLM's choice (the model's dtype) alone: no flag at all
    assert "--kv-cache-dtype" not in vllm.command(Path("/models/m"), parse_args(BASE))


def test_an_fp8_kv_cache_is_refused_for_llama_cpp_but_a_gguf_in_a_vllm_release_keeps_its_own_cache(tmp_path):
    from packager.config import EngineConfig
    from packager.engines.select import select_engine

    with pytest.raises(ValueError, match="kv_cache_dtype='fp8' is a vLLM setting"):
        EngineConfig(backend="llamacpp", kv_cache_dtype="fp8")
    with pytest.raises(ConfigError, match="kv_cache_dtype"):
        parse_args({**BASE, "backend": "llamacpp", "kv_cache_dtype": "fp8"})
    with pytest.raises(ConfigError):
        parse_args({**BASE, "kv_cache_dtype": "int8"})
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    said: list[str] = []
    eng = select_engine(tmp_path, EngineConfig(kv_cache_dtype="fp8"), log=said.append)
    assert (eng.backend, eng.kv_cache_dtype) == ("llamacpp", "auto")
    assert any("kv_cache_dtype fp8 is a vLLM setting" in m for m in said)


def test_an_fp8_kv_cache_on_a_cpu_without_avx512_or_amx_is_refused_before_vllm_starts(monkeypatch, tmp_path):
    pytest.importorskip("vllm")
    from packager import hardware
    from packager.config import EngineConfig
    from packager.engines.vllm import EngineServer
    from packager.errors import ServerError

    srv = EngineServer(tmp_path, EngineConfig(kv_cache_dtype="fp8"))
    monkeypatch.setattr(hardware, "detect_cpu", lambda: hardware.CPUInfo("x", "x86_64", 2, 2, ["avx2"]))
    with pytest.raises(ServerError, match="AVX-512 or AMX"):
        srv.launch_spec()
    monkeypatch.setattr(hardware, "detect_cpu", lambda: hardware.CPUInfo("x", "x86_64", 2, 2, ["avx512f"]))
    cmd, _ = srv.launch_spec()
    assert cmd[cmd.index("--kv-cache-dtype") + 1] == "fp8"
