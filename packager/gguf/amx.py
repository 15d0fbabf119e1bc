"""llama.cpp on CPUs with AMX (Sapphire Rapids and later): its AMX weight buffers crash the pinned build on the
first prompt of four tokens or more with a quantized model (a segfault in ggml_backend_amx_mul_mat; seen with
Q4_0 and Q4_K_M, llama.cpp issue 20824). On such a CPU packager turns llama.cpp's extra buffer types off (weights
stay in plain CPU buffers, without AMX or repacking):

* `llama-server` (the bento's llamacpp backend and the evaluator) gets `--no-repack` (`llama_server_flags`);
* a `llama_cpp.Llama` of this process (in-process scoring) loads with `use_extra_bufts=False` (`avoid_amx_crash`).

PACKAGER_LLAMACPP_EXTRA_BUFTS=1 keeps them on, =0 turns them off on any CPU.
"""
from __future__ import annotations

import os

ENV_EXTRA_BUFTS = "PACKAGER_LLAMACPP_EXTRA_BUFTS"


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    return any(line.startswith("flags") and " amx_int8" in f" {line}" for line in cpuinfo.splitlines())


def extra_bufts_wanted(environ: dict[str, str] | None = None, cpuinfo: str | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get(ENV_EXTRA_BUFTS) in ("0", "1"):
        return env[ENV_EXTRA_BUFTS] == "1"
    return not cpu_has_amx(cpuinfo)


def llama_server_flags(environ: dict[str, str] | None = None, cpuinfo: str | None = None) -> list[str]:
    """`llama-server` flags for this CPU: `--no-repack` where the extra buffer types crash."""
    return [] if extra_bufts_wanted(environ, cpuinfo) else ["--no-repack"]


def avoid_amx_crash() -> bool:
    """Make every llama_cpp.Llama of this process load without extra buffer types where they crash. Returns
    whether they stay on."""
    import llama_cpp.llama_cpp as lib

    if extra_bufts_wanted():
        return True
    if getattr(lib.llama_model_default_params, "_packager_no_extra_bufts", False):
        return False
    default = lib.llama_model_default_params

    def without_extra_bufts():
        params = default()
        params.use_extra_bufts = False
        return params

    without_extra_bufts._packager_no_extra_bufts = True  # type: ignore[attr-defined]
    without_extra_bufts.__wrapped__ = default  # type: ignore[attr-defined]
    setattr(lib, "llama_model_default_params", without_extra_bufts)
    return False
