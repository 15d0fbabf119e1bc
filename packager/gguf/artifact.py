"""A GGUF artifact directory, as `packager gguf export` writes it:

    model.gguf               the quantized model (llama.cpp / Ollama)
    Modelfile                `ollama create NAME -f Modelfile`
    config.json              the source checkpoint's config (architecture; lets every packager command that
                             takes a model directory accept the artifact)
    gguf-export.json         the export record (ExportRecord): source, lineage, quant type, versions, sha256
    packager-manifest.json   sha256 of every file above (packager.fsutil conventions)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from packager.errors import ConfigError

GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"
EXPORT_RECORD_NAME = "gguf-export.json"
ARTIFACT_FORMAT = "gguf"


def is_gguf_artifact(model_dir: str | Path) -> bool:
    """True for a directory holding model.gguf (an export of packager, or a hand-made one)."""
    return (Path(model_dir) / GGUF_FILE).is_file()


def gguf_path(model_dir: str | Path) -> Path:
    p = Path(model_dir) / GGUF_FILE
    if not p.is_file():
        raise ConfigError(
            f"{model_dir} has no {GGUF_FILE}, so llama.cpp cannot serve it. Export a variant first with "
            "`packager gguf export VARIANT_DIR --quant q8_0 --out DIR` and use DIR/q8_0."
        )
    return p


def read_export_record(model_dir: str | Path) -> dict[str, Any] | None:
    p = Path(model_dir) / EXPORT_RECORD_NAME
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p} is not valid JSON ({e.msg}, line {e.lineno}); export the variant again.") from None
