"""The built-in W8A8's asymmetric activations on a GPU: do vLLM's CUDA kernels serve them, and at what cost?

The checkpoint of the built-in `w8a8-int8` (asymmetric per-token activations) and a copy of it whose config asks for
symmetric activations (the same int8 weights: the activation scheme is only a quantization_config flag, which
decides whether vLLM quantizes each token with a zero point, cutlass_scaled_mm_azp, or without one) are served one
after the other by vLLM on one GPU (packager.engines.vllm.EngineServer, target gpu, bfloat16), the order reversed in
the second round. Measured: greedy answers to a few prompts (the two schemes need not agree token for token), the
kernel vLLM chose (its log), and output tokens/s at 1, 16 and 64 streams with the client of
benchmarks/bench_compression.py (64 output tokens per request, ignore_eos). Results: benchmarks/results/
gpu_int8_activations.json.

    python3 benchmarks/gpu_int8_activations.py --model DIR_OF_THE_W8A8_INT8_STAGE --out OUT.json

`--also NAME=DIR` serves other checkpoints beside them in the same rounds (e.g. one whose down_proj input the engine
rotates, packager.compress.rotation), and `--no-symmetric-copy` leaves the symmetric copy out. Ratios are to the
first model (`--model`, "asymmetric").
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
STREAMS = (1, 16, 64)
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at a temperature of",
           "The three primary colours are", "In 1969, the first humans", "To make a cup of tea, first"]


def symmetric_copy(src: Path, dst: Path) -> Path:
    """The same checkpoint with symmetric per-token activations asked for in its config."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for group in cfg["quantization_config"]["config_groups"].values():
        group["input_activations"]["symmetric"] = True
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def answers(url: str) -> list[str]:
    import httpx

    out = []
    for p in PROMPTS:
        r = httpx.post(f"{url}/v1/completions", timeout=120,
                       json={"model": "m", "prompt": p, "max_tokens": 24, "temperature": 0})
        r.raise_for_status()
        out.append(r.json()["choices"][0]["text"])
    return out


def kernel_lines(log: Path) -> list[str]:
    keys = ("ScaledMM", "scaled_mm", "azp")
    return sorted({ln.split("]", 1)[-1].strip()[:200] for ln in log.read_text(errors="replace").splitlines()
                   if any(k in ln for k in keys) and "command" not in ln.lower()})[:8]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--also", action="append", default=[], metavar="NAME=DIR", help="another checkpoint to serve")
    ap.add_argument("--no-symmetric-copy", action="store_true")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=None, help="working directory (default: a new temporary one)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests-per-stream", type=int, default=4)
    ap.add_argument("--previous", type=Path, default=None,
                    help="an earlier call's JSON: its rounds are kept and this call runs the rounds after them (a "
                         "call is limited to minutes, and each round starts two servers)")
    a = ap.parse_args()

    import torch
    from side_by_side import Contender, medians, serve_rounds

    from packager.config import EngineConfig

    if a.work is None:
        import tempfile

        a.work = Path(tempfile.mkdtemp(prefix="gpu-int8-acts-"))
    a.work.mkdir(parents=True, exist_ok=True)
    models = {"asymmetric": a.model}
    if not a.no_symmetric_copy:
        models["symmetric"] = symmetric_copy(a.model, a.work / "symmetric")
    for spec in a.also:
        name, _, d = spec.partition("=")
        models[name] = Path(d)
    engine = EngineConfig(target="gpu", dtype="bfloat16", max_model_len=2048, max_num_seqs=64,
                          gpu_memory_utilization=0.8, startup_timeout_s=420.0)
    out: dict[str, Any] = {"benchmark": "gpu_int8_activations", "how": __doc__.strip().splitlines()[0],
                           "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                           "client": {"max_tokens": 64, "ignore_eos": True,
                                      "requests_per_stream": a.requests_per_stream},
                           "rounds": [], "answers": {}, "kernels": {}}
    start = 0
    if a.previous is not None:
        prev = json.loads(a.previous.read_text())
        out.update({k: prev[k] for k in ("rounds", "answers", "kernels")})
        start = max(x["round"] for x in prev["rounds"]) + 1
    earlier = list(out["rounds"])

    def while_served(name: str, srv: Any, _row: dict[str, Any]) -> None:
        if name not in out["answers"]:
            out["answers"][name] = answers(srv.base_url)

    def after(name: str, log: Path, _row: dict[str, Any]) -> None:
        out["kernels"].setdefault(name, kernel_lines(log))

    def save(rows: list[dict[str, Any]]) -> None:
        out["rounds"] = earlier + rows
        a.out.write_text(json.dumps(out, indent=2) + "\n")

    contenders = {n: Contender(d, engine) for n, d in models.items()}
    save(serve_rounds(contenders, a.work, range(start, start + a.rounds), STREAMS, a.requests_per_stream,
                      while_served=while_served, after=after, on_row=save))
    out["summary"] = medians(out["rounds"], models, STREAMS, reference="asymmetric")
    out["answers_equal"] = {n: [x == y for x, y in zip(out["answers"]["asymmetric"], out["answers"][n])]
                            for n in models if n != "asymmetric"}
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["summary"], indent=1), flush=True)


if __name__ == "__main__":
    main()
