"""How llama.cpp's own server (`llama-server`) is built: from the llama.cpp source vendored in the pinned
llama-cpp-python sdist, with cmake, for the CPU of the machine that builds it (`GGML_NATIVE=ON`).

One recipe for the two places that build it:

* `make install` runs `python -m packager.engines.llama_server_build SRC DEST` (SRC: the sdist's
  vendor/llama.cpp; DEST: the venv's bin/), 292 s on 2 cores;
* the image of a bento with backend llamacpp runs the same steps (`image_commands`) when it is containerized,
  so the binary is compiled on, and for, the machine that builds the image.

The flags turn off everything that would download at build time or that the server does not need: the web UI
(its prebuilt assets come from a remote bucket), OpenSSL, libcurl (model downloads), tests and examples. The
binary is linked statically (BUILD_SHARED_LIBS=OFF): one file, no library path to set.

A finished build is kept in packager's home (`$PACKAGER_HOME/build-cache/llama-server/KEY/`), keyed by what
decides the binary: the source tree's content, the cmake flags, the compiler's and cmake's versions, the
architecture, the CPU's instruction-set flags (`-march=native`) and the compilers and flags set in the
environment (CC, CXX, CFLAGS, CXXFLAGS, LDFLAGS). A later install with the same key (a new venv, `make clean
install`, another checkout on the same machine) copies it after checking its sha256 and that it runs, instead of
compiling for 5 minutes; anything else builds afresh. `--no-cache` always builds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from packager.fsutil import atomic_write_json, sha256_bytes, sha256_file

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # keep equal to the Makefile's and pyproject's pin (a unit test checks)
BINARY = "llama-server"
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",  # -march=native: the binary runs on CPUs with this machine's instruction sets
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_CCACHE=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # ON fetches the web UI's assets from a remote bucket
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
)
# A bound on the build (292 s on 2 cores); a hung compiler is stopped and its log's tail shown.
BUILD_TIMEOUT_S = 3600


def build_commands(src: str | Path, build_dir: str | Path, dest: str | Path, jobs: int) -> list[list[str]]:
    """The argv of each step: configure, compile the one target, install the binary into `dest`."""
    return [
        ["cmake", "-S", str(src), "-B", str(build_dir), *CMAKE_FLAGS],
        ["cmake", "--build", str(build_dir), "--target", BINARY, "-j", str(jobs)],
        ["install", "-D", "-m", "0755", str(Path(build_dir) / "bin" / BINARY), str(Path(dest) / BINARY)],
    ]


def image_commands(dest: str = "/usr/local/bin") -> list[str]:
    """Shell commands for a bento image (BentoML `Image.run`): fetch the pinned sdist with pip, build, install,
    clean up. They run where the image is built, which has an index to fetch from; a serving host never builds."""
    work = "/tmp/packager-llama-server"
    src = f"{work}/llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp"
    steps = [" ".join(shlex.quote(a) for a in cmd)
             for cmd in build_commands(src, f"{work}/build", dest, jobs=0)]
    steps[1] = steps[1].replace("-j 0", '-j "$(nproc)"')
    return [
        f"python -m pip download --no-deps --no-binary :all: llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} -d {work}",
        f"tar -xzf {work}/llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz -C {work}",
        *steps,
        f"rm -rf {work}",
    ]


def build(src: Path, dest: Path, build_dir: Path, jobs: int, log=print, cache: Path | None = None) -> Path:
    """Install the binary into `dest`: from the build cache (`cache`, the folder of this build's key; None: no
    cache) if it holds this build, else by running the steps (each one's output goes to build_dir/NAME.log, a
    failed or hung step shows its tail) and then keeping the result there."""
    if not (src / "tools" / "server").is_dir():
        raise SystemExit(f"{src} is not llama.cpp's source tree (no tools/server): pass the sdist's vendor/llama.cpp")
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"building {BINARY} needs {tool}: install cmake and a C++ compiler (e.g. g++)")
    if cache is not None and (reused := from_cache(cache, dest, log)) is not None:
        return reused
    binary = compile_and_install(src, dest, build_dir, jobs, log)
    if cache is not None:
        store(cache, binary, log)
    return binary


def compile_and_install(src: Path, dest: Path, build_dir: Path, jobs: int, log=print) -> Path:
    """Configure, compile and install, each step bounded by BUILD_TIMEOUT_S."""
    build_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    for name, cmd in zip(("configure", "compile", "install"), build_commands(src, build_dir, dest, jobs)):
        log_path = build_dir / f"{name}.log"
        log(f"{BINARY}: {name} ({' '.join(cmd[:4])} ...), log {log_path.name}")
        with open(log_path, "w") as out:
            # the compiler's own progress ("[ 44%] Building ...") goes to the log; a heartbeat shows it here
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + BUILD_TIMEOUT_S
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise SystemExit(f"{BINARY}: {name} ran past {BUILD_TIMEOUT_S} s and was stopped; its log ends:\n"
                                     + _tail(log_path))
                time.sleep(5)
                if name == "compile" and int(time.monotonic() - t_start) % 60 < 5:
                    log(f"{BINARY}: {_last_progress(log_path)} ({time.monotonic() - t_start:.0f} s)")
        if proc.returncode != 0:
            raise SystemExit(f"{BINARY}: {name} failed (exit code {proc.returncode}); its log ends:\n"
                             + _tail(log_path))
    log(f"{BINARY}: built in {time.monotonic() - t_start:.0f} s -> {dest / BINARY}")
    return dest / BINARY


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def _last_progress(path: Path) -> str:
    for line in reversed(path.read_text(errors="replace").splitlines()[-50:]):
        if line.startswith("[") and "%]" in line:
            return line.split("]")[0] + "]"
    return "compiling"


# ----------------------------------------------------------------------------------------------- build cache
def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (out.strip().splitlines() or ["unavailable"])[0]


def _cpu_flags() -> str:
    """The CPU's instruction-set flags (what -march=native compiles for); the processor's name where Linux's
    /proc/cpuinfo is absent."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_digest(src: Path) -> str:
    """One sha256 over every source file's path and content (packager.fsutil's manifest hashing)."""
    from packager.fsutil import hash_tree, tree_digest

    return tree_digest(hash_tree(src, exclude=()))


