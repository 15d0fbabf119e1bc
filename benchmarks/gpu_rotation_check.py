"""Does vLLM on a GPU apply a W8A8 checkpoint's run-time Hadamard rotation (packager.compress.rotation)?

On a small random Llama (2 layers, hidden 256, MLP width 512, weights drawn wide enough that its next-token
distributions are far from uniform), three checkpoints are written with packager's own writer: W8A8 int8 without
rotation, W8A8 int8 with down_proj's input rotated in blocks of 128 (the transform in its config, its weights
rotated), and the same rotated checkpoint with the transform removed from its config (what an engine that ignored
the transform would compute). Each is served by packager's engine launcher (packager.engines.vllm.EngineServer,
target gpu) and asked for the prompt logprobs of a few texts; the float model's own log-probabilities (transformers,
float32) are the reference. Reported per checkpoint: the mean absolute difference of the prompt tokens'
log-probabilities to the reference, and the share of positions whose top-1 token agrees with it. The rotated
checkpoint must read like the unrotated one, and the copy without its transform far from both.

    python3 benchmarks/gpu_rotation_check.py --tokenizer DIR --out OUT.json
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
TEXTS = ["The quick brown fox jumps over the lazy dog, and then it runs into the forest to find its friends.",
         "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
         "Invoice 4411: three items at $12.50 each, total $37.50, paid on 2024-03-01 by card."]


# the small random decoders the check can build: Llama, and (benchmarks/rotation_archs.py) other families vLLM
# serves whose MLP ends in a down_proj Linear
ARCHS = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig", "phi3": "Phi3Config",
         "qwen3": "Qwen3Config"}


def build_float(out: Path, tokenizer: Path, arch: str = "llama") -> Path:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = getattr(transformers, ARCHS[arch])(
        vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2, pad_token_id=2, initializer_range=0.08, **({"head_dim": 64} if arch == "qwen3" else {}))
    model = AutoModelForCausalLM.from_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer / f).exists():
            shutil.copy(tokenizer / f, out / f)
    return out


def write_variants(src: Path, work: Path) -> dict[str, Path]:
    from packager.compress.checkpoint import linear_module_names
    from packager.compress.ct_format import write_w8a8
    from packager.compress.rotation import BlockHadamard, down_linears

    plain, rotated = work / "w8a8", work / "w8a8_rotated"
    for d in (plain, rotated):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    write_w8a8(src, plain, "int8", ["lm_head"], "bfloat16", symmetric_activations=False)
    rot = BlockHadamard(128, 0, tuple(down_linears(linear_module_names(src))))
    write_w8a8(src, rotated, "int8", ["lm_head"], "bfloat16", pre_transform=rot.weight_transform(),
               symmetric_activations=False, rotation=rot)
    ignored = work / "w8a8_rotated_transform_ignored"
    shutil.rmtree(ignored, ignore_errors=True)
    shutil.copytree(rotated, ignored)
    cfg = json.loads((ignored / "config.json").read_text())
    del cfg["quantization_config"]["transform_config"]
    (ignored / "config.json").write_text(json.dumps(cfg, indent=2))
    from safetensors.torch import load_file, save_file

    st = ignored / "model.safetensors"  # and without the transform's tensors, which nothing would then read
    save_file({k: v for k, v in load_file(str(st)).items() if not k.endswith("_input.weight")}, str(st),
              metadata={"format": "pt"})
    return {"w8a8": plain, "w8a8_rotated": rotated, "w8a8_rotated_transform_ignored": ignored}


def reference(src: Path, ids: list[list[int]]) -> list[Any]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    with torch.no_grad():
        return [torch.log_softmax(model(torch.tensor([x])).logits[0].float(), -1) for x in ids]


def served(model_dir: Path, engine: Any, log: Path) -> list[dict[str, Any]]:
    import httpx

    from packager.engines.vllm import EngineServer

    out = []
    with EngineServer(model_dir, engine, served_name="m", log_path=log) as srv:
        for t in TEXTS:
            r = httpx.post(f"{srv.base_url}/v1/completions", timeout=120,
                           json={"model": "m", "prompt": t, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 1})
            r.raise_for_status()
            out.append(r.json()["choices"][0])
    return out


def compare(choices: list[dict[str, Any]], ids: list[list[int]], ref: list[Any]) -> dict[str, Any]:
    diffs, agree, total = [], 0, 0
    for ch, x, lp in zip(choices, ids, ref):
        for i in range(1, len(x)):
            entry = {int(k): v for k, v in ch["prompt_logprobs"][i].items()}
            diffs.append(abs(entry[x[i]]["logprob"] - float(lp[i - 1, x[i]])))
            top = max(entry.items(), key=lambda kv: kv[1]["logprob"])[0]
            agree += int(top == int(lp[i - 1].argmax()))
            total += 1
    return {"positions": total, "mean_abs_logprob_diff": round(sum(diffs) / len(diffs), 4),
            "top1_agreement": round(agree / total, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()

    import tempfile

    import torch
    from transformers import AutoTokenizer

    from packager.config import EngineConfig

    work = a.work or Path(tempfile.mkdtemp(prefix="gpu-rotation-"))
    src = build_float(work / "float", a.tokenizer)
    variants = write_variants(src, work)
    tok = AutoTokenizer.from_pretrained(str(src))
    ids = [tok(t)["input_ids"] for t in TEXTS]
    ref = reference(src, ids)
    engine = EngineConfig(target="gpu", dtype="bfloat16", max_model_len=512, max_num_seqs=8,
                          gpu_memory_utilization=0.3, startup_timeout_s=420.0)
    out: dict[str, Any] = {"benchmark": "gpu_rotation_check", "how": __doc__.strip().splitlines()[0],
                           "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "checkpoints": {}}
    out["checkpoints"] = {n: r for n, r in (json.loads(a.out.read_text())["checkpoints"].items()
                                            if a.out.exists() else []) if "error" not in r}
    for name, d in variants.items():
        if name in out["checkpoints"]:
            continue
        log = work / f"{name}.log"
        try:
            out["checkpoints"][name] = compare(served(d, engine, log), ids, ref)
        except Exception as e:  # noqa: BLE001 - a checkpoint the engine refuses is a result too
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            out["checkpoints"][name] = {"error": f"{type(e).__name__}: {e}"[:400], "log_tail": tail}
        print(name, out["checkpoints"][name], flush=True)
        a.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
