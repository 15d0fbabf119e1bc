"""An importance matrix (llama.cpp's imatrix) from calibration text, for GGUF types of 4 bits and fewer.

llama.cpp recommends an importance matrix for Q4_K_M and lower: `llama_model_quantize` then weighs each input
column's rounding error by how strongly that column is driven, instead of treating every column alike. The
importance of column j of a weight matrix is the mean of x_j^2 over the calibration tokens whose activations x
reach it: what llama.cpp's `llama-imatrix` tool collects, and what `llama_model_quantize` reads (its
`llama_model_imatrix_data`, one float per input column, by GGUF tensor name).

Why not `llama-imatrix` itself: it is a C++ tool that `make install` does not build (it builds llama-cpp-python's
library and llama-server only; one more target would add minutes to every install). The same statistic is computed
here in torch, on the float model the GGUF is converted from (the same weights, in float32), with a forward pre-hook
on every Linear of the decoder layers. HF names are mapped to the GGUF's tensor names with gguf-py's name map (the
one llama.cpp's converter uses), so any architecture the converter knows works. A Linear whose name does not map, or
whose width differs from the GGUF tensor's, is left out and counted; llama.cpp quantizes such a tensor as it would
without an imatrix. `lm_head` (output.weight) is left out, as `llama-imatrix` leaves it out by default (a matrix for
the bundled model's tied embedding as output changed nothing: the same KL to four digits).

The matrix is written as a safetensors file of float32 vectors keyed by GGUF tensor name (`write_imatrix`), which
the quantization subprocess (packager.gguf.export) hands to llama.cpp.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from packager.errors import ConfigError

# llama.cpp's advice: an importance matrix for these types (and required for the IQ types packager does not offer)
IMATRIX_QUANTS = frozenset({"q4_k_m", "q4_k_s", "q4_0", "q4_1", "q3_k_m", "q2_k"})


@dataclass
class Imatrix:
    values: dict[str, Any]  # GGUF tensor name -> float32 numpy vector (mean x^2 per input column)
    record: dict[str, Any] = field(default_factory=dict)


def texts_sha256(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\0")
    return h.hexdigest()


def gguf_tensor_widths(gguf_path: Path) -> tuple[str, int, dict[str, int]]:
    """(architecture, block count, {tensor name: width of its rows (ne0)}) of a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))

    def field_value(key: str) -> Any:
        f = reader.fields.get(key)
        if f is None:
            return None
        return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]].tolist()

    arch = field_value("general.architecture")
    if isinstance(arch, (bytes, bytearray)):
        arch = arch.decode()
    blocks = field_value(f"{arch}.block_count")
    widths = {t.name: int(t.shape[0]) for t in reader.tensors}
    return str(arch), int(blocks[0] if isinstance(blocks, list) else blocks or 0), widths


def name_map(arch: str, blocks: int) -> Callable[[str], str | None]:
    """HF Linear name (without `.weight`) -> GGUF tensor name, by gguf-py's map for `arch`."""
    import gguf

    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in by_name:
        raise ConfigError(f"gguf-py knows no architecture {arch!r}: no importance matrix can be mapped; set "
                          "imatrix: false.")
    tmap = gguf.get_tensor_name_map(by_name[arch], blocks)

    def to_gguf(hf_name: str) -> str | None:
        return tmap.get_name(f"{hf_name}.weight", try_suffixes=(".weight",))
    return to_gguf


def compute_imatrix(model_dir: Path, texts: list[str], gguf_path: Path, *, seq_len: int = 512,
                    show_progress: bool = True) -> Imatrix:
    """The importance matrix of `model_dir` (a float checkpoint) on `texts`, keyed by the tensor names of
    `gguf_path` (its float GGUF)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from packager.core.progress import progress_bar

    if not texts:
        raise ConfigError("An importance matrix needs calibration texts, and none were given.")
    t0 = time.monotonic()
    arch, blocks, widths = gguf_tensor_widths(gguf_path)
    to_gguf = name_map(arch, blocks)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    targets: dict[str, str] = {}
    skipped: list[str] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        g = to_gguf(name)
        if g is None or widths.get(g) != mod.in_features:
            skipped.append(name)
        else:
            targets[name] = g
    if not targets:
        raise ConfigError(f"None of {model_dir.name}'s Linear layers maps to a tensor of its GGUF ({arch}); "
                          "set imatrix: false.")
    sums = {n: torch.zeros(model.get_submodule(n).in_features, dtype=torch.float64) for n in targets}
    counts = dict.fromkeys(targets, 0)

    def hook(name: str):
        def fn(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[name] += (x * x).sum(dim=0).double()
            counts[name] += x.shape[0]
        return fn

    hooks = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in targets]
    # the decoder alone where the model has one (model.model): lm_head's logits are not needed, and cost a fifth
    decoder = getattr(model, "model", None) or model
    tokens = 0
    try:
        with torch.inference_mode(), progress_bar("imatrix: calibration", total=len(texts), enabled=show_progress,
                                           transient=True) as bar:
            for t in texts:
                ids = tok(t, return_tensors="pt", truncation=True, max_length=seq_len)["input_ids"]
                if ids.shape[1] > 1:
                    decoder(input_ids=ids, use_cache=False)
                    tokens += int(ids.shape[1])
                bar.advance()
    finally:
        for h in hooks:
            h.remove()
    if tokens == 0:
        raise ConfigError("The calibration texts tokenize to nothing usable for an importance matrix.")
    values = {targets[n]: (sums[n] / max(counts[n], 1)).float().numpy().astype(np.float32) for n in targets}
    record = {"tensors": len(values), "skipped": skipped, "tokens": tokens, "samples": len(texts),
              "seq_len": seq_len, "calibration_sha256": texts_sha256(texts), "architecture": arch,
              "compute_s": round(time.monotonic() - t0, 1)}
    return Imatrix(values, record)


def write_imatrix(im: Imatrix, path: Path) -> Path:
    from safetensors.numpy import save_file

    save_file(im.values, str(path))
    return path
