"""GGUF export: a float safetensors variant -> one llama.cpp / Ollama artifact directory per quantization type.

    export_gguf("runs/x/02-distill", "runs/x/gguf", quants=("q8_0", "q4_k_m"))

1. The source is checked: a float checkpoint (safetensors, no `quantization_config`; a GPTQ or W8A8 stage is
   refused before any work, naming the float stage it was made from), its files verified against its
   manifest when it has one, and its lineage read from the stage records (stage.json) back to the source.
2. llama.cpp's own converter (`convert_hf_to_gguf.py` from the llama-cpp-python sdist, installed by
   `make install` under <venv>/share/packager/llama.cpp) writes a float GGUF (the intermediate) into a work
   folder beside the output.
3. `llama_cpp.llama_model_quantize` quantizes the intermediate to each type (types of 4 bits and fewer weighted
   by an importance matrix when calibration texts are given: packager.gguf.imatrix), in a subprocess of its own
   (llama.cpp's per-tensor log goes to a log file and drives the progress bar; a crash in C cannot take the
   caller down).
4. Each artifact is assembled in a temporary directory and renamed into place when complete: model.gguf,
   Modelfile, config.json, gguf-export.json (ExportRecord) and packager-manifest.json (sha256 of every file).
   An artifact whose record matches the same source digest, type and tools is verified and reused.

The source checks and lineage (step 1) live in export_source.py; their names stay importable from here.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

from packager.errors import ConfigError, IntegrityError
from packager.fsutil import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    read_manifest,
    sha256_file,
    verify_manifest,
    write_manifest,
)
from packager.gguf.artifact import ARTIFACT_FORMAT, EXPORT_RECORD_NAME, GGUF_FILE, MODELFILE
from packager.gguf.export_source import (  # noqa: F401  (re-exported: other modules import them from here)
    F32_INTERMEDIATE_MAX_BYTES,
    RECIPE_RESULT_NAME,
    STAGE_RECORD_NAME,
    _auto_outtype,
    _input_dir_of,
    _quantization_config,
    _read_json,
    _source_identity,
    _source_name,
    check_float_source,
    float_ancestor,
    lineage_of,
)
from packager.gguf.llamacpp_steps import CONVERT_SCRIPT, convert_to_gguf, quantize_gguf
from packager.gguf.quant import QUANT_TYPES, QuantType, k_quant_fallback, parse_quants, tensor_type_counts

EXPORT_SCHEMA_VERSION = 1
ENV_LLAMA_CPP_DIR = "PACKAGER_LLAMA_CPP_DIR"
MAKE_TARGET = "make install"
Outtype = Literal["auto", "f32", "f16", "bf16"]


class ExportRecord(BaseModel):
    """gguf-export.json: what one export did, with everything needed to reproduce and verify it."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = EXPORT_SCHEMA_VERSION
    name: str  # the artifact's model name, e.g. SmolLM2-135M-Instruct-q8_0
    format: str = ARTIFACT_FORMAT
    quant: str
    ftype: int  # llama_ftype value used
    source_dir: str
    source_name: str
    source_digest: str  # tree digest of the source's model files (manifest and stage record excluded)
    source_manifest_digest: str | None = None  # the digest the source's own manifest records, if any
    source_origin: str | None = None  # the source's manifest `source` (e.g. the bundled package)
    lineage: list[dict[str, Any]] = Field(default_factory=list)  # stage records, oldest first
    recipe: dict[str, Any] | None = None
    intermediate_outtype: str
    intermediate_sha256: str
    intermediate_size_bytes: int
    converter: dict[str, Any]  # script path name, its sha256
    chat_template: dict[str, Any]
    gguf_file: str = GGUF_FILE
    size_bytes: int
    sha256: str
    convert_wall_time_s: float  # shared by every type of one export run
    quantize_wall_time_s: float
    wall_time_s: float
    threads: int
    versions: dict[str, str]
    created_at: str
    imatrix: dict[str, Any] | None = None  # the importance matrix it was quantized with (packager.gguf.imatrix)
    tensor_types: dict[str, int] | None = None  # matrices per stored type (packager.gguf.quant.tensor_type_counts)


class GgufArtifact(BaseModel):
    """One exported artifact directory (what export_gguf returns)."""

    model_config = ConfigDict(extra="forbid")

    quant: str
    path: str
    gguf_path: str
    size_bytes: int
    sha256: str
    digest: str  # tree digest of the artifact's files (its manifest's `digest`)
    reused: bool
    record: ExportRecord


