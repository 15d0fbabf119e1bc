"""Hardware detection and preflight: what runs where."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from packager.hardware import CPUInfo, advisories, format_support, gpu_capability, parse_cpuinfo, preflight

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 sha_ni
processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 sha_ni
"""

OLD = CPUInfo(model="Old", arch="x86_64", logical_cores=4, usable_cores=4, flags=["avx2"])
VNNI = CPUInfo(model="New", arch="x86_64", logical_cores=4, usable_cores=4, flags=["avx2", "avx512f", "avx512_vnni"])


def test_parse_cpuinfo(tmp_path):
    model, flags = parse_cpuinfo(CPUINFO)
    assert model == "AMD EPYC 9R14"
    assert {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"} <= flags
    p = tmp_path / "cpuinfo"
    p.write_text(CPUINFO)
    from packager.hardware import detect_cpu

    cpu = detect_cpu(str(p))
    assert cpu.flags == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"] and cpu.has_vnni and not cpu.has_amx


def test_gpu_capability_names():
    assert gpu_capability("H100") == (9, 0)
    assert gpu_capability("nvidia-h100-80gb") == (9, 0)
    assert gpu_capability("NVIDIA L40S") == (8, 9)
    assert gpu_capability("L4") == (8, 9)
    assert gpu_capability("RTX 4090") == (8, 9)
    assert gpu_capability("A100-SXM4-80GB") == (8, 0)
    assert gpu_capability("A10G") == (8, 6)
    assert gpu_capability("made-up-9000") is None


def test_preflight_matrix():
    assert preflight("fp8", "cpu", cpu=VNNI)  # refused
    assert preflight("fp8", "gpu", "H200") == []
    assert preflight("fp8", "gpu", "L4") == []
    assert "compute capability 8.6" in preflight("fp8", "gpu", "A10G")[0]
    assert "unknown GPU type" in preflight("fp8", "gpu", "Z1")[0]
    assert preflight("w8a8_int8", "cpu", cpu=OLD) == []  # allowed, with a warning
    assert any("no VNNI" in n for n in advisories("w8a8_int8", "cpu", cpu=OLD))
    assert advisories("w8a8_int8", "cpu", cpu=VNNI) == []
    assert "Turing" in preflight("w8a8_int8", "gpu", "V100")[0]
    assert preflight("w8a8_int8", "gpu", "T4") == []
    # vLLM's AVX2 CPU library has no GPTQ kernel: refused up front instead of failing at engine start
    assert "no AVX512" in preflight("gptq", "cpu", cpu=OLD)[0] and "cpu_gemm_wna16" in preflight("gptq", "cpu", cpu=OLD)[0]
    assert preflight("gptq", "cpu", cpu=VNNI) == []
    arm = CPUInfo(model="Graviton", arch="aarch64", logical_cores=4, usable_cores=4, flags=[])
    assert preflight("gptq", "cpu", cpu=arm) == []  # the rule is about x86's AVX2/AVX512 libraries
    assert preflight("prune", "cpu", cpu=OLD) == [] and preflight("distill", "gpu", "T4") == []


def test_fp8_on_a_cpu_with_amx_fp8_is_allowed():
    amx = CPUInfo(model="DMR", arch="x86_64", logical_cores=4, usable_cores=4, flags=["amx_tile", "amx_fp8"])
    assert preflight("fp8", "cpu", cpu=amx) == []


def test_format_support_rows():
    rows = {r["format"]: r for r in format_support("cpu", cpu=VNNI)}
    assert rows["w8a8_int8"]["runs"] and rows["gptq"]["runs"] and rows["bfloat16"]["runs"]
    assert not rows["fp8"]["runs"] and rows["fp8"]["problems"]
    old = {r["format"]: r for r in format_support("cpu", cpu=OLD)}
    assert old["w8a8_int8"]["runs"] and not old["gptq"]["runs"]


def test_hardware_cli_json():
    from packager.cli import app

    r = CliRunner().invoke(app, ["hardware", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["cpu"]["logical_cores"] >= 1
    assert {row["format"] for row in data["formats"]} == {"bfloat16", "w8a8_int8", "gptq", "fp8"}


def test_hardware_cli_table_for_gpu_target():
    from packager.cli import app

    r = CliRunner().invoke(app, ["hardware", "--target", "gpu", "--gpu-type", "A100"])
    assert r.exit_code == 0, r.output
    assert "fp8" in r.output and "NO" in r.output


def test_serving_dtype_auto_follows_native_bf16_and_keeps_an_explicit_choice():
    from packager.hardware import serving_dtype

    bf16 = CPUInfo(model="SPR", arch="x86_64", logical_cores=4, usable_cores=4, flags=["avx2", "avx512_bf16"])
    amx = CPUInfo(model="GNR", arch="x86_64", logical_cores=4, usable_cores=4, flags=["amx_tile"])
    arm = CPUInfo(model="Graviton", arch="aarch64", logical_cores=4, usable_cores=4, flags=["bf16"])
    assert [serving_dtype("auto", "cpu", c) for c in (OLD, VNNI, bf16, amx, arm)] == \
        ["float32", "float32", "bfloat16", "bfloat16", "bfloat16"]
    assert serving_dtype("auto", "gpu", OLD) == "bfloat16"
    assert [serving_dtype(d, "cpu", OLD) for d in ("bfloat16", "float16", "float32")] == \
        ["bfloat16", "float16", "float32"]


def test_vllm_command_carries_the_resolved_dtype_and_enforce_eager(monkeypatch):
    import packager.engines.vllm as vllm_mod
    from packager.config import EngineConfig

    monkeypatch.setattr(vllm_mod, "serving_dtype", lambda dtype, target: {"auto": "float32"}.get(dtype, dtype))
    cmd = vllm_mod.vllm_command("/m", 8000, EngineConfig())
    assert cmd[cmd.index("--dtype") + 1] == "float32" and "--enforce-eager" not in cmd
    cmd = vllm_mod.vllm_command("/m", 8000, EngineConfig(dtype="bfloat16", enforce_eager=True))
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16" and cmd.count("--enforce-eager") == 1
