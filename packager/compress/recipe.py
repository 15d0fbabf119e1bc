"""Recipes: an ordered list of compression stages, validated as a discriminated union on `kind`, and the
runner that applies them stage by stage.

    name: prune-distill-w8a8
    description: optional text
    stages:
      - {kind: prune, target_layers: 22}
      - {kind: distill, ...}
      - {kind: w8a8_int8}

Built-in recipes live in packager/recipes/<name>.yaml (package data); `load_recipe` takes a built-in name
or a path. `run_recipe` runs the stages in order. Each stage reads the previous stage's model directory,
writes into a fresh temporary directory, and only a complete stage is renamed to `out_root/NN-kind/`.
A stage directory whose record (stage.json) matches the current input digest, arguments and calibration
data is reused, so an interrupted run resumes where it stopped. Every stage directory holds stage.json
(its StageRecord) and packager-manifest.json (sha256 of every file).
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Callable, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# The methods, imported explicitly (no package walking): each module registers its function in METHODS.
from packager.compress import distill, fp8, gguf_stage, gptq, int8, prune
from packager.compress.base import METHODS, StageArgs, StageContext
from packager.compress.checkpoint import STAGE_RECORD_NAME
from packager.compress.recipe_records import (  # noqa: F401  (re-exported: other modules import them from here)
    RECORD_SCHEMA_VERSION,
    RecipeResult,
    SourceRecord,
    StageRecord,
    _row,
)
from packager.config import EngineConfig
from packager.errors import ConfigError, HardwareError, IntegrityError, PackagerError
from packager.fsutil import MANIFEST_NAME, atomic_dir, atomic_write_json, hash_tree, tree_digest

# Every method's arguments: a union that type checkers can read (one over a tuple variable they cannot), and
# the same classes, in the same order, as a tuple.
AnyStageArgs = Union[
    gptq.GPTQArgs,
    int8.W8A8Int8Args,
    fp8.FP8Args,
    prune.PruneArgs,
    distill.DistillArgs,
    gguf_stage.GgufArgs,
]
ARGS_CLASSES: tuple[type[StageArgs], ...] = get_args(AnyStageArgs)
ARGS_BY_KIND: dict[str, type[StageArgs]] = {c.model_fields["kind"].default: c for c in ARGS_CLASSES}
StageSpec = Annotated[AnyStageArgs, Field(discriminator="kind")]

ALL_SAMPLES = 1_000_000
# Kinds whose output has other layer shapes than their input (checks of later stages wait for it).
_SHAPE_CHANGING_KINDS = {"prune"}
_NOT_MODEL_FILES = (MANIFEST_NAME, STAGE_RECORD_NAME)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str | None = None
    stages: list[StageSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _quantize_last(self) -> "Recipe":
        for i, st in enumerate(self.stages[:-1]):
            if getattr(type(st), "quantizes", False):
                nxt = self.stages[i + 1]
                raise ValueError(
                    f"stages[{i}] ({st.kind}) writes a quantized checkpoint, which no stage can read, so it must be "
                    f"the last stage; stages[{i + 1}] ({nxt.kind}) comes after it. Put quantization last."
                )
        return self


def known_kinds() -> list[str]:
    return sorted(ARGS_BY_KIND)


def builtin_recipes() -> list[str]:
    d = resources.files("packager").joinpath("recipes")
    try:
        return sorted(p.name[: -len(".yaml")] for p in d.iterdir() if p.name.endswith(".yaml"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _fmt_loc(loc: tuple) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i == 2 and loc[0] == "stages" and part in ARGS_BY_KIND:
            out += f" ({part})"  # the union's tag: name it, it is not a field
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def parse_recipe(data: Any, where: str) -> Recipe:
    """Validate a recipe mapping. Errors name `where`, the field and the bad value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a recipe must be a mapping with 'name' and 'stages', got {type(data).__name__}.")
    stages = data.get("stages")
    if isinstance(stages, list):
        for i, st in enumerate(stages):
            if not isinstance(st, dict):
                raise ConfigError(f"{where}: stages[{i}] must be a mapping with a 'kind', got {st!r}.")
            if "kind" not in st:
                raise ConfigError(f"{where}: stages[{i}] has no 'kind'. Known kinds: {', '.join(known_kinds())}.")
            if st["kind"] not in ARGS_BY_KIND:
                raise ConfigError(f"{where}: stages[{i}].kind: unknown compression method {st['kind']!r}. "
                                  f"Known kinds: {', '.join(known_kinds())}.")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        lines = [f"{where} is not a valid recipe:"]
        for err in e.errors():
            got = err.get("input")
            got_s = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            lines.append(f"  - {_fmt_loc(tuple(err['loc']))}: {err['msg']}{got_s}")
        raise ConfigError("\n".join(lines)) from None


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """A built-in recipe by name (see `builtin_recipes()`) or a YAML/JSON recipe file by path."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.is_file():
        text, where = p.read_text(encoding="utf-8"), str(p)
    elif s.endswith((".yaml", ".yml", ".json")) or os.sep in s:
        raise ConfigError(f"Recipe file {p} does not exist. Built-in recipes: {', '.join(builtin_recipes())}.")
    else:
        res = resources.files("packager").joinpath("recipes", f"{s}.yaml")
        if not res.is_file():
            raise ConfigError(f"Unknown recipe {s!r}: no such file and no built-in recipe of that name. "
                              f"Built-in recipes: {', '.join(builtin_recipes()) or '(none)'}.")
        text, where = res.read_text(encoding="utf-8"), f"built-in recipe '{s}' (packager/recipes/{s}.yaml)"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {e}") from None
    return parse_recipe(data, where)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def model_digest(model_dir: Path) -> tuple[dict[str, str], str]:
    files = hash_tree(model_dir, exclude=_NOT_MODEL_FILES)
    return files, tree_digest(files)


class _PeakRSS:
    """Samples the resident memory of this process and its children; `peak_mb` after the block."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        import psutil

        p = psutil.Process()
        total = p.memory_info().rss
        for c in p.children(recursive=True):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._rss())
            except Exception:
                pass
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "_PeakRSS":
        try:
            self.peak = self._rss()
        except Exception:
            pass
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(timeout=2)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}.")
    if device == "cpu":
        return "cpu"
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if device == "cuda" and not has_cuda:
        raise HardwareError("device 'cuda' was asked for but torch sees no CUDA GPU on this machine; use --device cpu.")
    return "cuda" if has_cuda else "cpu"