# ------------------------------------------------------------------------------------------------ tools
def llama_cpp_tools_dir(environ: dict[str, str] | None = None) -> Path:
    """Where llama.cpp's converter lives: $PACKAGER_LLAMA_CPP_DIR, else <sys.prefix>/share/packager/llama.cpp."""
    env = os.environ if environ is None else environ
    root = Path(env[ENV_LLAMA_CPP_DIR]).expanduser() if env.get(ENV_LLAMA_CPP_DIR) else \
        Path(sys.prefix) / "share" / "packager" / "llama.cpp"
    missing = [n for n in (CONVERT_SCRIPT, "gguf-py", "conversion") if not (root / n).exists()]
    if missing:
        where = f"${ENV_LLAMA_CPP_DIR}={root}" if env.get(ENV_LLAMA_CPP_DIR) else str(root)
        raise ConfigError(
            f"llama.cpp's GGUF converter is not installed: {where} lacks {', '.join(missing)}. Run `{MAKE_TARGET}` "
            "(it extracts convert_hf_to_gguf.py, conversion/ and gguf-py/ from the llama-cpp-python sdist), or set "
            f"{ENV_LLAMA_CPP_DIR} to a llama.cpp checkout of the same version as llama-cpp-python."
        )
    return root


def _llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception:
        raise ConfigError(
            f"llama-cpp-python is not installed, so GGUF files cannot be quantized. Run `{MAKE_TARGET}` (it builds "
            "llama-cpp-python==0.3.36 from source for this CPU)."
        ) from None


def _converter_identity(tools: Path) -> dict[str, Any]:
    return {"script": CONVERT_SCRIPT, "script_sha256": sha256_file(tools / CONVERT_SCRIPT)}


def _versions(llama_cpp_version: str) -> dict[str, str]:
    from packager.provenance import package_versions

    out = dict(package_versions())
    out["llama_cpp_python"] = llama_cpp_version
    return out


def _reusable(art_dir: Path, source_digest: str, quant: str, converter: dict[str, Any], outtype: str,
              llama_cpp_version: str, imatrix_sha256: str | None = None) -> ExportRecord | None:
    raw = _read_json(art_dir / EXPORT_RECORD_NAME)
    if raw is None:
        return None
    try:
        rec = ExportRecord.model_validate(raw)
    except Exception:
        return None
    if (rec.source_digest, rec.quant, rec.converter, rec.intermediate_outtype) != (source_digest, quant, converter,
                                                                                   outtype):
        return None
    if rec.versions.get("llama_cpp_python") != llama_cpp_version:
        return None
    if (rec.imatrix or {}).get("calibration_sha256") != imatrix_sha256:  # with or without, on the same texts
        return None
    try:
        verify_manifest(art_dir)
    except IntegrityError:
        return None
    return rec


def _artifact(art_dir: Path, rec: ExportRecord, reused: bool) -> GgufArtifact:
    m = read_manifest(art_dir) or {}
    return GgufArtifact(quant=rec.quant, path=str(art_dir), gguf_path=str(art_dir / GGUF_FILE),
                        size_bytes=rec.size_bytes, sha256=rec.sha256, digest=str(m.get("digest", "")),
                        reused=reused, record=rec)


def _now() -> str:
    from packager.provenance import now_iso

    return now_iso()


# ------------------------------------------------------------------------------------------------ export
@dataclass
class _ExportJob:
    """One export run: the source and what every artifact of it records, the tools, and how to report."""

    src: Path
    source_digest: str
    manifest: dict[str, Any] | None
    lineage: list[dict[str, Any]]
    recipe: dict[str, Any] | None
    base_name: str
    inter_type: str  # the intermediate GGUF's type: f32, f16 or bf16
    converter: dict[str, Any]
    chat: Any  # packager.gguf.modelfile's detected chat template
    gen_params: Any
    tools: Path
    llama_cpp_version: str
    threads: int
    progress: bool
    log: Callable[[str], None]
    imatrix_texts: list[str] | None = None  # calibration texts for the types of imatrix_types (None: no imatrix)
    imatrix_seq_len: int = 512
    imatrix_types: frozenset[str] = frozenset()

    def imatrix_sha256(self, q: QuantType) -> str | None:
        from packager.gguf.imatrix import texts_sha256

        return texts_sha256(self.imatrix_texts) if self.imatrix_texts and q.name in self.imatrix_types else None


@dataclass
class _Intermediate:
    """The float GGUF that llama.cpp's converter wrote, shared by every quantization type of one run."""

    path: Path
    sha256: str
    size_bytes: int
    convert_s: float
    imatrix: tuple[Path, dict[str, Any]] | None = None  # the file and its record, when a type needs one


