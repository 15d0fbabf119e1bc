"""The BentoML store packager uses, and importing a model variant into it as a BentoML model.

The store lives under packager's cache (`$PACKAGER_HOME/bentoml`) unless BENTOML_HOME is set, so bentos and
models built by packager do not mix with a user's other BentoML work by accident. Every BentoML process
packager starts (build, serve) gets the same home through `bentoml_env()`.

A variant becomes a BentoML model whose tag version is derived from the digest of its files (the same
files always give the same tag; importing them again reuses the stored copy after verifying it), whose
`model/` folder holds the files, and whose labels and metadata carry the variant's identity: source model,
recipe, stage records, and the sha256 of every file.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from packager.errors import ConfigError, IntegrityError, ModelNotFoundError
from packager.fsutil import MANIFEST_NAME, hash_tree, refuse_pickled_weights, tree_digest, verify_manifest_if_present
from packager.serve.args import bento_name
from packager.serve.integrity import MODEL_SUBDIR, verify_model_files

# Manifest keys that are not copied verbatim into the model metadata (they get their own keys).
_MANIFEST_OWN_KEYS = ("files", "digest")


def bentoml_home(environ: Mapping[str, str] | None = None) -> Path:
    """BENTOML_HOME if set, else $PACKAGER_HOME/bentoml (in `environ`, default os.environ)."""
    from packager.core.sources import packager_home

    env = os.environ if environ is None else environ
    if env.get("BENTOML_HOME"):
        return Path(env["BENTOML_HOME"]).expanduser()
    if env.get("PACKAGER_HOME"):
        return Path(env["PACKAGER_HOME"]).expanduser() / "bentoml"
    return packager_home() / "bentoml"


def bentoml_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a BentoML subprocess: packager's store, no usage tracking, offline Hugging Face."""
    env = dict(os.environ if base is None else base)
    env["BENTOML_HOME"] = str(bentoml_home(env))
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def model_store(home: Path | None = None):
    """BentoML's model store under `home` (default: bentoml_home()), independent of BentoML's globals."""
    from bentoml._internal.models import ModelStore

    root = (home or bentoml_home()) / "models"
    root.mkdir(parents=True, exist_ok=True)
    return ModelStore(str(root))


@dataclass(frozen=True)
class VariantRecord:
    """What is known about a variant directory: its files' hashes and its manifest."""

    path: Path
    name: str
    files: dict[str, str]
    digest: str
    manifest: dict[str, Any] | None  # None: the directory had no packager-manifest.json

    def labels(self, registry_version: str, target: str) -> dict[str, str]:
        m = self.manifest or {}
        recipe = m.get("recipe")
        recipe_name = recipe.get("name", "") if isinstance(recipe, dict) else (recipe or "")
        stages = m.get("stages") or []
        kinds = [s.get("kind", "?") for s in stages if isinstance(s, dict)]
        labels = {
            "packager.model": self.name,
            "packager.source": str(m.get("source") or m.get("source_model") or self.path.name),
            "packager.recipe": str(recipe_name) or ("none" if not kinds else "+".join(kinds)),
            "packager.stages": "+".join(kinds) or "none",
            "packager.digest": self.digest,
            "packager.registry_version": registry_version,
            "packager.target": target,
            "packager.manifest": "present" if self.manifest is not None else "absent",
        }
        if m.get("format"):  # e.g. a GGUF artifact of `packager gguf export`: format gguf, quant q8_0
            labels["packager.format"] = str(m["format"])
            if m.get("quant"):
                labels["packager.quant"] = str(m["quant"])
        return labels

    def metadata(self) -> dict[str, Any]:
        """Model metadata (BentoML accepts no None: absent values are left out)."""
        m = dict(self.manifest or {})
        return _drop_none({
            "name": self.name,
            "source_model": m.get("source") or m.get("source_model"),
            "recipe": m.get("recipe"),
            "stages": m.get("stages") or [],
            "files": dict(self.files),
            "digest": self.digest,
            "manifest": {k: v for k, v in m.items() if k not in _MANIFEST_OWN_KEYS},
            "manifest_present": self.manifest is not None,
        })


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_drop_none(v) for v in obj if v is not None]
    return obj


