"""The two llama.cpp steps of a GGUF export (packager.gguf.export), each in a subprocess with its output in a log
file that drives a progress bar: llama.cpp's converter (convert_hf_to_gguf.py) and llama_model_quantize (through
llama-cpp-python; weighted by an importance matrix when one is given, packager.gguf.imatrix)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from packager.errors import PackagerError
from packager.gguf.quant import QuantType

CONVERT_SCRIPT = "convert_hf_to_gguf.py"


class _Progress:
    """The progress bar of one step (packager.core.progress), or nothing (progress=False); full at the end of a
    step that succeeded."""

    def __init__(self, enabled: bool, description: str, total: int | None):
        from packager.core.progress import progress_bar

        self._cm = progress_bar(description, total=total, enabled=enabled, eta=False)
        self.total = total

    def __enter__(self) -> "_Progress":
        self.bar = self._cm.__enter__()
        return self

    def set_total(self, total: int) -> None:
        if self.total is None:
            self.total = total
            self.bar.update(total=total)

    def update(self, completed: int, description: str | None = None) -> None:
        self.bar.update(completed=completed, description=description or None)

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and self.total:
            self.bar.update(completed=self.total)
        self._cm.__exit__(*exc)


def _run_logged(cmd: list[str], log_path: Path, env: dict[str, str], on_line: Callable[[str], None],
                what: str) -> None:
    """Run cmd with its output in log_path, calling on_line for each line; raise with the log's tail on failure."""
    from packager.fsutil import tail

    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                errors="replace", bufsize=1)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                logf.write(line)
                on_line(line)
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if rc != 0:
        raise PackagerError(f"{what} failed (exit code {rc}). "
                            f"Last lines of its log ({log_path}):\n{tail(log_path, 25)}")


def convert_to_gguf(model_dir: Path, out_file: Path, outtype: str, tools: Path, log_path: Path,
                    progress: bool = True) -> float:
    """llama.cpp's convert_hf_to_gguf.py: model_dir -> out_file (outtype f32/f16/bf16). Returns wall seconds."""
    from packager.compress.checkpoint import tensor_shapes

    n_tensors = len(tensor_shapes(model_dir))
    cmd = [sys.executable, str(tools / CONVERT_SCRIPT), str(model_dir), "--outfile", str(out_file),
           "--outtype", outtype]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py (of its version), not the installed one
    seen = 0
    t0 = time.perf_counter()
    with _Progress(progress, f"convert to {outtype} GGUF", n_tensors or None) as bar:
        def on_line(line: str) -> None:
            nonlocal seen
            if " --> " in line:  # "INFO:hf-to-gguf:blk.0.attn_q.weight, torch.float32 --> F32, shape = {...}"
                seen += 1
                bar.update(min(seen, n_tensors or seen))
            elif line.startswith("Writing"):
                bar.update(n_tensors or seen, "write GGUF")

        _run_logged(cmd, log_path, env, on_line, f"llama.cpp's converter ({CONVERT_SCRIPT}) on {model_dir}")
    if not out_file.is_file():
        raise PackagerError(f"llama.cpp's converter exited without writing {out_file}; see {log_path}.")
    return time.perf_counter() - t0


_QUANTIZE_SNIPPET = """
import ctypes, sys
import llama_cpp
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
params.nthread = int(sys.argv[4])
if len(sys.argv) > 5:  # an importance matrix (packager.gguf.imatrix): float32 vectors by GGUF tensor name
    import numpy as np
    from safetensors.numpy import load_file
    im = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in load_file(sys.argv[5]).items()}
    entries = (llama_cpp.llama_model_imatrix_data * (len(im) + 1))()
    for i, (k, v) in enumerate(im.items()):
        entries[i].name = k.encode()
        entries[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = v.size
    entries[len(im)].name = None
    params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params))
sys.stdout.flush()
sys.exit(0 if rc == 0 else 10 + (rc if 0 < rc < 100 else 0))
"""
_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def quantize_gguf(in_file: Path, out_file: Path, quant: QuantType, threads: int, log_path: Path,
                  progress: bool = True, imatrix: Path | None = None) -> float:
    """llama_cpp.llama_model_quantize(in_file -> out_file, quant), in a subprocess, weighted by the importance
    matrix file `imatrix` when given (packager.gguf.imatrix). Returns wall seconds."""
    cmd = [sys.executable, "-c", _QUANTIZE_SNIPPET, str(in_file), str(out_file), str(quant.ftype()), str(threads)]
    cmd += [str(imatrix)] if imatrix is not None else []
    t0 = time.perf_counter()
    with _Progress(progress, f"quantize to {quant.name}", None) as bar:
        def on_line(line: str) -> None:
            m = _TENSOR_LINE.search(line)
            if m:
                done, total = int(m.group(1)), int(m.group(2))
                bar.set_total(total)
                bar.update(done)

        _run_logged(cmd, log_path, dict(os.environ), on_line, f"llama.cpp quantization to {quant.name}")
    if not out_file.is_file():
        raise PackagerError(f"llama.cpp's quantization wrote no {out_file}; see {log_path}.")
    return time.perf_counter() - t0
