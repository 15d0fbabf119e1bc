"""The check a bento runs before it starts its backend: are the model files exactly the recorded ones?

Three records must agree:
1. the bento's argument `model_digest` (fixed when the bento was built),
2. the `files` map {relative path: sha256} in the BentoML model's metadata (recorded at import; its
   tree digest must equal 1, so editing the metadata to match altered weights is caught too),
3. the files on disk under the model's `model/` folder (every recorded file present with its sha256,
   and no file that was not recorded).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from packager.errors import IntegrityError
from packager.fsutil import MANIFEST_NAME, tree_digest, verify_files

# The variant's files live in this folder of the BentoML model (beside BentoML's own model.yaml).
MODEL_SUBDIR = "model"


def unexpected_files(root: Path, expected: Mapping[str, str]) -> list[str]:
    """Files under root that are not in `expected` (the manifest file itself is allowed)."""
    root = Path(root)
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            rel = p.relative_to(root).as_posix()
            if rel not in expected and rel != MANIFEST_NAME:
                out.append(rel)
    return out


def verify_model_files(model_dir: Path, metadata: Mapping[str, Any], expected_digest: str, what: str) -> None:
    """Raise IntegrityError (saying what differs and what to do) unless model_dir holds exactly the
    files recorded in `metadata["files"]`, whose tree digest must be `expected_digest`."""
    files = metadata.get("files")
    if not isinstance(files, dict) or not files:
        raise IntegrityError(
            f"{what} carries no sha256 list of its files (metadata 'files' is missing), so it cannot be "
            "verified. Import the variant again with `packager build VARIANT_DIR`."
        )
    recorded = tree_digest(files)
    if recorded != expected_digest:
        raise IntegrityError(
            f"The sha256 list recorded with {what} has digest {recorded}, but this bento was built for "
            f"digest {expected_digest}: the model store entry was modified or replaced after the build. "
            "Rebuild the bento from the registered variant with `packager build VARIANT_DIR`."
        )
    verify_files(Path(model_dir), files)
    extra = unexpected_files(Path(model_dir), files)
    if extra:
        raise IntegrityError(
            f"Model files under {model_dir} include {len(extra)} file(s) that were not recorded at import: "
            + ", ".join(extra[:10])
            + ". Something was added after the model was imported; rebuild it with `packager build VARIANT_DIR`."
        )
