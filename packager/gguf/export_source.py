"""The source of a GGUF export (see export.py): the checks that it is a float checkpoint (a quantized stage is
refused naming the float stage it was made from), its identity (files, tree digest, manifest), its lineage read
from the stage records back to the source model, its name and the type of the intermediate GGUF."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from packager.errors import ConfigError
from packager.fsutil import MANIFEST_NAME, hash_tree, tree_digest, verify_manifest_if_present

STAGE_RECORD_NAME = "stage.json"  # packager.compress.checkpoint.STAGE_RECORD_NAME
RECIPE_RESULT_NAME = "recipe-result.json"  # packager.compress.recipe.RESULT_NAME
# Float weights up to this size are converted to an f32 intermediate (no rounding before quantization).
F32_INTERMEDIATE_MAX_BYTES = 2 * 2**30


def _read_json(p: Path) -> dict[str, Any] | None:
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def lineage_of(model_dir: Path, max_depth: int = 32) -> tuple[list[dict[str, Any]], list[Path]]:
    """(stage records oldest first, their directories) of a stage directory, following each record's input_dir.

    A plain checkpoint (no stage.json) has no lineage."""
    records: list[dict[str, Any]] = []
    dirs: list[Path] = []
    d: Path | None = Path(model_dir)
    seen: set[str] = set()
    while d is not None and len(records) < max_depth and str(d) not in seen:
        seen.add(str(d))
        rec = _read_json(d / STAGE_RECORD_NAME)
        if rec is None:
            break
        records.append({k: rec.get(k) for k in ("label", "method", "arguments", "digest", "input_digest",
                                                 "input_dir", "wall_time_s", "size_bytes", "parameter_count",
                                                 "evaluation")})
        dirs.append(d)
        d = Path(rec["input_dir"]) if rec.get("input_dir") else None
    return records[::-1], dirs[::-1]


def _input_dir_of(model_dir: Path) -> Path | None:
    rec = _read_json(Path(model_dir) / STAGE_RECORD_NAME)
    return Path(rec["input_dir"]) if rec and rec.get("input_dir") else None


def _quantization_config(model_dir: Path) -> dict[str, Any] | None:
    cfg = _read_json(Path(model_dir) / "config.json") or {}
    qc = cfg.get("quantization_config") or cfg.get("compression_config")
    return qc if isinstance(qc, dict) else ({"quant_method": str(qc)} if qc else None)


def float_ancestor(model_dir: Path) -> Path | None:
    """The nearest stage input (following stage records) that is a float checkpoint, if known."""
    d = _input_dir_of(model_dir)
    seen: set[str] = set()
    while d is not None and str(d) not in seen:
        seen.add(str(d))
        if (d / "config.json").is_file() and _quantization_config(d) is None:
            return d
        d = _input_dir_of(d)
    return None


def check_float_source(model_dir: Path) -> None:
    """Refuse a quantized checkpoint (GPTQ, compressed-tensors W8A8/FP8) before any work, naming what to export."""
    from packager.compress.checkpoint import weight_files

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(
            f"{model_dir} is not a model variant directory: it has no config.json. Point at a directory written by "
            "`packager compress` or save_pretrained, or `default` for the bundled model."
        )
    qc = _quantization_config(model_dir)
    if qc is not None:
        method = qc.get("quant_method") or qc.get("format") or "unknown"
        anc = float_ancestor(model_dir)
        what = (f"Export its float input instead: `packager gguf export {anc} --quant ...` (llama.cpp quantizes it "
                "itself)." if anc is not None else
                "Export the float model it was quantized from instead (llama.cpp quantizes it itself).")
        raise ConfigError(
            f"{model_dir} is a quantized checkpoint (quantization_config.quant_method {method!r}); llama.cpp's "
            f"converter reads float weights only. {what}"
        )
    weight_files(model_dir)  # safetensors present, no pickles


def _source_identity(model_dir: Path) -> tuple[dict[str, str], str, dict[str, Any] | None]:
    """(files, tree digest of the model files, manifest) of the source; a manifest that no longer matches
    the files is refused (the source was altered after it was recorded)."""
    manifest = verify_manifest_if_present(model_dir)
    files = hash_tree(model_dir, exclude=(MANIFEST_NAME, STAGE_RECORD_NAME))
    return files, tree_digest(files), manifest


def _source_name(model_dir: Path, manifest: dict[str, Any] | None, lineage: list[dict[str, Any]]) -> str:
    if manifest and manifest.get("name"):
        return str(manifest["name"])
    if lineage:
        res = _read_json(model_dir.parent / RECIPE_RESULT_NAME)
        src = (res or {}).get("source") or {}
        if src.get("name"):
            return f"{src['name']}-{lineage[-1].get('label') or model_dir.name}"
    return model_dir.name


def _auto_outtype(model_dir: Path) -> str:
    cfg = _read_json(model_dir / "config.json") or {}
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    if dtype == "bfloat16":
        return "bf16"
    if dtype == "float16":
        return "f16"
    size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    return "f32" if size <= F32_INTERMEDIATE_MAX_BYTES else "f16"
