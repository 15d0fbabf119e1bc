"""Does vLLM CPU serve the rotated W8A8 checkpoint of model families beside Llama? (packager.compress.rotation)

The same check as benchmarks/gpu_rotation_check.py, on this machine's vLLM CPU, for each of several small random
decoders (Llama, Qwen2 with its q/k/v biases, Mistral, Phi-3 with its fused qkv_proj and gate_up_proj, Qwen3 with
its q/k norms): W8A8 int8 without rotation, with down_proj's input rotated in blocks of 128, and the rotated one
with its transform removed from the config. Each is served by packager's engine launcher (target cpu, which starts
a checkpoint with a transform through packager.engines.vllm_serve) and read for the prompt logprobs of a few texts
against the float model (transformers, float32). Per family and checkpoint: the mean absolute difference of the
prompt tokens' log-probabilities, the top-1 agreement, or the engine's error.

    .venv/bin/python benchmarks/rotation_archs.py --out benchmarks/results/rotation_archs.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--archs", nargs="*", default=["llama", "qwen2", "mistral", "phi3", "qwen3"])
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()

    from gpu_rotation_check import TEXTS, build_float, compare, reference, served, write_variants
    from transformers import AutoTokenizer

    from packager.config import EngineConfig
    from packager.core.sources import ensure_default_model
    from packager.provenance import package_versions, platform_info

    work = a.work or Path(tempfile.mkdtemp(prefix="rotation-archs-"))
    tokenizer = Path(ensure_default_model().path)
    engine = EngineConfig(target="cpu", dtype="bfloat16", max_model_len=512, max_num_seqs=4, startup_timeout_s=600.0)
    out: dict[str, Any] = {"benchmark": "rotation_archs", "how": (__doc__ or "").strip().splitlines()[0],
                           "versions": package_versions(), "platform": platform_info(), "archs": {}}
    for arch in a.archs:
        src = build_float(work / arch / "float", tokenizer, arch)
        variants = write_variants(src, work / arch)
        tok = AutoTokenizer.from_pretrained(str(src))
        ids = [tok(t)["input_ids"] for t in TEXTS]
        ref = reference(src, ids)
        res: dict[str, Any] = {}
        for name, d in variants.items():
            log = work / arch / f"{name}.log"
            try:
                res[name] = compare(served(d, engine, log), ids, ref)
            except Exception as e:  # noqa: BLE001 - a checkpoint the engine refuses is a result too
                tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
                res[name] = {"error": f"{type(e).__name__}: {e}"[:400], "log_tail": tail}
            print(arch, name, {k: v for k, v in res[name].items() if k != "log_tail"}, flush=True)
        out["archs"][arch] = res
        a.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