def stage_label(index: int, args: AnyStageArgs) -> str:
    return f"{index:02d}-{args.kind}"


def check_recipe(recipe: Recipe, source_dir: Path, engine: EngineConfig) -> list[str]:
    """Everything that can be checked before any work: each stage's own checks against the source model (until
    a stage that changes layer shapes: a recipe that is wrong anywhere is said first), then the hardware preflight
    of every stage for the target. Raises ConfigError / HardwareError naming the stage; returns advisory notes."""
    from packager.hardware import advisories, preflight

    for i, args in enumerate(recipe.stages, 1):
        try:
            args.validate_for(source_dir)
        except PackagerError as e:
            raise type(e)(f"stage {stage_label(i, args)} ({args.kind}): {e}") from None
        if args.kind in _SHAPE_CHANGING_KINDS or getattr(type(args), "changes_architecture", False):
            break
    notes: list[str] = []
    problems: list[str] = []
    for i, args in enumerate(recipe.stages, 1):
        label = stage_label(i, args)
        if not getattr(args, "unsafe_skip_preflight", False):
            problems += [f"stage {label}: {p}" for p in preflight(args, engine.target, engine.gpu_type)]
        notes += [f"stage {label}: {n}" for n in advisories(args, engine.target, engine.gpu_type)]
    if problems:
        raise HardwareError("Refusing the recipe before starting, the target cannot run it:\n  - "
                            + "\n  - ".join(problems))
    return notes


def _versions() -> dict[str, str]:
    from packager.provenance import package_versions

    return package_versions()


def _now() -> str:
    from packager.provenance import now_iso

    return now_iso()


def _read_record(stage_dir: Path) -> StageRecord | None:
    p = stage_dir / STAGE_RECORD_NAME
    if not p.is_file():
        return None
    try:
        return StageRecord.model_validate_json(p.read_text())
    except (ValidationError, ValueError):
        return None


def _write_record(stage_dir: Path, record: StageRecord) -> None:
    from packager.fsutil import write_manifest

    atomic_write_json(stage_dir / STAGE_RECORD_NAME, record.model_dump(mode="json"))
    write_manifest(stage_dir, {"stage": record.label, "method": record.method, "model_digest": record.digest})


def _reusable(stage_dir: Path, args: AnyStageArgs, input_digest: str, calib_sha: str | None) -> StageRecord | None:
    rec = _read_record(stage_dir)
    if rec is None or rec.method != args.kind or rec.input_digest != input_digest:
        return None
    if rec.arguments != args.model_dump(mode="json") or rec.calibration_sha256 != calib_sha:
        return None
    try:
        from packager.fsutil import verify_files

        verify_files(stage_dir, rec.files)
    except IntegrityError:
        return None
    if set(hash_tree(stage_dir, exclude=_NOT_MODEL_FILES)) != set(rec.files):
        return None
    return rec


