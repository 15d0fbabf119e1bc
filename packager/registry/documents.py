"""What is written with a registered version: the registration record (`VariantRegistration`, the input), the
JSON documents, the write-once params, the display params/metrics and the model version tags. Pure functions:
no MLflow import (packager.registry.store does the writing).

Where things live (for one version, i.e. one MLflow model version and the MLflow run behind it):

* run params (write-once in MLflow, so they are the record of truth):
    packager.files_digest, packager.record_sha256, packager.parent, packager.source_model, ... (registration)
    packager.results.rNNNN  {"sha256", "at", "summary"}   one per results revision (update_results adds one)
    packager.approval.NNNN  the approval entry (see chain.py)  one per decision
  plus display params (recipe.*, env.*) for the MLflow UI.
* run metrics: the numeric leaves of every results document (eval.*, behaviour.*, loadtest.*, cost.*, summary.*),
  step = results revision, so the UI plots how results changed.
* run artifacts: model/packager-manifest.json (sha256 of every file) and model/location.json (where the files
  are), the files themselves only with log_artifacts=True; packager/record.json (source, lineage, recipe,
  stage records, run configuration, environment); packager/results/<sha256>.json (each results revision);
  packager/approvals/results-<sha256>.json (the results each decision was made on). Each is checked against
  the sha256 in its write-once param when read.
* model version tags: the approval entries again (visible copy, verified against the params), and display
  copies of the status and summary.
"""
from __future__ import annotations

import os
import re
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any, Callable

from packager.errors import ConfigError, IntegrityError
from packager.fsutil import MANIFEST_NAME, dir_size_bytes, hash_tree, read_manifest, tree_digest
from packager.registry.chain import now_utc
from packager.registry.environment import collect_environment
from packager.registry.names import parse_parent, validate_name, version_ref
from packager.registry.records import RESULT_KINDS, ResultsSummary
from packager.registry.results import (
    canonical_json,
    digest,
    flatten_numbers,
    flatten_scalars,
    results_document,
    root_summary,
    summarize,
    to_jsonable,
)

SCHEMA_VERSION = 1
RESULTS_PREFIX = "packager.results.r"
MAX_PARAM_CHARS = 6000  # MLflow's limit for a param value (longer values would be truncated)

# artifact paths inside a version's run
MANIFEST_ARTIFACT = f"model/{MANIFEST_NAME}"
LOCATION_ARTIFACT = "model/location.json"
RECORD_ARTIFACT = "packager/record.json"

# the one spelling of each kind of results, as a VariantRegistration field and an update_results keyword
RESULT_ARGS = {"eval_results": "eval", "behaviour_results": "behaviour", "loadtest_results": "loadtest",
               "cost_results": "cost"}


def results_artifact(sha: str) -> str:
    """Where one results revision (by its sha256) is stored."""
    return f"packager/results/{sha}.json"


def approval_results_artifact(sha: str) -> str:
    """Where the results a decision was made on (by their sha256) are stored."""
    return f"packager/approvals/results-{sha}.json"


# ----------------------------------------------------------------------------------------------- the input record

@dataclass(frozen=True)
class VariantRegistration:
    """What `ModelRegistry.register_variant` registers as a new version of `name`.

    name: the registered model name (1-128 letters, digits, '.', '_' or '-').
    model_dir: the model directory (safetensors, config, tokenizer); its files are hashed (and checked against
        its packager-manifest.json when it has one). The weights are NOT copied into MLflow unless
        log_artifacts is true: the version records the directory's location and the sha256 of every file.
    source_model: the model this was made from ('default', a Hugging Face id, a path); required, not empty.
    source_digest: digest of the source model's files, when known.
    parent_version: the parent version: N (same name), "N", "NAME/N" or "models:/NAME/N"; None for a baseline
        (a lineage root).
    recipe: the recipe (JSON-able: a list of stages, {"stages": [...]}, one stage, or {"name": ...}).
    stage_records: what each compression stage recorded (a JSON-able list); None: [].
    eval_results, behaviour_results, loadtest_results, cost_results: the results of each kind (JSON-able data;
        pydantic models, dataclasses, paths and datetimes inside are converted); None: not measured.
    run_config: the run configuration to record (JSON-able), or None.
    environment: hardware and package versions to record; None: collected from this machine.
    log_artifacts: also upload the model files into MLflow; None: the registry's setting.
    description: the model version's description; None: "<recipe label> of <source>" or "baseline: <source>".
    """

    name: str
    model_dir: str | os.PathLike
    _: KW_ONLY
    source_model: str
    source_digest: str | None = None
    parent_version: int | str | None = None
    recipe: Any = None
    stage_records: list[Any] | None = None
    eval_results: Any = None
    behaviour_results: Any = None
    loadtest_results: Any = None
    cost_results: Any = None
    run_config: Any = None
    environment: dict[str, Any] | None = None
    log_artifacts: bool | None = None
    description: str | None = None

    def results_document(self) -> dict[str, Any]:
        """The results document ({"eval", "behaviour", "loadtest", "cost"}, JSON-able)."""
        return results_document(self.eval_results, self.behaviour_results, self.loadtest_results, self.cost_results)


