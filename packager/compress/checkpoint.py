"""Reading and writing model directories (safetensors only) for the compression methods.

The weight-rewriting methods (w8a8_int8, fp8) stream a checkpoint shard by shard: each
`*.safetensors` file is read, its tensors transformed, and written under the same name in the output
directory, so peak memory stays near one shard. Everything else (config, tokenizer, generation config,
chat template) is copied. Heavy libraries are imported inside the functions.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any, Callable, Iterable

from packager.errors import ConfigError, IntegrityError
from packager.fsutil import MANIFEST_NAME, atomic_write_json

STAGE_RECORD_NAME = "stage.json"
WEIGHT_SUFFIX = ".safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
# Files a stage never copies forward: packager's own records and weights (rewritten by the stage).
_NOT_COPIED = {MANIFEST_NAME, STAGE_RECORD_NAME, INDEX_NAME}

# safetensors dtype names -> bytes per element
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def read_config(model_dir: Path) -> dict[str, Any]:
    p = Path(model_dir) / "config.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{model_dir} has no config.json; it is not a transformers model directory.") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p} is not valid JSON: {e}") from None


def write_config(model_dir: Path, config: dict[str, Any]) -> None:
    atomic_write_json(Path(model_dir) / "config.json", config)


def weight_files(model_dir: Path) -> list[Path]:
    """The model's safetensors files; refuses pickled weights and directories without safetensors."""
    model_dir = Path(model_dir)
    pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    files = sorted(p for p in model_dir.iterdir() if p.suffix == WEIGHT_SUFFIX)
    if pickles:
        raise IntegrityError(
            f"{model_dir} holds pickled weight files {pickles}; packager reads and writes safetensors only "
            "(pickles can run code when loaded). Convert them with transformers "
            "(`model.save_pretrained(dir, safe_serialization=True)`) and point at the converted directory."
        )
    if not files:
        raise ConfigError(f"{model_dir} holds no *.safetensors weight files.")
    return files


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (names, dtypes, shapes) without reading the tensors."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise IntegrityError(f"{path} is not a safetensors file (too short).")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 2**20:
            raise IntegrityError(f"{path} has an implausible safetensors header of {n} bytes.")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def tensor_shapes(model_dir: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (safetensors dtype, shape)} over every weight file of a model directory."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for f in weight_files(model_dir):
        for name, info in safetensors_header(f).items():
            out[name] = (info["dtype"], tuple(info["shape"]))
    return out


def copy_non_weight_files(src: Path, dst: Path) -> list[str]:
    """Copy config, tokenizer and other small files (not weights, not packager records). Returns names."""
    src, dst = Path(src), Path(dst)
    copied = []
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.name in _NOT_COPIED or p.suffix == WEIGHT_SUFFIX or p.suffix in PICKLE_SUFFIXES:
            continue
        shutil.copy2(p, dst / p.name)
        copied.append(p.name)
    return copied


def ensure_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer files present in src but missing in dst (methods that forget them). Returns names."""
    added = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file() and not (Path(dst) / name).exists():
            shutil.copy2(Path(src) / name, Path(dst) / name)
            added.append(name)
    return added


def check_model_dir(model_dir: Path) -> None:
    """A stage's output must be a complete safetensors model directory."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise IntegrityError(f"The stage wrote no config.json into {model_dir}; its output is not a model directory.")
    if (model_dir / "model.gguf").is_file():  # a GGUF artifact (stage `gguf`): llama.cpp reads model.gguf
        return
    weight_files(model_dir)
    if not any((model_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise IntegrityError(f"The stage's output {model_dir} has no tokenizer files.")


def linear_module_names(model_dir: Path) -> list[str]:
    """Names of every torch.nn.Linear in the model, built on the meta device from config.json (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(model_dir))
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def parameter_count(model_dir: Path) -> int:
    """Logical parameter count (a 4-bit weight counts as one parameter; tied weights once).

    Built from config.json on the meta device; falls back to the safetensors headers with packed GPTQ
    tensors unpacked and quantization scales left out.
    """
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(str(model_dir))
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        return int(sum(p.numel() for p in model.parameters()))
    except Exception:
        return parameter_count_from_headers(model_dir)


def parameter_count_or_none(model_dir: str | Path | None) -> int | None:
    """parameter_count_from_headers, or None when there is no directory or its headers cannot be read (for records
    and estimates: an unreadable checkpoint is reported where it is loaded)."""
    if model_dir is None:
        return None
    try:
        return parameter_count_from_headers(Path(model_dir))
    except Exception:  # noqa: BLE001
        return None


def parameter_count_from_headers(model_dir: Path) -> int:
    qcfg = read_config(model_dir).get("quantization_config") or {}
    bits = int(qcfg.get("bits", 4)) if qcfg.get("quant_method") in ("gptq", "awq") else None
    total = 0
    for name, (_dtype, shape) in tensor_shapes(model_dir).items():
        leaf = name.rsplit(".", 1)[-1]
        n = 1
        for d in shape:
            n *= d
        if leaf in ("qweight",) and bits:
            total += n * (32 // bits)
        elif leaf in ("qzeros", "scales", "g_idx", "weight_scale", "weight_zero_point", "input_scale",
                      "weight_g_idx", "weight_shape"):
            continue
        else:
            total += n
    return total


def stream_shards(src: Path, dst: Path, transform: Callable[[str, Any], dict[str, Any]],
                  progress: Callable[[Iterable], Iterable] | None = None) -> dict[str, str]:
    """Rewrite every safetensors shard of src into dst through `transform(name, tensor) -> {name: tensor}`.

    Shard file names are kept; when the model has several shards a fresh index is written.
    Returns {tensor name: shard file name} of the output.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = weight_files(src)
    weight_map: dict[str, str] = {}
    total_size = 0
    it = progress(files) if progress else files
    for f in it:
        out: dict[str, Any] = {}
        with safe_open(str(f), framework="pt") as sf:
            meta = sf.metadata() or {}
            for name in sf.keys():
                for new_name, t in transform(name, sf.get_tensor(name)).items():
                    if new_name in out or new_name in weight_map:
                        raise IntegrityError(f"Tensor {new_name!r} would be written twice while rewriting {f.name}.")
                    out[new_name] = t.contiguous()
        save_file(out, str(Path(dst) / f.name), metadata={**meta, "format": "pt"})
        for n, t in out.items():
            weight_map[n] = f.name
            total_size += t.numel() * t.element_size()
    if len(files) > 1:
        atomic_write_json(Path(dst) / INDEX_NAME, {"metadata": {"total_size": total_size}, "weight_map": weight_map})
    return weight_map


def dtype_from_name(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]