def _reused_artifacts(job: _ExportJob, out_root: Path, qtypes: list[QuantType], force: bool
                      ) -> tuple[list[GgufArtifact], list[QuantType]]:
    """(verified artifacts reused as they are, the types still to export)."""
    results: list[GgufArtifact] = []
    todo: list[QuantType] = []
    for q in qtypes:
        art_dir = out_root / q.name
        rec = None if force else _reusable(art_dir, job.source_digest, q.name, job.converter, job.inter_type,
                                           job.llama_cpp_version, job.imatrix_sha256(q))
        if rec is not None:
            job.log(f"{q.name}: reusing {art_dir} (same source digest {job.source_digest[:12]}, type and tools; "
                    "verified)")
            results.append(_artifact(art_dir, rec, reused=True))
        else:
            todo.append(q)
    return results, todo


def _assemble_artifact(job: _ExportJob, q: QuantType, tmp: Path, inter: _Intermediate, work: Path
                       ) -> tuple[ExportRecord, float]:
    """Fill the artifact's temporary directory: model.gguf (the intermediate quantized to q), Modelfile,
    config.json, the export record and the manifest. Returns (the record, seconds spent quantizing)."""
    from packager.gguf.modelfile import render_modelfile

    name = f"{job.base_name}-{q.name}"
    manifest = job.manifest or {}
    tmp.chmod(0o755)
    t_q = time.perf_counter()
    if q.name == job.inter_type:
        _link_or_copy(inter.path, tmp / GGUF_FILE)
        quant_s = 0.0
    else:
        im = inter.imatrix if job.imatrix_sha256(q) else None
        quant_s = quantize_gguf(inter.path, tmp / GGUF_FILE, q, job.threads, work / f"quantize-{q.name}.log",
                                progress=job.progress, imatrix=im[0] if im else None)
    size, sha = (tmp / GGUF_FILE).stat().st_size, sha256_file(tmp / GGUF_FILE)
    types = tensor_type_counts(tmp / GGUF_FILE)
    if (fallback := k_quant_fallback(q, types)) is not None:
        job.log(fallback)
    atomic_write_text(tmp / MODELFILE, render_modelfile(
        job.chat, title=f"{name}: {q.description}; exported by packager from {job.base_name}",
        parameters=job.gen_params))
    shutil.copy2(job.src / "config.json", tmp / "config.json")
    rec = ExportRecord(
        name=name, quant=q.name, ftype=q.ftype(), source_dir=str(job.src), source_name=job.base_name,
        source_digest=job.source_digest, source_manifest_digest=manifest.get("digest"),
        source_origin=manifest.get("source"), lineage=job.lineage, recipe=job.recipe,
        intermediate_outtype=job.inter_type, intermediate_sha256=inter.sha256,
        intermediate_size_bytes=inter.size_bytes, converter=job.converter, chat_template=job.chat.as_record(),
        size_bytes=size, sha256=sha, convert_wall_time_s=round(inter.convert_s, 3),
        quantize_wall_time_s=round(quant_s, 3),
        wall_time_s=round(inter.convert_s + (time.perf_counter() - t_q), 3), threads=job.threads,
        versions=_versions(job.llama_cpp_version), created_at=_now(),
        imatrix=inter.imatrix[1] if inter.imatrix and job.imatrix_sha256(q) else None, tensor_types=types,
    )
    atomic_write_json(tmp / EXPORT_RECORD_NAME, rec.model_dump(mode="json"))
    kinds = [{"kind": s.get("method"), "label": s.get("label")} for s in job.lineage]
    write_manifest(tmp, {
        "name": name, "format": ARTIFACT_FORMAT, "quant": q.name, "source": manifest.get(
            "source") or job.base_name, "source_digest": job.source_digest, "recipe": job.recipe,
        "stages": kinds + [{"kind": f"gguf-{q.name}", "label": f"gguf-{q.name}"}],
    })
    return rec, quant_s


