"""ModelRegistry: every compressed variant as an MLflow registered model version, with lineage, file hashes,
results, and an append-only hash-chained approval history.

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

MLflow is imported only inside methods: importing this module stays cheap.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from packager.errors import ConfigError, IntegrityError
from packager.fsutil import MANIFEST_NAME, dir_size_bytes, hash_tree, read_manifest, tree_digest
from packager.registry.chain import (
    GENESIS, MAX_BY_CHARS, MAX_REASON_CHARS, approval_key, compute_status, entry_text,
    make_entry, now_utc, parse_seq, verify_chain,
)
from packager.registry.environment import collect_environment
from packager.registry.errors import RegistryError, TamperedHistoryError
from packager.registry.models import (
    ApprovalEntry, ApprovalHistory, Decision, RegistryConfig, ResultsRevision, ResultsSummary, VariantRecord, VerifyResult,
    VersionSummary,
)
from packager.registry.results import (
    canonical_json, digest, flatten_numbers, flatten_scalars, results_document, summarize, to_jsonable,
)

SCHEMA_VERSION = 1
ENV_URI = "PACKAGER_REGISTRY_URI"
RESULTS_PREFIX = "packager.results.r"
MAX_PARAM_CHARS = 6000  # MLflow's limit for a param value (longer values would be truncated)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESULT_ARGS = {
    "eval_results": "eval", "eval": "eval",
    "behaviour_results": "behaviour", "behaviour": "behaviour", "behavior_results": "behaviour",
    "loadtest_results": "loadtest", "loadtest": "loadtest",
    "cost_results": "cost", "cost": "cost",
}
T = TypeVar("T")


# ----------------------------------------------------------------------------------------------- locations

def default_registry_uri() -> str:
    from packager.models import packager_home

    return "sqlite:///" + (packager_home() / "registry" / "mlflow.db").resolve().as_posix()


def resolve_registry_uri(uri: str | None = None) -> str:
    """Explicit URI > $PACKAGER_REGISTRY_URI > $MLFLOW_TRACKING_URI > the embedded SQLite store.

    An explicit or PACKAGER_REGISTRY_URI value that is a plain path means a SQLite store: `x.db` is the file,
    anything else a directory holding `mlflow.db`.
    """
    chosen = uri or os.environ.get(ENV_URI)
    if chosen:
        chosen = chosen.strip()
        if "://" not in chosen and not chosen.startswith(("sqlite:", "databricks", "file:")):
            p = Path(chosen).expanduser().resolve()
            chosen = "sqlite:///" + (p if p.suffix == ".db" else p / "mlflow.db").as_posix()
        return chosen
    return os.environ.get("MLFLOW_TRACKING_URI") or default_registry_uri()


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def registry_config(cfg: Any) -> RegistryConfig:
    """Validate RunConfig.registry (or a dict of it) as a RegistryConfig; ConfigError names the bad field."""
    from pydantic import ValidationError

    from packager.config import format_validation_error

    data = getattr(cfg, "registry", cfg)
    try:
        return RegistryConfig.model_validate(data or {})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "the run configuration's registry section")) from None


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"Registered model name {name!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. 'smollm2-135m-instruct')."
        )
    return name


def validate_version(version: int | str) -> int:
    try:
        v = int(str(version).strip())
    except ValueError:
        v = 0
    if v < 1:
        raise ConfigError(f"Version {version!r} is not valid: versions are positive integers (1, 2, ...).")
    return v


def parse_parent(parent: int | str | None, name: str) -> tuple[str, int] | None:
    """3 or "3" -> (name, 3); "other/3" or "models:/other/3" -> ("other", 3)."""
    if parent is None or parent == "":
        return None
    if isinstance(parent, int):
        return name, validate_version(parent)
    s = str(parent).strip().removeprefix("models:/")
    if "/" in s:
        pname, _, pver = s.rpartition("/")
        return validate_name(pname), validate_version(pver)
    return name, validate_version(s)


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


def _short(msg: str, limit: int = 400) -> str:
    first = msg.strip().split("\n\n", 1)[0].strip()
    return first if len(first) <= limit else first[:limit] + "..."


# ----------------------------------------------------------------------------------------------- internal state

class _State:
    """What the write-once params and the tags say about one version (no artifacts downloaded)."""

    def __init__(self, name: str, version: int, mv: Any, run: Any):
        self.name, self.version, self.mv, self.run = name, version, mv, run
        self.params: dict[str, str] = dict(run.data.params)
        self.tags: dict[str, str] = dict(mv.tags or {})
        self.problems: list[str] = []
        self.revisions: list[ResultsRevision] = []
        revs: dict[int, str] = {}
        for k, v in self.params.items():
            n = parse_seq(k, RESULTS_PREFIX)
            if n is not None:
                revs[n] = v
        for n in range(1, (max(revs) if revs else 0) + 1):
            if n not in revs:
                self.problems.append(f"results revision {n} is missing from the write-once run record")
                continue
            try:
                d = json.loads(revs[n])
                self.revisions.append(ResultsRevision(revision=n, sha256=d["sha256"], at=d["at"],
                                                      summary=ResultsSummary.model_validate(d["summary"])))
            except Exception as e:  # noqa: BLE001 - any malformed record is a verification problem
                self.problems.append(f"results revision {n} record is malformed: {str(e).splitlines()[0]}")
        if not self.revisions:
            self.problems.append("no results revision recorded")
        p_entries = {n: v for k, v in self.params.items() if (n := parse_seq(k)) is not None}
        t_entries = {n: v for k, v in self.tags.items() if (n := parse_seq(k)) is not None}
        self.entries, chain_problems, self.notes = verify_chain(p_entries, t_entries)
        self.chain_ok = not chain_problems
        self.problems += chain_problems
        self.files_digest = self.params.get("packager.files_digest", "")
        if not self.files_digest:
            self.problems.append("the write-once files digest (packager.files_digest) is missing")

    @property
    def current(self) -> ResultsRevision | None:
        return self.revisions[-1] if self.revisions else None

    @property
    def results_digest(self) -> str:
        return self.current.sha256 if self.current else ""

    @property
    def parent(self) -> str | None:
        return self.params.get("packager.parent") or None

    def status(self) -> tuple[str, str]:
        return compute_status(self.entries, self.problems, self.results_digest, self.files_digest)

    def history(self) -> ApprovalHistory:
        status, detail = self.status()
        cur = self.current
        return ApprovalHistory(
            name=self.name, version=self.version, entries=self.entries, chain_ok=self.chain_ok,
            problems=list(self.problems), notes=list(self.notes), status=status, status_detail=detail,
            current_results_revision=cur.revision if cur else 0, current_results_digest=self.results_digest,
        )


# ----------------------------------------------------------------------------------------------- the registry

class ModelRegistry:
    """A registry of compressed model variants backed by an MLflow tracking server / model registry.

    `uri`: an MLflow tracking URI (http(s)://host:port for a shared server, sqlite:///path.db, ...); None picks
    $PACKAGER_REGISTRY_URI, $MLFLOW_TRACKING_URI, then the embedded store <packager home>/registry/mlflow.db.
    """

    def __init__(self, uri: str | None = None, *, log_artifacts: bool = False):
        self.uri = resolve_registry_uri(uri)
        self.log_artifacts = log_artifacts
        self._client: Any = None
        db = sqlite_path(self.uri)
        self.artifact_root: Path | None = (db.resolve().parent / "artifacts") if db is not None else None

    def __repr__(self) -> str:
        return f"ModelRegistry({self.uri!r})"

    @classmethod
    def from_config(cls, cfg: Any) -> "ModelRegistry":
        """From a RunConfig (its `registry:` section) or that section as a dict; unknown keys are refused."""
        rc = registry_config(cfg)
        return cls(rc.uri, log_artifacts=rc.log_artifacts)

    # ---------------------------------------------------------------- MLflow plumbing
    @property
    def client(self) -> Any:
        if self._client is None:
            import logging

            for lg in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration",
                       "mlflow.tracking._tracking_service.utils", "mlflow.store.model_registry.abstract_store"):
                logging.getLogger(lg).setLevel(logging.WARNING)
            if self.uri.startswith(("http://", "https://")):
                self._probe_server()
            db = sqlite_path(self.uri)
            if db is not None:
                db.resolve().parent.mkdir(parents=True, exist_ok=True)
            # MLflow draws a progress bar for every small download; the registry's documents are tiny.
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            from mlflow import MlflowClient

            try:
                self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            except Exception as e:  # noqa: BLE001
                raise RegistryError(f"Cannot open the MLflow registry at {self.uri}: {_short(str(e))}. "
                                    "Check --registry-uri / $PACKAGER_REGISTRY_URI.") from None
        return self._client

    def _probe_server(self) -> None:
        """Fail in seconds, not after MLflow's minutes of retries, when a server is not there."""
        import httpx

        url = self.uri.rstrip("/") + "/health"
        try:
            httpx.get(url, timeout=10.0)
        except httpx.HTTPError as e:
            raise RegistryError(
                f"Cannot reach the MLflow tracking server at {self.uri} ({type(e).__name__}: {e}). "
                "Start it (e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db`) or pass another "
                "--registry-uri / $PACKAGER_REGISTRY_URI."
            ) from None

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as e:
            raise RegistryError(f"The MLflow registry at {self.uri} refused to {what}: {_short(e.message)}") from None
        except OSError as e:
            raise RegistryError(f"The MLflow registry at {self.uri} failed to {what}: {e}") from None

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp_name = f"packager/{name}"
        exp = self._call("read an experiment", self.client.get_experiment_by_name, exp_name)
        if exp is not None:
            return exp.experiment_id
        loc = (self.artifact_root / name).as_uri() if self.artifact_root is not None else None
        try:
            return self.client.create_experiment(exp_name, artifact_location=loc,
                                                 tags={"packager.registered_model": name})
        except MlflowException:
            exp = self._call("read an experiment", self.client.get_experiment_by_name, exp_name)
            if exp is None:
                raise
            return exp.experiment_id

    def _ensure_registered_model(self, name: str, source_model: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
            return
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(f"The MLflow registry at {self.uri} refused to read model {name!r}: "
                                    f"{_short(e.message)}") from None
        try:
            self.client.create_registered_model(
                name, tags={"packager.schema": str(SCHEMA_VERSION), "packager.source_model": source_model},
                description=f"Variants of {source_model} registered by packager (compressed and baseline).")
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise RegistryError(f"The MLflow registry at {self.uri} refused to create model {name!r}: "
                                    f"{_short(e.message)}") from None

    def _model_version(self, name: str, version: int) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(f"The MLflow registry at {self.uri} refused to read {name} version "
                                    f"{version}: {_short(e.message)}") from None
        known = []
        with contextlib.suppress(MlflowException):
            known = sorted(int(mv.version) for mv in self.client.search_model_versions(f"name='{name}'"))
        if not known:
            raise RegistryError(f"No registered model {name!r} in the registry at {self.uri}. "
                                "See `packager registry list` for the registered names.")
        raise RegistryError(f"{name} has no version {version} in the registry at {self.uri}; its versions are "
                            f"{', '.join(map(str, known))}. See `packager registry list {name}`.")

    def _state(self, name: str, version: int | str) -> _State:
        name, v = validate_name(name), validate_version(version)
        mv = self._model_version(name, v)
        if (mv.tags or {}).get("packager.schema") is None or not mv.run_id:
            raise RegistryError(f"{name} version {v} in {self.uri} was not registered by packager (it has no "
                                "packager.schema tag or no run); register the model directory with "
                                "`packager registry register`.")
        run = self._call(f"read the run of {name} version {v}", self.client.get_run, mv.run_id)
        return _State(name, v, mv, run)

    @contextlib.contextmanager
    def _tmpdir(self) -> Iterator[Path]:
        d = Path(tempfile.mkdtemp(prefix="packager-registry-"))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def _download_json(self, run_id: str, path: str) -> Any:
        with self._tmpdir() as d:
            local = self._call(f"download artifact {path}", self.client.download_artifacts, run_id, path, str(d))
            return json.loads(Path(local).read_text(encoding="utf-8"))

    def _log_json_artifacts(self, run_id: str, docs: dict[str, Any]) -> None:
        with self._tmpdir() as d:
            for rel, doc in docs.items():
                p = d / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(json.dumps(doc, indent=2, sort_keys=True, allow_nan=True), encoding="utf-8")
            self._call("store artifacts", self.client.log_artifacts, run_id, str(d))

    def _log_params_write_once(self, run_id: str, key: str, value: str) -> bool:
        """Log a write-once param. True: written (or already there with this value). False: another writer
        holds the key with a different value (the caller re-reads and retries)."""
        from mlflow.exceptions import MlflowException

        if len(value) > MAX_PARAM_CHARS:
            raise ConfigError(f"The record for {key} is {len(value)} characters; MLflow keeps at most "
                              f"{MAX_PARAM_CHARS}. Shorten the reason or the results summary.")
        try:
            self.client.log_param(run_id, key, value)
            return True
        except MlflowException as e:
            current = self._call("read a run", self.client.get_run, run_id).data.params.get(key)
            if current is not None and current != value:
                return False
            raise RegistryError(f"The MLflow registry at {self.uri} refused to record {key}: {_short(e.message)}") from None

    def _log_display(self, run_id: str, params: dict[str, str], metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric, Param

        ts = int(time.time() * 1000)
        # keys are sanitised for MLflow; two keys that become one keep the first value (params are write-once)
        pdict: dict[str, str] = {}
        for k, v in params.items():
            pdict.setdefault(_metric_key(k), v[:500])
        mdict: dict[str, float] = {}
        for k, v in metrics.items():
            mdict.setdefault(_metric_key(k), v)
        plist = [Param(k, v) for k, v in pdict.items()]
        mlist = [Metric(k, v, ts, step) for k, v in mdict.items()]
        for i in range(0, len(plist), 100):
            self._call("log params", self.client.log_batch, run_id, params=plist[i:i + 100])
        for i in range(0, len(mlist), 1000):
            self._call("log metrics", self.client.log_batch, run_id, metrics=mlist[i:i + 1000])

    # ---------------------------------------------------------------- lineage and summaries
    def _root_score(self, state: _State, cache: dict[tuple[str, int], _State] | None = None) -> tuple[float | None, str | None]:
        """Task score of the lineage root (the version registered without a parent), if not `state` itself."""
        cache = {} if cache is None else cache
        cur, seen = state, set()
        while cur.parent:
            if (cur.name, cur.version) in seen:
                return None, None
            seen.add((cur.name, cur.version))
            pname, pver = parse_parent(cur.parent, cur.name)  # type: ignore[misc]
            key = (pname, pver)
            if key not in cache:
                try:
                    cache[key] = self._state(pname, pver)
                except RegistryError:
                    return None, None
            cur = cache[key]
        if cur is state or cur.current is None:
            return None, None
        return cur.current.summary.task_score, f"root {cur.name} version {cur.version}"

    @staticmethod
    def _root_summary(s: ResultsSummary) -> ResultsSummary:
        """A root (baseline) without an explicit recovery is its own reference: recovery 1.0."""
        if s.recovery is None and s.task_score is not None:
            return s.model_copy(update={"baseline_score": s.task_score, "recovery": 1.0,
                                        "recovery_source": "this version is the lineage root (baseline)"})
        return s

    def _summary(self, state: _State, cache: dict | None = None) -> ResultsSummary:
        """The current summary, with the recovery taken from the lineage root when the results carry none."""
        cur = state.current
        if cur is None:
            return ResultsSummary()
        s = cur.summary
        if s.recovery is None and s.task_score is not None:
            if state.parent is None:
                return self._root_summary(s)
            root, label = self._root_score(state, cache)
            if root is not None and root > 0:
                return s.model_copy(update={"baseline_score": root, "recovery": s.task_score / root,
                                            "recovery_source": label})
        return s

    def _verify_documents(self, state: _State) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
        """Download record, current results and manifest; add a problem for each one that fails its anchor."""
        run_id = state.run.info.run_id
        record: dict[str, Any] = {}
        results: dict[str, Any] = {}
        files: dict[str, str] = {}
        try:
            record = self._download_json(run_id, "packager/record.json")
            anchor = state.params.get("packager.record_sha256")
            if digest(record) != anchor:
                state.problems.append(f"packager/record.json was modified after registration (sha256 "
                                      f"{digest(record)[:12]} != recorded {str(anchor)[:12]})")
        except RegistryError as e:
            state.problems.append(f"packager/record.json cannot be read: {e}")
        if state.current is not None:
            path = f"packager/results/{state.current.sha256}.json"
            try:
                results = self._download_json(run_id, path)
                if digest(results) != state.current.sha256:
                    state.problems.append(f"{path} (results revision {state.current.revision}) was modified: it "
                                          f"hashes to {digest(results)[:12]}")
            except RegistryError as e:
                state.problems.append(f"{path} cannot be read: {e}")
        try:
            manifest = self._download_json(run_id, f"model/{MANIFEST_NAME}")
            files = dict(manifest.get("files", {}))
            if tree_digest(files) != state.files_digest:
                state.problems.append(f"model/{MANIFEST_NAME} was modified after registration (its files hash to "
                                      f"{tree_digest(files)[:12]}, recorded {state.files_digest[:12]})")
        except RegistryError as e:
            state.problems.append(f"model/{MANIFEST_NAME} cannot be read: {e}")
        return record, results, files

    # ---------------------------------------------------------------- public API
    def register_variant(
        self, name: str, model_dir: str | os.PathLike, *, source_model: str, source_digest: str | None = None,
        parent_version: int | str | None = None, recipe: Any = None, stage_records: list[Any] | None = None,
        eval_results: Any = None, behaviour_results: Any = None, loadtest_results: Any = None,
        cost_results: Any = None, run_config: Any = None, environment: dict[str, Any] | None = None,
        log_artifacts: bool | None = None, description: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> int:
        """Register the model directory as a new version of `name`; return the version number.

        The files are hashed (and checked against the directory's packager-manifest.json when it has one);
        the weights are NOT copied into MLflow unless log_artifacts=True: the version records the directory's
        location and the sha256 of every file.
        """
        say = progress or (lambda _m: None)
        validate_name(name)
        mdir = Path(model_dir).expanduser()
        if not mdir.is_dir():
            raise ConfigError(f"Model directory {mdir} does not exist or is not a directory; pass the directory "
                              "a compression stage wrote (it holds config.json and *.safetensors).")
        mdir = mdir.resolve()
        if not source_model:
            raise ConfigError("source_model is empty; name the model this variant was made from "
                              "(e.g. 'default' or a Hugging Face id).")
        parent = parse_parent(parent_version, name)
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
        files_digest = tree_digest(files)
        results = results_document(eval_results, behaviour_results, loadtest_results, cost_results)
        results_sha = digest(results)
        use_artifacts = self.log_artifacts if log_artifacts is None else log_artifacts
        root_score: float | None = None
        root_label: str | None = None
        if parent is not None:
            pstate = self._state(*parent)  # must exist and be a packager version
            if pstate.parent is None:
                root_score = pstate.current.summary.task_score if pstate.current else None
                root_label = f"root {pstate.name} version {pstate.version}"
            else:
                root_score, root_label = self._root_score(pstate)
        parent_s = f"{parent[0]}/{parent[1]}" if parent else None
        recipe_j = to_jsonable(recipe, "recipe")
        stages_j = to_jsonable(stage_records or [], "stage_records")
        run_config_j = to_jsonable(run_config, "run_config") if run_config is not None else None
        env = to_jsonable(environment, "environment") if environment is not None else collect_environment()
        label = recipe_label(recipe_j)
        created = now_utc()
        model_uri = str(mdir)
        record = {
            "schema": SCHEMA_VERSION, "name": name, "created_at": created, "source_model": source_model,
            "source_digest": source_digest, "parent": parent_s, "model_uri": model_uri,
            "artifacts_logged": bool(use_artifacts), "files_digest": files_digest, "files_count": len(files),
            "size_bytes": dir_size_bytes(mdir) - ((mdir / MANIFEST_NAME).stat().st_size if manifest else 0),
            "recipe": recipe_j, "stage_records": stages_j, "run_config": run_config_j, "environment": env,
        }
        summary = summarize(results)
        rev_value = _revision_value(results_sha, created, summary)

        exp_id = self._experiment_id(name)
        self._ensure_registered_model(name, source_model)
        run = self._call("create a run", self.client.create_run, exp_id, run_name=f"{name}:{label or 'baseline'}",
                         tags={"packager.registered_model": name, "packager.model_uri": model_uri})
        run_id = run.info.run_id
        try:
            if use_artifacts:
                say(f"uploading the model files ({record['size_bytes'] / 1e6:.1f} MB) to MLflow")
                self._call("upload the model files", self.client.log_artifacts, run_id, str(mdir), "model")
            say("recording documents, params and metrics")
            self._log_json_artifacts(run_id, {
                f"model/{MANIFEST_NAME}": {"files": files, "digest": files_digest},
                "model/location.json": {"model_uri": model_uri, "artifacts_logged": bool(use_artifacts),
                                        "note": "model files live at model_uri; sha256 of each in "
                                                f"{MANIFEST_NAME}"},
                "packager/record.json": record,
                f"packager/results/{results_sha}.json": results,
            })
            anchors = {
                "packager.schema": str(SCHEMA_VERSION), "packager.files_digest": files_digest,
                "packager.record_sha256": digest(record), "packager.source_model": source_model,
                "packager.source_digest": source_digest or "", "packager.parent": parent_s or "",
                "packager.model_uri": model_uri, "packager.recipe": label, "packager.created_at": created,
                f"{RESULTS_PREFIX}0001": rev_value,
            }
            from mlflow.entities import Param

            plist = [Param(k, v) for k, v in anchors.items()]
            for p in plist:
                if len(p.value) > MAX_PARAM_CHARS:
                    raise ConfigError(f"{p.key} is {len(p.value)} characters; MLflow keeps at most {MAX_PARAM_CHARS}.")
            self._call("record the registration", self.client.log_batch, run_id, params=plist)
            display = {**flatten_scalars(recipe_j, "recipe"), **flatten_scalars(env, "env")}
            display = {k: v for k, v in display.items() if k not in anchors}
            shown = summarize(results, root_score, root_label) if parent else self._root_summary(summary)
            self._log_display(run_id, dict(list(display.items())[:400]), _metrics_of(results, shown), step=1)
            mv_tags = {
                "packager.schema": str(SCHEMA_VERSION), "packager.source_model": source_model,
                "packager.parent": parent_s or "", "packager.recipe": label, "packager.model_uri": model_uri,
                "packager.files_digest": files_digest, "packager.results_revision": "1",
                "packager.results_digest": results_sha, "packager.status": "pending",
                "packager.summary": canonical_json(shown.model_dump(mode="json")),
            }
            desc = description or (f"{label} of {source_model}" if label else f"baseline: {source_model}")
            mv = self._call(f"create a version of {name}", self.client.create_model_version, name,
                            f"runs:/{run_id}/model", run_id=run_id, tags=mv_tags, description=desc)
            version = int(mv.version)
            self._call("tag the run", self.client.set_tag, run_id, "packager.registry_version", str(version))
            with contextlib.suppress(Exception):
                self.client.update_run(run_id, name=f"{name}-v{version}")
            with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints "View run ..." links on stdout
                self._call("finish the run", self.client.set_terminated, run_id, "FINISHED")
        except BaseException:
            with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
                self.client.set_terminated(run_id, "FAILED")
                self.client.delete_run(run_id)
            raise
        say(f"registered {name} version {version}")
        return version

    def _verified_state(self, name: str, version: int | str, refusing: str, advice: str):
        """The version's state and current results, or TamperedHistoryError ("Refusing to <refusing> ...") when
        it fails verification: nothing is written onto a history that does not verify."""
        state = self._state(name, version)
        _, results, _ = self._verify_documents(state)
        if state.problems:
            raise TamperedHistoryError(
                f"Refusing to {refusing} {state.name} version {state.version}: it fails verification: "
                f"{'; '.join(state.problems[:5])}. {advice}")
        return state, results

    def update_results(self, name: str, version: int | str, **results: Any) -> ResultsRevision:
        """Record new results (eval_results=, behaviour_results=, loadtest_results=, cost_results=; kinds not
        given are kept). A change of results makes an earlier approval stale. Returns the current revision."""
        if not results:
            raise ConfigError("update_results needs at least one of: " + ", ".join(sorted(set(_RESULT_ARGS))))
        new: dict[str, Any] = {}
        for k, v in results.items():
            if k not in _RESULT_ARGS:
                raise ConfigError(f"Unknown results kind {k!r}; known: {', '.join(sorted(_RESULT_ARGS))}.")
            new[_RESULT_ARGS[k]] = v
        for _attempt in range(8):
            state, current = self._verified_state(name, version, "update the results of",
                                                  "Investigate before changing it.")
            doc = results_document(**{k: new.get(k, current.get(k)) for k in ("eval", "behaviour", "loadtest", "cost")})
            sha = digest(doc)
            if sha == state.results_digest:
                return state.current  # type: ignore[return-value]
            n = state.current.revision + 1 if state.current else 1
            at = now_utc()
            summary = summarize(doc)
            run_id = state.run.info.run_id
            self._log_json_artifacts(run_id, {f"packager/results/{sha}.json": doc})
            if not self._log_params_write_once(run_id, f"{RESULTS_PREFIX}{n:04d}", _revision_value(sha, at, summary)):
                continue  # someone else recorded revision n first: merge onto theirs
            state = self._state(name, version)
            shown = self._summary(state)
            self._log_display(run_id, {}, _metrics_of(doc, shown), step=n)
            rev = ResultsRevision(revision=n, sha256=sha, at=at, summary=shown)
            status, _ = state.status()
            for k, v in {"packager.results_revision": str(n), "packager.results_digest": sha,
                         "packager.summary": canonical_json(shown.model_dump(mode="json")),
                         "packager.status": status}.items():
                self._call("tag the version", self.client.set_model_version_tag, state.name, str(state.version), k, v)
            return rev
        raise RegistryError(f"Could not record new results for {name} version {version}: other writers kept "
                            "changing it; try again.")

    def approve(self, name: str, version: int | str, by: str, reason: str) -> ApprovalEntry:
        return self._decide(name, version, "approved", by, reason)

    def reject(self, name: str, version: int | str, by: str, reason: str) -> ApprovalEntry:
        return self._decide(name, version, "rejected", by, reason)

    def _decide(self, name: str, version: int | str, decision: Decision, by: str, reason: str) -> ApprovalEntry:
        by, reason = (by or "").strip(), (reason or "").strip()
        if not by:
            raise ConfigError("Who decides must be named: pass --by (a person or a team, e.g. 'alice@example.com').")
        if not reason:
            raise ConfigError(f"A {decision[:-1]}al needs a reason: pass --reason (e.g. 'recovery 0.97, refusal unchanged').")
        if len(by) > MAX_BY_CHARS or len(reason) > MAX_REASON_CHARS:
            raise ConfigError(f"--by is limited to {MAX_BY_CHARS} characters and --reason to {MAX_REASON_CHARS}; "
                              f"got {len(by)} and {len(reason)}. Put long reviews in a document and link it.")
        for _attempt in range(8):
            state, results = self._verified_state(name, version, "record a decision on",
                                                  "Investigate (and re-register the artifact) first.")
            summary = self._summary(state)
            run_id = state.run.info.run_id
            if state.entries and approval_key(state.entries[-1].seq) not in state.tags:
                # the previous decision's param is there but not yet its tag (in progress or interrupted):
                # write the visible copy from the write-once record, so the history stays complete
                last = state.entries[-1]
                self._call("tag the version", self.client.set_model_version_tag, state.name, str(state.version),
                           approval_key(last.seq), state.params[approval_key(last.seq)])
            self._log_json_artifacts(run_id, {f"packager/approvals/results-{state.results_digest}.json": results})
            seq = len(state.entries) + 1
            entry_summary = summary.model_dump(mode="json", exclude={"tag_scores"})
            entry = make_entry(seq, decision, by, reason, state.current.revision, state.results_digest,  # type: ignore[union-attr]
                               state.files_digest, ResultsSummary.model_validate(entry_summary),
                               state.entries[-1].hash if state.entries else GENESIS)
            text = entry_text(entry)
            if not self._log_params_write_once(run_id, approval_key(seq), text):
                continue  # another decision took this sequence number: re-read and link after it
            self._call("tag the version", self.client.set_model_version_tag, state.name, str(state.version),
                       approval_key(seq), text)
            state = self._state(name, version)
            status, _ = state.status()
            self._call("tag the version", self.client.set_model_version_tag, state.name, str(state.version),
                       "packager.status", status)
            return entry
        raise RegistryError(f"Could not record the decision on {name} version {version}: other decisions kept "
                            "arriving at the same time; try again.")

    def history(self, name: str, version: int | str) -> ApprovalHistory:
        """The verified approval history and the status it implies (documents checked too)."""
        state = self._state(name, version)
        self._verify_documents(state)
        return state.history()

    def approval_results(self, name: str, version: int | str, seq: int) -> dict[str, Any]:
        """The results a decision was made on, checked against the digest in its history entry."""
        state = self._state(name, version)
        entry = next((e for e in state.entries if e.seq == seq), None)
        if entry is None:
            raise RegistryError(f"{state.name} version {state.version} has no approval entry {seq}; it has "
                                f"{len(state.entries)}.")
        path = f"packager/approvals/results-{entry.results_digest}.json"
        doc = self._download_json(state.run.info.run_id, path)
        if digest(doc) != entry.results_digest:
            raise TamperedHistoryError(f"{path} of {state.name} version {state.version} was modified: it no longer "
                                       f"matches the digest in approval entry {seq}.")
        return doc

    def get(self, name: str, version: int | str) -> VariantRecord:
        """Everything recorded for a version, with every stored document verified."""
        state = self._state(name, version)
        record, results, files = self._verify_documents(state)
        hist = state.history()
        summary = self._summary(state)
        return VariantRecord(
            name=state.name, version=state.version, registry_uri=self.uri, run_id=state.run.info.run_id,
            mlflow_source=state.mv.source or "", created_at=state.params.get("packager.created_at", ""),
            source_model=state.params.get("packager.source_model", ""),
            source_digest=state.params.get("packager.source_digest") or None, parent=state.parent,
            model_uri=state.params.get("packager.model_uri", ""),
            artifacts_logged=bool(record.get("artifacts_logged", False)), files=files,
            files_digest=state.files_digest, size_bytes=int(record.get("size_bytes", 0) or 0),
            recipe=record.get("recipe"), stage_records=list(record.get("stage_records") or []),
            run_config=record.get("run_config"), environment=dict(record.get("environment") or {}),
            results=results, results_revision=state.current.revision if state.current else 0,
            results_digest=state.results_digest, summary=summary, history=hist,
        )

    def list(self, name: str | None = None) -> list[VersionSummary]:
        """Every packager version (of `name`, or of every registered model), oldest first. The history chain is
        verified; stored documents are not downloaded (use get/show for the full check)."""
        flt = f"name='{validate_name(name)}'" if name else None
        mvs: list[Any] = []
        token = None
        while True:
            page = self._call("search model versions", self.client.search_model_versions, flt, max_results=1000,
                              page_token=token)
            mvs.extend(page)
            token = getattr(page, "token", None)
            if not token:
                break
        cache: dict[tuple[str, int], _State] = {}
        out: list[VersionSummary] = []
        for mv in sorted(mvs, key=lambda m: (m.name, int(m.version))):
            if (mv.tags or {}).get("packager.schema") is None:
                continue
            key = (mv.name, int(mv.version))
            if key not in cache:
                run = self._call("read a run", self.client.get_run, mv.run_id)
                cache[key] = _State(mv.name, int(mv.version), mv, run)
            out.append(self._row(cache[key], cache))
        return out

    def lineage(self, name: str, version: int | str) -> list[VersionSummary]:
        """The version and its ancestors, root (baseline) first."""
        chain: list[_State] = []
        cache: dict[tuple[str, int], _State] = {}
        cur: _State | None = self._state(name, version)
        while cur is not None and len(chain) < 64:
            chain.append(cur)
            cache[(cur.name, cur.version)] = cur
            parent = parse_parent(cur.parent, cur.name) if cur.parent else None
            cur = self._state(*parent) if parent else None
        return [self._row(st, cache) for st in reversed(chain)]

    def _row(self, st: _State, cache: dict) -> VersionSummary:
        status, _ = st.status()
        return VersionSummary(
            name=st.name, version=st.version, parent=st.parent,
            source_model=st.params.get("packager.source_model", ""),
            recipe=st.params.get("packager.recipe", ""), status=status, summary=self._summary(st, cache),
            results_revision=st.current.revision if st.current else 0, files_digest=st.files_digest,
            created_at=st.params.get("packager.created_at", ""),
            model_uri=st.params.get("packager.model_uri", ""),
        )

    def verify_artifact(self, name: str, version: int | str, model_dir: str | os.PathLike | None = None) -> VerifyResult:
        """Check a model directory (default: the registered location) against the registered sha256 of every
        file; raise IntegrityError naming each missing, altered or unexpected file."""
        state = self._state(name, version)
        files: dict[str, str] = {}
        try:
            manifest = self._download_json(state.run.info.run_id, f"model/{MANIFEST_NAME}")
            files = dict(manifest.get("files", {}))
        except RegistryError as e:
            raise IntegrityError(f"The registered file hashes of {state.name} version {state.version} cannot be "
                                 f"read: {e}") from None
        if not files or tree_digest(files) != state.files_digest:
            raise IntegrityError(
                f"The registered file list of {state.name} version {state.version} (model/{MANIFEST_NAME}) was "
                f"modified after registration: it hashes to {tree_digest(files)[:12]}, the write-once record says "
                f"{state.files_digest[:12]}. The registry entry itself is not trustworthy; re-register the model.")
        mdir = Path(model_dir if model_dir is not None else state.params.get("packager.model_uri", "")).expanduser()
        if not mdir.is_dir():
            raise IntegrityError(f"Model directory {mdir} of {state.name} version {state.version} does not exist; "
                                 "pass the directory to check (--model-dir) or restore the files.")
        problems = diff_files(files, hash_tree(mdir))
        if problems:
            raise IntegrityError(
                f"{mdir} does not match {state.name} version {state.version} ({len(problems)} problem(s)): "
                + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
                + ". The files changed after registration: restore them, or register the new files as a new version.")
        return VerifyResult(name=state.name, version=state.version, model_dir=str(mdir), files_checked=len(files),
                            files_digest=state.files_digest)


# ----------------------------------------------------------------------------------------------- helpers

def _revision_value(sha: str, at: str, summary: ResultsSummary) -> str:
    s = summary.model_dump(mode="json")
    value = canonical_json({"sha256": sha, "at": at, "summary": s})
    if len(value) > MAX_PARAM_CHARS:  # many tags: keep the headline numbers only
        s["tag_scores"] = {}
        value = canonical_json({"sha256": sha, "at": at, "summary": s})
    return value


_METRIC_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def _metric_key(key: str) -> str:
    return _METRIC_BAD.sub("_", key)[:250]


def _metrics_of(results: dict[str, Any], summary: ResultsSummary) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for kind in ("eval", "behaviour", "loadtest", "cost"):
        metrics.update(flatten_numbers(results.get(kind), kind))
    s = summary.model_dump(mode="json")
    for k, v in s.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[f"summary.{k}"] = float(v)
    return dict(list(metrics.items())[:3000])
