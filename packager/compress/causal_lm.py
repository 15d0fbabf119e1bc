"""Helpers shared by the stages that load a causal LM with transformers and write a new one (prune, distill):
calibration text cut into token chunks, loading, the decoder-layer stack, parameter counts, copying the
non-weight files of a model directory, and a progress bar. Heavy libraries are imported inside the functions.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from packager.compress.checkpoint import STAGE_RECORD_NAME
from packager.errors import ConfigError

# Files of a model directory that are rewritten by save_pretrained (never copied from the input).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".gguf")
_NOT_COPIED = {"config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json", STAGE_RECORD_NAME}


def calibration_chunks(tokenizer, texts: list[str], seq_len: int, max_chunks: int | None = None):
    """Tokenise texts (each followed by EOS) into one stream and cut it into [n, seq_len] chunks, no padding.

    Returns a LongTensor. Raises ConfigError when the texts hold fewer than seq_len tokens."""
    import torch

    if not texts:
        raise ConfigError("No calibration texts were given; this stage measures importance on text. Give the "
                          "recipe calibration data (the bundled corpus or your own texts).")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        if not t or not t.strip():
            continue
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if max_chunks is not None and len(ids) >= max_chunks * seq_len:
            break
    n = len(ids) // seq_len
    if max_chunks is not None:
        n = min(n, max_chunks)
    if n == 0:
        raise ConfigError(f"The calibration texts hold {len(ids)} tokens, fewer than one chunk of seq_len={seq_len}; "
                          "give more text or a smaller seq_len.")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def copy_aux_files(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer, chat template, generation config and other non-weight files of a model directory."""
    copied = []
    for p in sorted(Path(src).iterdir()):
        if (not p.is_file() or p.name in _NOT_COPIED or p.name.endswith(_WEIGHT_SUFFIXES) or p.name.startswith(".")
                or p.name.startswith("packager-")):  # packager's own records (manifest, plans) stay behind
            continue
        shutil.copy2(p, Path(dst) / p.name)
        copied.append(p.name)
    return copied


def read_model_config(model_dir: Path) -> dict[str, Any]:
    p = Path(model_dir) / "config.json"
    if not p.is_file():
        raise ConfigError(f"{model_dir} has no config.json; point the stage at a transformers checkpoint directory.")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p} is not valid JSON ({e}).") from None


def weights_size_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def load_causal_lm(model_dir: Path, device: str = "cpu", dtype: Any = "auto"):
    import torch
    from transformers import AutoModelForCausalLM

    from packager.fsutil import refuse_pickled_weights

    refuse_pickled_weights(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, use_safetensors=True)
    # ignore below: transformers wraps .to with functools.wraps, and typeshed's _Wrapped does not bind self
    model.to(torch.device(device))  # type: ignore[arg-type]
    model.eval()
    return model


def decoder_layers(model):
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    layers = getattr(base, "layers", None)
    if base is None or layers is None:
        raise ConfigError(f"{type(model).__name__} has no `model.layers` stack of decoder layers; structured "
                          "pruning supports Llama-style decoder-only models (Llama, Mistral, Qwen2/3, SmolLM).")
    return base, layers


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors are counted once


def _batches(chunks, batch_size: int):
    for i in range(0, chunks.shape[0], batch_size):
        yield chunks[i: i + batch_size]


def _progress(show: bool, total: int, what: str):
    """A progress bar over calibration batches (or a no-op) with .advance(), gone when done."""
    from packager.core.progress import progress_bar

    return progress_bar(what, total=total, enabled=show, eta=False, transient=True)