@dataclass
class _Runner:
    """What every stage of one recipe run shares."""

    src: Path  # the source model: the teacher of distillation stages
    out_root: Path
    engine: EngineConfig
    device: str
    progress: bool
    log: Callable[[str], None]


def _check_source(src: Path) -> None:
    from packager.compress.checkpoint import read_config, weight_files

    weight_files(src)  # safetensors only, refuses pickles
    qc = read_config(src).get("quantization_config")
    if qc:
        raise ConfigError(
            f"The source model {src} is already quantized (quant_method {qc.get('quant_method')!r}); compression "
            "stages read float checkpoints only. Start from the unquantized model."
        )


def chat_renderer(model_dir: Path) -> Callable[[list[dict[str, str]]], str] | None:
    """Formats a conversation with the model's chat template, as the engine will; None without a template."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception:  # noqa: BLE001 - no usable tokenizer: conversations are joined as plain text
        return None
    if not getattr(tok, "chat_template", None):
        return None

    def render(messages: list[dict[str, str]]) -> str:
        return str(tok.apply_chat_template(messages, tokenize=False))

    return render


def _stage_calibration(args: StageArgs, calibration: str | None,
                       cache: dict[tuple[int, int], tuple[list[str], str, str]],
                       render: Callable[[list[dict[str, str]]], str] | None = None
                       ) -> tuple[list[str], str | None, str | None]:
    """(texts, calibration label, calibration sha256) of a stage; no texts (and None, None) when it reads none."""
    from packager.compress.calibration import load_calibration

    if not args.needs_calibration():
        return [], None, None
    # Methods without an n_samples field (distillation) get every calibration sample there is.
    key = (int(getattr(args, "n_samples", None) or ALL_SAMPLES), int(getattr(args, "seq_len", None) or 512))
    if key not in cache:
        cache[key] = load_calibration(calibration, *key, render=render)
    return cache[key]


def _run_stage(run: _Runner, index: int, args: AnyStageArgs, input_dir: Path, input_digest: str,
               calib: tuple[list[str], str | None, str | None]) -> StageRecord:
    """Run one stage into out_root/<label> (renamed into place only when complete) and write its record."""
    from packager.compress.checkpoint import check_model_dir, ensure_tokenizer_files, parameter_count

    label = stage_label(index, args)
    stage_dir = run.out_root / label
    texts, calib_label, calib_sha = calib
    try:
        args.validate_for(input_dir)  # against the actual input (a pruned model may differ)
    except PackagerError as e:
        raise type(e)(f"stage {label} ({args.kind}): {e}") from None
    run.log(f"stage {label}: {args.kind} on {input_dir.name} -> {stage_dir}")
    work_dir = run.out_root / ".work" / label
    work_dir.mkdir(parents=True, exist_ok=True)
    started = _now()
    with atomic_dir(stage_dir) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; a model directory is meant to be shared
        ctx = StageContext(input_dir=input_dir, output_dir=tmp, calibration_texts=texts, engine=run.engine,
                           device=run.device, teacher_dir=run.src, work_dir=work_dir, show_progress=run.progress,
                           log=run.log)
        fn = METHODS.get(args.kind)
        t0 = time.perf_counter()
        with _PeakRSS() as mem:
            report = fn(args, ctx)
        wall = time.perf_counter() - t0
        stage_notes = [f"copied tokenizer files the method did not write: {', '.join(added)}"
                       for added in [ensure_tokenizer_files(input_dir, tmp)] if added]
        check_model_dir(tmp)
        files, digest = model_digest(tmp)
        rec = StageRecord(
            index=index, label=label, method=args.kind, arguments=args.model_dump(mode="json"),
            input_dir=str(input_dir), input_digest=input_digest, calibration_source=calib_label,
            calibration_sha256=calib_sha, calibration_samples=len(texts) if calib_sha else None,
            device=run.device, wall_time_s=round(wall, 3), peak_rss_mb=round(mem.peak_mb, 1),
            parameter_count=parameter_count(tmp), size_bytes=sum((tmp / f).stat().st_size for f in files),
            files=files, digest=digest, report=json.loads(json.dumps(report or {}, default=str)),
            started_at=started, finished_at=_now(), versions=_versions(), notes=stage_notes,
        )
        _write_record(tmp, rec)
    shutil.rmtree(work_dir, ignore_errors=True)
    run.log(f"stage {label}: done in {rec.wall_time_s:.1f}s, {rec.size_bytes / 1e6:.1f} MB, "
            f"{rec.parameter_count / 1e6:.1f}M parameters")
    return rec


def _evaluate_stage(rec: StageRecord, stage_dir: Path, label: str, evaluate: Callable[[Path, str], dict],
                    evaluation_key: str | None) -> StageRecord:
    """Score a finished stage and store the evaluation in its record."""
    ev = evaluate(stage_dir, label)
    rec = rec.model_copy(update={"evaluation": json.loads(json.dumps(ev, default=str)),
                                 "evaluation_key": evaluation_key})
    _write_record(stage_dir, rec)
    return rec


def run_recipe(model, recipe: Recipe, out_root: Path, *, calibration: str | None = None,
               engine: EngineConfig | None = None, evaluate: Callable[[Path, str], dict] | None = None,
               device: str = "auto", progress: bool = True, evaluation_key: str | None = None,
               source_evaluation: dict[str, Any] | None = None,
               log: Callable[[str], None] | None = None) -> RecipeResult:
    """Run the recipe's stages in order on `model` (a packager.core.sources.ResolvedModel) under `out_root`.

    `evaluate(stage_dir, stage_label) -> dict` scores each finished stage (its result is stored in the
    stage record; a reused stage keeps its stored evaluation when `evaluation_key` matches).
    `source_evaluation` (the source model's own evaluation, the baseline) is stored in the result.
    """
    from packager.compress.checkpoint import parameter_count

    engine = engine or EngineConfig()
    log = log or (print if progress else (lambda _m: None))
    out_root = Path(out_root)
    src = Path(model.path)
    t_all = time.perf_counter()
    _check_source(src)
    notes = check_recipe(recipe, src, engine)
    for n in notes:
        log(f"note: {n}")
    dev = resolve_device(device)
    out_root.mkdir(parents=True, exist_ok=True)
    src_files, src_digest = model_digest(src)
    source = SourceRecord(path=str(src), name=model.name, digest=src_digest, parameter_count=parameter_count(src),
                          size_bytes=sum((src / f).stat().st_size for f in src_files), evaluation=source_evaluation)
    run = _Runner(src=src, out_root=out_root, engine=engine, device=dev, progress=progress, log=log)
    records: list[StageRecord] = []
    reused: list[str] = []
    input_dir, input_digest = src, src_digest
    calib_cache: dict[tuple[int, int], tuple[list[str], str, str]] = {}
    render = chat_renderer(src) if any(a.needs_calibration() for a in recipe.stages) else None
    for args in recipe.stages:  # bad calibration data is refused before any stage starts
        _stage_calibration(args, calibration, calib_cache, render)
    for i, args in enumerate(recipe.stages, 1):
        label = stage_label(i, args)
        stage_dir = out_root / label
        calib = _stage_calibration(args, calibration, calib_cache, render)
        rec = _reusable(stage_dir, args, input_digest, calib[2])
        if rec is not None:
            log(f"stage {label}: reusing the completed stage in {stage_dir} (same input, arguments and calibration)")
            reused.append(label)
        else:
            rec = _run_stage(run, i, args, input_dir, input_digest, calib)
        if evaluate is not None and (rec.evaluation is None or rec.evaluation_key != evaluation_key):
            rec = _evaluate_stage(rec, stage_dir, label, evaluate, evaluation_key)
        records.append(rec)
        input_dir, input_digest = stage_dir, rec.digest
        _write_result(out_root, recipe, source, records, input_dir, t_all, reused)
    shutil.rmtree(out_root / ".work", ignore_errors=True)
    return _write_result(out_root, recipe, source, records, input_dir, t_all, reused)


RESULT_NAME = "recipe-result.json"


def _write_result(out_root: Path, recipe: Recipe, source: SourceRecord, records: list[StageRecord],
                  final_dir: Path, t0: float, reused: list[str]) -> RecipeResult:
    res = RecipeResult(recipe=recipe.model_dump(mode="json"), source=source, out_root=str(out_root),
                       stages=list(records), final_dir=str(final_dir), wall_time_s=round(time.perf_counter() - t0, 3),
                       reused_stages=list(reused))
    atomic_write_json(out_root / RESULT_NAME, res.model_dump(mode="json"))
    return res


def summary_markdown(result: RecipeResult) -> str:
    rows = result.summary_rows()
    head = "| stage | method | params (M) | size (MB) | wall (s) | score | recovery | perplexity |\n"
    head += "|---|---|---:|---:|---:|---:|---:|---:|\n"

    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    body = "".join(
        f"| {r['stage']} | {r['method']} | {r['parameter_count'] / 1e6:.1f} | {r['size_mb']:.1f} | "
        f"{f(r['wall_time_s'], '.1f')} | {f(r['score'], '.3f')} | {f(r['recovery'], '.1%')} | "
        f"{f(r['perplexity'], '.2f')} |\n"
        for r in rows
    )
    title = f"# Recipe `{result.recipe.get('name')}` on {result.source.name}\n\n"
    return title + head + body