# ----------------------------------------------------------------------------------------------- labels and checks

def recipe_label(recipe: Any) -> str:
    stages = recipe
    if isinstance(recipe, dict):
        if isinstance(recipe.get("stages"), list):
            stages = recipe["stages"]
        elif "kind" in recipe:
            stages = [recipe]
        elif "name" in recipe:
            return str(recipe["name"])
    if isinstance(stages, list):
        kinds = [str(s.get("kind", s.get("name", "?"))) if isinstance(s, dict) else str(s) for s in stages]
        return ">".join(kinds)
    return "" if recipe is None else str(recipe)


def diff_files(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    problems = []
    for rel in sorted(expected):
        if rel not in actual:
            problems.append(f"missing: {rel}")
        elif actual[rel] != expected[rel]:
            problems.append(f"altered (sha256 {actual[rel][:12]} != recorded {expected[rel][:12]}): {rel}")
    for rel in sorted(set(actual) - set(expected)):
        problems.append(f"unexpected (not registered): {rel}")
    return problems


@dataclass(frozen=True)
class ModelFiles:
    """A checked model directory: its resolved path, the sha256 of every file and their tree digest."""

    path: Path
    files: dict[str, str]
    digest: str
    manifest: dict[str, Any] | None  # the directory's packager-manifest.json, when it has one

    def size_bytes(self) -> int:
        """The size of the model files (the manifest not counted)."""
        manifest_size = (self.path / MANIFEST_NAME).stat().st_size if self.manifest else 0
        return dir_size_bytes(self.path) - manifest_size


def check_inputs(record: VariantRegistration, say: Callable[[str], None]) -> tuple[ModelFiles, tuple[str, int] | None]:
    """Validate the name, the directory, the source and the parent reference; hash the files and check them
    against the directory's manifest. Returns the files and the parent (name, version), or None."""
    validate_name(record.name)
    mdir = Path(record.model_dir).expanduser()
    if not mdir.is_dir():
        raise ConfigError(f"Model directory {mdir} does not exist or is not a directory; pass the directory "
                          "a compression stage wrote (it holds config.json and *.safetensors).")
    mdir = mdir.resolve()
    if not record.source_model:
        raise ConfigError("source_model is empty; name the model this variant was made from "
                          "(e.g. 'default' or a Hugging Face id).")
    parent = parse_parent(record.parent_version, record.name)
    say(f"hashing the files of {mdir}")
    files = hash_tree(mdir)
    if not files:
        raise ConfigError(f"Model directory {mdir} holds no files.")
    manifest = read_manifest(mdir)
    if manifest is not None:
        problems = diff_files(manifest.get("files", {}), files)
        if problems:
            raise IntegrityError(
                f"{mdir} does not match its {MANIFEST_NAME} ({len(problems)} problem(s)): "
                + "; ".join(problems[:10]) + ". It was modified after it was written; rebuild it, or "
                f"delete {MANIFEST_NAME} if the current files are the intended ones.")
    return ModelFiles(path=mdir, files=files, digest=tree_digest(files), manifest=manifest), parent


# ----------------------------------------------------------------------------------------------- what is written

@dataclass(frozen=True)
class RegistrationDocuments:
    """Everything a registration writes, computed before anything is written."""

    label: str  # the recipe label ("" for a baseline)
    model_uri: str
    upload: bool  # upload the model files into MLflow too
    size_bytes: int
    artifacts: dict[str, Any]  # artifact path -> JSON document
    run_tags: dict[str, str]
    anchors: dict[str, str]  # the write-once params
    display: dict[str, str]  # display params (recipe.*, env.*)
    metrics: dict[str, float]
    version_tags: dict[str, str]
    description: str


def registration_documents(record: VariantRegistration, model: ModelFiles, parent: tuple[str, int] | None,
                           results: dict[str, Any], use_artifacts: Any, root_score: float | None,
                           root_label: str | None) -> RegistrationDocuments:
    """The documents, params, metrics and tags of a new version. `root_score`/`root_label`: the lineage root's
    task score when there is a parent (for the recovery shown when the results carry none)."""
    parent_s = version_ref(parent)
    results_sha = digest(results)
    recipe_j = to_jsonable(record.recipe, "recipe")
    stages_j = to_jsonable(record.stage_records or [], "stage_records")
    run_config_j = to_jsonable(record.run_config, "run_config") if record.run_config is not None else None
    env = (to_jsonable(record.environment, "environment") if record.environment is not None
           else collect_environment())
    label = recipe_label(recipe_j)
    created = now_utc()
    model_uri = str(model.path)
    doc = {
        "schema": SCHEMA_VERSION, "name": record.name, "created_at": created, "source_model": record.source_model,
        "source_digest": record.source_digest, "parent": parent_s, "model_uri": model_uri,
        "artifacts_logged": bool(use_artifacts), "files_digest": model.digest, "files_count": len(model.files),
        "size_bytes": model.size_bytes(),
        "recipe": recipe_j, "stage_records": stages_j, "run_config": run_config_j, "environment": env,
    }
    summary = summarize(results)
    anchors = {
        "packager.schema": str(SCHEMA_VERSION), "packager.files_digest": model.digest,
        "packager.record_sha256": digest(doc), "packager.source_model": record.source_model,
        "packager.source_digest": record.source_digest or "", "packager.parent": parent_s or "",
        "packager.model_uri": model_uri, "packager.recipe": label, "packager.created_at": created,
        f"{RESULTS_PREFIX}0001": revision_value(results_sha, created, summary),
    }
    display = {**flatten_scalars(recipe_j, "recipe"), **flatten_scalars(env, "env")}
    display = {k: v for k, v in display.items() if k not in anchors}
    shown = summarize(results, root_score, root_label) if parent else root_summary(summary)
    return RegistrationDocuments(
        label=label, model_uri=model_uri, upload=bool(use_artifacts), size_bytes=doc["size_bytes"],
        artifacts=_artifacts(model, model_uri, bool(use_artifacts), doc, results, results_sha),
        run_tags={"packager.registered_model": record.name, "packager.model_uri": model_uri},
        anchors=anchors, display=dict(list(display.items())[:400]), metrics=metrics_of(results, shown),
        version_tags=_version_tags(record, parent_s, label, model_uri, model.digest, results_sha, shown),
        description=record.description or (f"{label} of {record.source_model}" if label
                                           else f"baseline: {record.source_model}"),
    )


def _artifacts(model: ModelFiles, model_uri: str, logged: bool, record_doc: dict[str, Any],
               results: dict[str, Any], results_sha: str) -> dict[str, Any]:
    return {
        MANIFEST_ARTIFACT: {"files": model.files, "digest": model.digest},
        LOCATION_ARTIFACT: {"model_uri": model_uri, "artifacts_logged": logged,
                            "note": f"model files live at model_uri; sha256 of each in {MANIFEST_NAME}"},
        RECORD_ARTIFACT: record_doc,
        results_artifact(results_sha): results,
    }


def _version_tags(record: VariantRegistration, parent_s: str | None, label: str, model_uri: str,
                  files_digest: str, results_sha: str, shown: ResultsSummary) -> dict[str, str]:
    return {
        "packager.schema": str(SCHEMA_VERSION), "packager.source_model": record.source_model,
        "packager.parent": parent_s or "", "packager.recipe": label, "packager.model_uri": model_uri,
        "packager.files_digest": files_digest, "packager.results_revision": "1",
        "packager.results_digest": results_sha, "packager.status": "pending",
        "packager.summary": canonical_json(shown.model_dump(mode="json")),
    }


def revision_value(sha: str, at: str, summary: ResultsSummary) -> str:
    """The write-once param value of one results revision."""
    s = summary.model_dump(mode="json")
    value = canonical_json({"sha256": sha, "at": at, "summary": s})
    if len(value) > MAX_PARAM_CHARS:  # many tags: keep the headline numbers only
        s["tag_scores"] = {}
        value = canonical_json({"sha256": sha, "at": at, "summary": s})
    return value


_METRIC_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(key: str) -> str:
    """A param/metric key MLflow accepts."""
    return _METRIC_BAD.sub("_", key)[:250]


def metrics_of(results: dict[str, Any], summary: ResultsSummary) -> dict[str, float]:
    """The numeric leaves of a results document and its summary, as MLflow metrics."""
    metrics: dict[str, float] = {}
    for kind in RESULT_KINDS:
        metrics.update(flatten_numbers(results.get(kind), kind))
    s = summary.model_dump(mode="json")
    for k, v in s.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[f"summary.{k}"] = float(v)
    return dict(list(metrics.items())[:3000])