# what cmake reads from the environment when it configures: the compilers and their flags
_BUILD_ENV = ("CC", "CXX", "CFLAGS", "CXXFLAGS", "LDFLAGS")


def cache_inputs(src: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Everything that decides the compiled binary."""
    env = dict(os.environ if environ is None else environ)
    return {"source_sha256": source_digest(src), "cmake_flags": " ".join(CMAKE_FLAGS), "target": BINARY,
            "build_env": " ".join(f"{k}={env.get(k, '')}" for k in _BUILD_ENV),
            "compiler": _first_line([env.get("CXX") or "c++", "--version"]),
            "cmake": _first_line(["cmake", "--version"]), "machine": platform.machine(), "cpu_flags": _cpu_flags()}


def cache_dir_for(inputs: dict[str, str], root: Path | None = None) -> Path:
    from packager.core.sources import packager_home

    key = sha256_bytes(json.dumps(inputs, sort_keys=True).encode())[:24]
    return (root or packager_home() / "build-cache" / BINARY) / key


def _copy_executable(binary: Path, folder: Path) -> Path:
    """Copy `binary` into `folder` under its name, executable, never half-written (a partial copy is renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{BINARY}.partial"
    shutil.copyfile(binary, tmp)
    tmp.chmod(0o755)
    return tmp.replace(folder / BINARY)


def from_cache(cache: Path, dest: Path, log=print) -> Path | None:
    """Copy the cached binary into `dest` if it is there whole (its sha256 as recorded) and runs (`--version`);
    None (and a line saying why, where something was there) otherwise."""
    binary, record = cache / BINARY, cache / "build.json"
    if not (binary.is_file() and record.is_file()):
        return None
    try:
        want = json.loads(record.read_text())["binary_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        want = None
    if want != sha256_file(binary):
        log(f"{BINARY}: the cached build in {cache} does not match its record; building afresh")
        return None
    try:
        ok = subprocess.run([str(binary), "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        log(f"{BINARY}: the cached build in {cache} does not run here; building afresh")
        return None
    _copy_executable(binary, dest)
    log(f"{BINARY}: reused the build in {cache} (same source, flags, compiler and CPU) -> {dest / BINARY}")
    return dest / BINARY


def store(cache: Path, binary: Path, log=print) -> None:
    """Keep a finished build for later installs; a cache that cannot be written costs only the next build."""
    try:
        kept = _copy_executable(binary, cache)
        atomic_write_json(cache / "build.json", {"binary_sha256": sha256_file(kept),
                                                 "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    except OSError as e:
        log(f"{BINARY}: could not keep the build in {cache} ({e}); the next install builds again")
        return
    log(f"{BINARY}: kept the build in {cache} for later installs")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m packager.engines.llama_server_build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="llama.cpp's source tree (the sdist's vendor/llama.cpp)")
    p.add_argument("dest", type=Path, help="folder the llama-server binary is installed into")
    p.add_argument("--build-dir", type=Path, default=Path("build/llama-server"))
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else (os.cpu_count() or 2))
    p.add_argument("--no-cache", action="store_true", help="build even if packager's build cache holds this build")
    a = p.parse_args(argv)
    src = a.src.resolve()
    cache = None if a.no_cache or not (src / "tools" / "server").is_dir() else cache_dir_for(cache_inputs(src))
    build(src, a.dest.resolve(), a.build_dir.resolve(), a.jobs, log=lambda m: print(m, flush=True), cache=cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