def read_variant(variant_dir: Path, log: Callable[[str], None] = print) -> VariantRecord:
    """Hash-check a variant directory against its manifest (or hash it when it has none)."""
    variant_dir = Path(variant_dir).expanduser().resolve()
    if not variant_dir.is_dir() or not (variant_dir / "config.json").is_file():
        raise ModelNotFoundError(
            f"{variant_dir} is not a model variant directory: it has no config.json. Point at a directory "
            "written by `packager compress` or save_pretrained (or `default` for the bundled model)."
        )
    refuse_pickled_weights(variant_dir)  # a bento loads safetensors only (vLLM runs --load-format safetensors)
    manifest = verify_manifest_if_present(variant_dir)
    if manifest is not None:
        files = manifest["files"]
        extra = [p for p in hash_tree(variant_dir) if p not in files]
        if extra:
            raise IntegrityError(
                f"{variant_dir} holds files its manifest does not list: {', '.join(extra[:10])}. Remove them, "
                "or write the manifest again if they belong to the variant."
            )
    else:
        log(f"note: {variant_dir} has no {MANIFEST_NAME}; hashing its files now (its provenance is unknown)")
        files = hash_tree(variant_dir)
    name = str((manifest or {}).get("name") or variant_dir.name)
    return VariantRecord(variant_dir, name, dict(files), tree_digest(files), manifest)


def model_tag_for(record: VariantRecord, model_name: str | None = None) -> str:
    return f"{bento_name(model_name or record.name)}:{record.digest[:20]}"


def import_model(record: VariantRecord, *, registry_version: str, target: str, model_name: str | None = None,
                 home: Path | None = None, log: Callable[[str], None] = print) -> str:
    """Import a verified variant into the BentoML model store; return its tag.

    The same files give the same tag. A stored copy that no longer verifies (altered after import) is
    replaced by a fresh import; one that verifies is reused.
    """
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    os.environ.setdefault("BENTOML_HOME", str(home or bentoml_home()))
    import bentoml
    from bentoml.exceptions import NotFound

    store = model_store(home)
    tag = model_tag_for(record, model_name)
    try:
        existing = store.get(tag)
    except NotFound:
        existing = None
    if existing is not None:
        try:
            verify_model_files(Path(existing.path) / MODEL_SUBDIR, existing.info.metadata, record.digest,
                               f"BentoML model {tag}")
            log(f"model {tag} is already in the store and verifies; reusing it")
            return tag
        except IntegrityError as e:
            log(f"model {tag} in the store does not verify ({e}); importing it again")
            store.delete(tag)
    total = sum((record.path / rel).stat().st_size for rel in record.files)
    log(f"importing {record.path} ({total / 1e6:.1f} MB, {len(record.files)} files) as BentoML model {tag}")
    # BentoML stages a model in a temporary folder and copies it into the store on success; the staged
    # files are hard links where possible (no extra copy), and the staging folder is removed afterwards.
    staging: Path | None = None
    try:
        with bentoml.models.create(tag, labels=record.labels(registry_version, target),
                                   metadata=record.metadata(), _model_store=store) as m:
            staging = Path(m.path)
            dest = staging / MODEL_SUBDIR
            for rel in [*sorted(record.files), *([MANIFEST_NAME] if record.manifest is not None else [])]:
                _link_or_copy(record.path / rel, dest / rel)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    stored = store.get(tag)
    try:  # the copy in the store is what will be served: check it before handing out its tag
        verify_model_files(Path(stored.path) / MODEL_SUBDIR, stored.info.metadata, record.digest,
                           f"BentoML model {tag}")
    except IntegrityError:
        store.delete(tag)
        raise
    return tag


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stored_model_dir(tag: str, home: Path | None = None) -> Path:
    """The folder holding the variant's files of a stored BentoML model."""
    from bentoml.exceptions import NotFound

    try:
        m = model_store(home).get(tag)
    except NotFound:
        raise ConfigError(f"BentoML model {tag} is not in the store at {home or bentoml_home()}.") from None
    return Path(m.path) / MODEL_SUBDIR