def _export_fresh(job: _ExportJob, out_root: Path, todo: list[QuantType]) -> list[GgufArtifact]:
    """Convert the source to the intermediate GGUF once (in a work folder beside the output, removed after), then
    assemble one artifact per type, each renamed into place when complete."""
    results: list[GgufArtifact] = []
    work = Path(tempfile.mkdtemp(dir=out_root, prefix=".gguf-work-"))
    try:
        inter_path = work / f"intermediate-{job.inter_type}.gguf"
        job.log(f"converting {job.src} to a {job.inter_type} GGUF with llama.cpp's converter "
                f"(log: {work / 'convert.log'})")
        convert_s = convert_to_gguf(job.src, inter_path, job.inter_type, job.tools, work / "convert.log",
                                    progress=job.progress)
        inter = _Intermediate(inter_path, sha256_file(inter_path), inter_path.stat().st_size, convert_s)
        job.log(f"converted in {convert_s:.1f}s: {inter.size_bytes / 1e6:.1f} MB")
        if job.imatrix_texts and any(job.imatrix_sha256(q) for q in todo):
            from packager.gguf.imatrix import compute_imatrix, write_imatrix

            im = compute_imatrix(job.src, job.imatrix_texts, inter_path, seq_len=job.imatrix_seq_len,
                                 show_progress=job.progress)
            inter.imatrix = (write_imatrix(im, work / "imatrix.safetensors"), im.record)
            job.log(f"importance matrix: {im.record['tensors']} tensors from {im.record['tokens']} calibration "
                    f"tokens in {im.record['compute_s']}s ({len(im.record['skipped'])} Linear layers not mapped)")
        for q in todo:
            art_dir = out_root / q.name
            with atomic_dir(art_dir) as tmp:
                rec, quant_s = _assemble_artifact(job, q, tmp, inter, work)
            job.log(f"{q.name}: {art_dir} ({rec.size_bytes / 1e6:.1f} MB, sha256 {rec.sha256[:12]}, "
                    f"quantized in {quant_s:.1f}s)")
            results.append(_artifact(art_dir, rec, reused=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def export_gguf(variant_dir: str | Path, out_dir: str | Path, quants: Iterable[str] = ("q8_0", "q4_k_m"), *,
                outtype: Outtype = "auto", threads: int | None = None, force: bool = False, progress: bool = True,
                log: Callable[[str], None] | None = None, chat_template: str | None = None,
                calibration_texts: list[str] | None = None, imatrix_seq_len: int = 512,
                imatrix_types: Iterable[str] | None = None) -> list[GgufArtifact]:
    """Export a float variant to one GGUF artifact per quant type under out_dir/<quant>/ (see the module doc).
    `chat_template` (a file or the Jinja text) stands in for the model's own in the Modelfile. With
    `calibration_texts`, the types of `imatrix_types` (default: those of 4 bits and fewer) are quantized with an
    importance matrix computed on them (packager.gguf.imatrix)."""
    from packager.core.prompt_format import read_chat_template
    from packager.gguf.imatrix import IMATRIX_QUANTS
    from packager.gguf.modelfile import detect_chat_template, generation_parameters
    from packager.hardware import cpu_threads

    log = log or (print if progress else (lambda _m: None))
    qtypes = parse_quants(list(quants))
    if outtype not in ("auto", "f32", "f16", "bf16"):
        raise ConfigError(f"Unknown intermediate GGUF type {outtype!r}; use auto, f32, f16 or bf16.")
    src = Path(variant_dir).expanduser().resolve()
    out_root = Path(out_dir).expanduser().resolve()
    if src == out_root or src in out_root.parents:
        raise ConfigError(f"The output directory {out_root} is inside the variant {src}; choose a folder outside it.")
    check_float_source(src)
    tools = llama_cpp_tools_dir()
    llama_cpp_version = _llama_cpp_version()
    threads = threads or cpu_threads()
    t_all = time.perf_counter()

    _, source_digest, manifest = _source_identity(src)
    lineage, _dirs = lineage_of(src)
    recipe = (_read_json(src.parent / RECIPE_RESULT_NAME) or {}).get("recipe") if lineage else None
    job = _ExportJob(src=src, source_digest=source_digest, manifest=manifest, lineage=lineage, recipe=recipe,
                     base_name=_source_name(src, manifest, lineage),
                     inter_type=_auto_outtype(src) if outtype == "auto" else outtype,
                     converter=_converter_identity(tools),
                     chat=detect_chat_template(src, read_chat_template(chat_template) if chat_template else None),
                     gen_params=generation_parameters(src), tools=tools, llama_cpp_version=llama_cpp_version,
                     threads=threads, progress=progress, log=log, imatrix_texts=calibration_texts or None,
                     imatrix_seq_len=imatrix_seq_len,
                     imatrix_types=IMATRIX_QUANTS if imatrix_types is None else frozenset(imatrix_types))
    if job.chat.style != "chatml":
        log(f"note: chat template of {src.name}: {job.chat.style} ({'; '.join(job.chat.notes)})")

    results, todo = _reused_artifacts(job, out_root, qtypes, force)
    if not todo:
        return results
    out_root.mkdir(parents=True, exist_ok=True)
    results += _export_fresh(job, out_root, todo)
    order = {q.name: i for i, q in enumerate(qtypes)}
    results.sort(key=lambda a: order[a.quant])
    log(f"exported {len(todo)} GGUF artifact(s) in {time.perf_counter() - t_all:.1f}s")
    return results


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def known_quant_names() -> list[str]:
    return QUANT_TYPES.names()
