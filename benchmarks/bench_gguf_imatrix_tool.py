"""packager's importance matrix against llama.cpp's own `llama-imatrix` tool, on Q4_K_M, in one run.

packager computes the imatrix in torch (packager.gguf.imatrix) instead of running `llama-imatrix`, which
`make install` does not build. This checks that choice: on the bundled SmolLM2-135M-Instruct, the same calibration
texts (the release's default: 128 samples of up to 512 tokens, rendered with the chat template) give

1. a plain Q4_K_M (no imatrix), a Q4_K_M with packager's imatrix (both through `packager.gguf.export.export_gguf`),
2. a Q4_K_M quantized by `llama-quantize --imatrix` from the f32 GGUF, with a matrix `llama-imatrix` collected on
   the same texts (written one after another to a text file; the tool cuts it into chunks of 512 tokens),

and each file's KL to the float model is measured as in bench_gguf_imatrix.py (the same prompts and answers).
The two tools come from the llama.cpp source vendored in the pinned llama-cpp-python sdist, built like llama-server:

    tar -xzf build/llama-cpp-sdist/llama_cpp_python-0.3.36.tar.gz --strip-components=3 -C SRC \\
        llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -S SRC -B SRC/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \\
        -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    cmake --build SRC/build --target llama-imatrix llama-quantize -j 2
    .venv/bin/python benchmarks/bench_gguf_imatrix_tool.py --bin-dir SRC/build/bin

Results: the `llama_imatrix_tool` entry of benchmarks/results/gguf_imatrix.json's checks.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _run(argv: list[str], log: Path, timeout_s: float) -> float:
    t0 = time.monotonic()
    with log.open("w") as f:
        subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, check=True, timeout=timeout_s)
    return round(time.monotonic() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", type=Path, required=True, help="where llama-imatrix and llama-quantize are")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gguf_imatrix.json")
    ap.add_argument("--prompts", type=int, default=120)
    ap.add_argument("--answer-tokens", type=int, default=32)
    a = ap.parse_args()

    from bench_gguf_imatrix import _fidelity, reference_answers

    from packager.compress.calibration import load_calibration
    from packager.compress.recipe import chat_renderer
    from packager.core.sources import ensure_default_model
    from packager.gguf.export import export_gguf
    from packager.hardware import cpu_threads

    work = Path(tempfile.mkdtemp(prefix="bench-imatrix-tool-"))
    src = ensure_default_model().path
    texts, label, sha = load_calibration("default", 128, 512, render=chat_renderer(src))
    plain = {art.quant: art for art in export_gguf(src, work / "plain", ("f32", "q4_k_m"), progress=False,
                                                   log=lambda _m: None)}
    t0 = time.monotonic()
    ours = export_gguf(src, work / "imatrix", ("q4_k_m",), progress=False, log=lambda _m: None,
                       calibration_texts=texts)[0]
    ours_s = round(time.monotonic() - t0, 1)
    calib = work / "calibration.txt"
    calib.write_text("\n".join(texts))
    f32 = str(plain["f32"].gguf_path)
    threads = str(cpu_threads())
    tool_s = _run([str(a.bin_dir / "llama-imatrix"), "-m", f32, "-f", str(calib), "-c", "512", "-t", threads,
                   "-o", str(work / "imatrix.gguf"), "--no-ppl"], work / "imatrix.log", 3600)
    tool_q = work / "q4_k_m-llama-imatrix.gguf"
    _run([str(a.bin_dir / "llama-quantize"), "--imatrix", str(work / "imatrix.gguf"), f32, str(tool_q), "Q4_K_M",
          threads], work / "quantize.log", 3600)

    seqs, n_ctx = reference_answers(src, a.prompts, a.answer_tokens)
    rows = {"plain": _fidelity(Path(plain["q4_k_m"].gguf_path), seqs, n_ctx),
            "packager_imatrix": _fidelity(Path(ours.gguf_path), seqs, n_ctx),
            "llama_imatrix_tool": _fidelity(tool_q, seqs, n_ctx)}
    for k, v in rows.items():
        print(k, v, flush=True)
    base = rows["plain"]["mean_kl"]
    check = {**rows,
             "kl_ratio_to_plain": {k: round(rows[k]["mean_kl"] / base, 3) for k in ("packager_imatrix",
                                                                                   "llama_imatrix_tool")},
             "calibration": {"source": label, "sha256": sha, "samples": len(texts)},
             "seconds": {"packager_imatrix_export": ours_s, "llama_imatrix": tool_s},
             "prompts": len(seqs), "answer_tokens": a.answer_tokens,
             "note": "Q4_K_M from the same f32 conversion and calibration texts: packager's torch imatrix "
                     "(export_gguf) against llama.cpp's llama-imatrix (chunks of 512 tokens, --no-ppl) and "
                     "llama-quantize, built from the pinned sdist's vendored source (bench_gguf_imatrix_tool.py)"}
    out = json.loads(a.out.read_text()) if a.out.exists() else {}
    out.setdefault("checks", {})["llama_imatrix_tool_q4_k_m"] = check
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(check["kl_ratio_to_plain"]), f"wrote {a.out}")


if __name__ == "__main__":
    main()
