"""FP8 is refused before any work on hardware that cannot serve it, saying why and which hardware can."""
from __future__ import annotations

import pytest

from packager.compress.base import StageContext
from packager.compress.fp8 import FP8Args, apply_fp8
from packager.compress.recipe import parse_recipe, run_recipe
from packager.config import EngineConfig
from packager.errors import HardwareError
from packager.hardware import CPUInfo
from packager.core.sources import ResolvedModel

NO_GPU_CPU = CPUInfo(model="Test CPU", arch="x86_64", logical_cores=2, usable_cores=2, flags=["avx2", "avx512_vnni"])


def test_fp8_on_cpu_target_refused_by_method(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("packager.hardware.detect_cpu", lambda *a, **k: NO_GPU_CPU)
    out = tmp_path / "o"
    out.mkdir()
    with pytest.raises(HardwareError) as e:
        apply_fp8(FP8Args(), StageContext(tiny_llama_dir, out, engine=EngineConfig(target="cpu")))
    msg = str(e.value)
    assert "refused for this CPU" in msg and "emulated" in msg
    for hw in ("H100", "H200", "L4", "L40S", "RTX 4090"):
        assert hw in msg
    assert "8.9" in msg and "w8a8_int8" in msg
    assert list(out.iterdir()) == []  # refused before writing anything


def test_fp8_recipe_refused_before_any_stage_dir(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("packager.hardware.detect_cpu", lambda *a, **k: NO_GPU_CPU)
    recipe = parse_recipe({"name": "fp8", "stages": [{"kind": "fp8"}]}, "fp8.yaml")
    out = tmp_path / "run"
    with pytest.raises(HardwareError, match="(?s)Refusing the recipe before starting.*stage 01-fp8: fp8"):
        run_recipe(ResolvedModel(tiny_llama_dir, "tiny", "tiny"), recipe, out, engine=EngineConfig(target="cpu"),
                   progress=False)
    assert not (out / "01-fp8").exists()


def test_fp8_gpu_target_without_gpu_or_type_refused(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("packager.hardware.detect_gpus", lambda: [])
    recipe = parse_recipe({"name": "fp8", "stages": [{"kind": "fp8"}]}, "fp8.yaml")
    with pytest.raises(HardwareError, match="no CUDA GPU is visible"):
        run_recipe(ResolvedModel(tiny_llama_dir, "tiny", "tiny"), recipe, tmp_path / "r",
                   engine=EngineConfig(target="gpu"), progress=False)


def test_fp8_for_an_a100_refused(tiny_llama_dir, tmp_path):
    recipe = parse_recipe({"name": "fp8", "stages": [{"kind": "fp8"}]}, "fp8.yaml")
    with pytest.raises(HardwareError, match=r"A100 \(compute capability 8.0\)"):
        run_recipe(ResolvedModel(tiny_llama_dir, "tiny", "tiny"), recipe, tmp_path / "r",
                   engine=EngineConfig(target="gpu", gpu_type="A100"), progress=False)


def test_fp8_for_a_named_h100_target_converts_here(tiny_llama_dir, tmp_path):
    """The conversion is tensor math: compressing FOR an H100 works on a machine without one."""
    recipe = parse_recipe({"name": "fp8", "stages": [{"kind": "fp8"}]}, "fp8.yaml")
    res = run_recipe(ResolvedModel(tiny_llama_dir, "tiny", "tiny"), recipe, tmp_path / "r",
                     engine=EngineConfig(target="gpu", gpu_type="H100"), progress=False)
    assert res.stages[0].report["format"] == "float-quantized"
