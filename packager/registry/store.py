"""ModelRegistry: every compressed variant as an MLflow registered model version, with lineage, file hashes,
results, and an append-only hash-chained approval history.

What is written where is described in packager.registry.documents; names and URIs are in
packager.registry.names; the MLflow calls underneath are in packager.registry.backend.
MLflow is imported only inside methods: importing this module stays cheap.
"""
from __future__ import annotations

import builtins
import contextlib
import io
import os
from pathlib import Path
from typing import Any, Callable

from packager.errors import ConfigError, IntegrityError
from packager.fsutil import hash_tree, tree_digest
from packager.registry.backend import MlflowBackend
from packager.registry.chain import (
    GENESIS,
    MAX_BY_CHARS,
    MAX_REASON_CHARS,
    approval_key,
    entry_text,
    make_entry,
    now_utc,
)
from packager.registry.documents import (  # noqa: F401 - some names re-exported (defined here before the split)
    MANIFEST_ARTIFACT,
    MAX_PARAM_CHARS,
    RECORD_ARTIFACT,
    RESULT_ARGS,
    RESULTS_PREFIX,
    SCHEMA_VERSION,
    RegistrationDocuments,
    VariantRegistration,
    approval_results_artifact,
    check_inputs,
    diff_files,
    metrics_of,
    recipe_label,
    registration_documents,
    results_artifact,
    revision_value,
)
from packager.registry.errors import RegistryError, TamperedHistoryError
from packager.registry.names import (  # noqa: F401 - some names re-exported (defined here before the split)
    ENV_URI,
    default_registry_uri,
    name_filter,
    parse_parent,
    registry_config,
    resolve_registry_uri,
    run_name,
    sqlite_path,
    validate_name,
    validate_version,
    version_run_name,
    version_source,
)
from packager.registry.records import (
    RESULT_KINDS,
    ApprovalEntry,
    ApprovalHistory,
    Decision,
    ResultsRevision,
    ResultsSummary,
    VariantRecord,
    VerifyResult,
    VersionSummary,
)
from packager.registry.results import canonical_json, digest, results_document, root_summary, summarize
from packager.registry.state import VersionState

APPROVED_ALIAS = "approved"  # models:/NAME@approved: the version approved last


class ModelRegistry(MlflowBackend):
    """A registry of compressed model variants backed by an MLflow tracking server / model registry.

    `uri`: an MLflow tracking URI (http(s)://host:port for a shared server, sqlite:///path.db, ...); None picks
    $PACKAGER_REGISTRY_URI, $MLFLOW_TRACKING_URI, then the embedded store <packager home>/registry/mlflow.db.
    """

    @classmethod
    def from_config(cls, cfg: Any) -> "ModelRegistry":
        """From a RunConfig (its `registry:` section) or that section as a dict; unknown keys are refused."""
        rc = registry_config(cfg)
        return cls(rc.uri, log_artifacts=rc.log_artifacts)

    def _state(self, name: str, version: int | str) -> VersionState:
        name, v = validate_name(name), validate_version(version)
        mv = self._model_version(name, v)
        if (mv.tags or {}).get("packager.schema") is None or not mv.run_id:
            raise RegistryError(f"{name} version {v} in {self.uri} was not registered by packager (it has no "
                                "packager.schema tag or no run); register the model directory with "
                                "`packager registry register`.")
        run = self._call(f"read the run of {name} version {v}", self.client.get_run, mv.run_id)
        return VersionState(name, v, mv, run)

    # ---------------------------------------------------------------- lineage and summaries
    def _root_score(self, state: VersionState,
                    cache: dict[tuple[str, int], VersionState] | None = None) -> tuple[float | None, str | None]:
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

    def _parent_root(self, parent: tuple[str, int] | None) -> tuple[float | None, str | None]:
        """For a new version with `parent`: the task score (and label) of its lineage root."""
        if parent is None:
            return None, None
        pstate = self._state(*parent)  # must exist and be a packager version
        if pstate.parent is None:
            return (pstate.current.summary.task_score if pstate.current else None,
                    f"root {pstate.name} version {pstate.version}")
        return self._root_score(pstate)

    def _summary(self, state: VersionState, cache: dict | None = None) -> ResultsSummary:
        """The current summary, with the recovery taken from the lineage root when the results carry none."""
        cur = state.current
        if cur is None:
            return ResultsSummary()
        s = cur.summary
        if s.recovery is None and s.task_score is not None:
            if state.parent is None:
                return root_summary(s)
            root, label = self._root_score(state, cache)
            if root is not None and root > 0:
                return s.model_copy(update={"baseline_score": root, "recovery": s.task_score / root,
                                            "recovery_source": label})
        return s

    def _verify_documents(self, state: VersionState) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
        """Download record, current results and manifest; add a problem for each one that fails its anchor."""
        run_id = state.run_id
        record: dict[str, Any] = {}
        results: dict[str, Any] = {}
        files: dict[str, str] = {}
        try:
            record = self._download_json(run_id, RECORD_ARTIFACT)
            anchor = state.params.get("packager.record_sha256")
            if digest(record) != anchor:
                state.problems.append(f"{RECORD_ARTIFACT} was modified after registration (sha256 "
                                      f"{digest(record)[:12]} != recorded {str(anchor)[:12]})")
        except RegistryError as e:
            state.problems.append(f"{RECORD_ARTIFACT} cannot be read: {e}")
        if state.current is not None:
            path = results_artifact(state.current.sha256)
            try:
                results = self._download_json(run_id, path)
                if digest(results) != state.current.sha256:
                    state.problems.append(f"{path} (results revision {state.current.revision}) was modified: it "
                                          f"hashes to {digest(results)[:12]}")
            except RegistryError as e:
                state.problems.append(f"{path} cannot be read: {e}")
        try:
            manifest = self._download_json(run_id, MANIFEST_ARTIFACT)
            files = dict(manifest.get("files", {}))
            if tree_digest(files) != state.files_digest:
                state.problems.append(f"{MANIFEST_ARTIFACT} was modified after registration (its files hash to "
                                      f"{tree_digest(files)[:12]}, recorded {state.files_digest[:12]})")
        except RegistryError as e:
            state.problems.append(f"{MANIFEST_ARTIFACT} cannot be read: {e}")
        return record, results, files

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

    # ---------------------------------------------------------------- registration
    def register_variant(self, record: VariantRegistration, *,
                         progress: Callable[[str], None] | None = None) -> int:
        """Register `record.model_dir` as a new version of `record.name`; return the version number.

        The files are hashed (and checked against the directory's packager-manifest.json when it has one);
        the weights are NOT copied into MLflow unless record.log_artifacts (or, when that is None, the
        registry's log_artifacts) is true: the version records the directory's location and the sha256 of every
        file. `progress` receives a line per step (for a status display).
        """
        say = progress or (lambda _m: None)
        model, parent = check_inputs(record, say)
        results = record.results_document()
        use_artifacts = self.log_artifacts if record.log_artifacts is None else record.log_artifacts
        root_score, root_label = self._parent_root(parent)
        docs = registration_documents(record, model, parent, results, use_artifacts, root_score, root_label)
        name = record.name
        exp_id = self._experiment_id(name)
        self._ensure_registered_model(name, record.source_model)
        run = self._call("create a run", self.client.create_run, exp_id, run_name=run_name(name, docs.label),
                         tags=docs.run_tags)
        run_id = run.info.run_id
        try:
            version = self._write_version(name, run_id, model.path, docs, say)
        except BaseException:
            with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
                self.client.set_terminated(run_id, "FAILED")
                self.client.delete_run(run_id)
            raise
        say(f"registered {name} version {version}")
        return version

    def _write_version(self, name: str, run_id: str, mdir: Path, docs: RegistrationDocuments,
                       say: Callable[[str], None]) -> int:
        """Write a registration's documents, params and metrics into its run, then create the model version."""
        if docs.upload:
            say(f"uploading the model files ({docs.size_bytes / 1e6:.1f} MB) to MLflow")
            self._call("upload the model files", self.client.log_artifacts, run_id, str(mdir), "model")
        say("recording documents, params and metrics")
        self._log_json_artifacts(run_id, docs.artifacts)
        from mlflow.entities import Param

        plist = [Param(k, v) for k, v in docs.anchors.items()]
        for p in plist:
            if len(p.value) > MAX_PARAM_CHARS:
                raise ConfigError(f"{p.key} is {len(p.value)} characters; MLflow keeps at most {MAX_PARAM_CHARS}.")
        self._call("record the registration", self.client.log_batch, run_id, params=plist)
        self._log_display(run_id, docs.display, docs.metrics, step=1)
        mv = self._call(f"create a version of {name}", self.client.create_model_version, name,
                        version_source(run_id), run_id=run_id, tags=docs.version_tags, description=docs.description)
        version = int(mv.version)
        self._call("tag the run", self.client.set_tag, run_id, "packager.registry_version", str(version))
        with contextlib.suppress(Exception):
            self.client.update_run(run_id, name=version_run_name(name, version))
        with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints "View run ..." links on stdout
            self._call("finish the run", self.client.set_terminated, run_id, "FINISHED")
        return version

    # ---------------------------------------------------------------- results and decisions
    def update_results(self, name: str, version: int | str, **results: Any) -> ResultsRevision:
        """Record new results (eval_results=, behaviour_results=, loadtest_results=, cost_results=; kinds not
        given are kept). A change of results makes an earlier approval stale. Returns the current revision."""
        if not results:
            raise ConfigError("update_results needs at least one of: " + ", ".join(sorted(set(RESULT_ARGS))))
        new: dict[str, Any] = {}
        for k, v in results.items():
            if k not in RESULT_ARGS:
                raise ConfigError(f"Unknown results kind {k!r}; known: {', '.join(sorted(RESULT_ARGS))}.")
            new[RESULT_ARGS[k]] = v
        for _attempt in range(8):
            state, current = self._verified_state(name, version, "update the results of",
                                                  "Investigate before changing it.")
            doc = results_document(**{k: new.get(k, current.get(k)) for k in RESULT_KINDS})
            sha = digest(doc)
            if sha == state.results_digest:
                return state.current
            n = state.current.revision + 1 if state.current else 1
            at = now_utc()
            summary = summarize(doc)
            run_id = state.run_id
            self._log_json_artifacts(run_id, {results_artifact(sha): doc})
            if not self._log_params_write_once(run_id, f"{RESULTS_PREFIX}{n:04d}", revision_value(sha, at, summary)):
                continue  # someone else recorded revision n first: merge onto theirs
            state = self._state(name, version)
            shown = self._summary(state)
            self._log_display(run_id, {}, metrics_of(doc, shown), step=n)
            rev = ResultsRevision(revision=n, sha256=sha, at=at, summary=shown)
            status, _ = state.status()
            self._tag_version(state.name, state.version, {
                "packager.results_revision": str(n), "packager.results_digest": sha,
                "packager.summary": canonical_json(shown.model_dump(mode="json")), "packager.status": status})
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
            raise ConfigError(f"A {decision[:-1]}al needs a reason: pass --reason (e.g. 'recovery 0.97, refusal "
                              "unchanged').")
        if len(by) > MAX_BY_CHARS or len(reason) > MAX_REASON_CHARS:
            raise ConfigError(f"--by is limited to {MAX_BY_CHARS} characters and --reason to {MAX_REASON_CHARS}; "
                              f"got {len(by)} and {len(reason)}. Put long reviews in a document and link it.")
        for _attempt in range(8):
            state, results = self._verified_state(name, version, "record a decision on",
                                                  "Investigate (and re-register the artifact) first.")
            summary = self._summary(state)
            run_id = state.run_id
            if state.entries and approval_key(state.entries[-1].seq) not in state.tags:
                # the previous decision's param is there but not yet its tag (in progress or interrupted):
                # write the visible copy from the write-once record, so the history stays complete
                last_key = approval_key(state.entries[-1].seq)
                self._tag_version(state.name, state.version, {last_key: state.params[last_key]})
            self._log_json_artifacts(run_id, {approval_results_artifact(state.results_digest): results})
            seq = len(state.entries) + 1
            entry_summary = summary.model_dump(mode="json", exclude={"tag_scores"})
            entry = make_entry(seq, decision, by, reason, state.current.revision, state.results_digest,
                               state.files_digest, ResultsSummary.model_validate(entry_summary),
                               state.entries[-1].hash if state.entries else GENESIS)
            text = entry_text(entry)
            if not self._log_params_write_once(run_id, approval_key(seq), text):
                continue  # another decision took this sequence number: re-read and link after it
            self._tag_version(state.name, state.version, {approval_key(seq): text})
            state = self._state(name, version)
            status, _ = state.status()
            self._tag_version(state.name, state.version, {"packager.status": status})
            self._move_approved_alias(state.name, state.version, status == "approved")
            return entry
        raise RegistryError(f"Could not record the decision on {name} version {version}: other decisions kept "
                            "arriving at the same time; try again.")

    def _move_approved_alias(self, name: str, version: int, approved: bool) -> None:
        """`models:/NAME@approved` names the version approved last; a rejection of that version removes it."""
        if approved:
            self._call("set the alias 'approved'", self.client.set_registered_model_alias, name, APPROVED_ALIAS,
                       str(version))
            return
        try:
            current = self.client.get_model_version_by_alias(name, APPROVED_ALIAS)
        except Exception:  # noqa: BLE001 - no such alias (MLflow raises its own error type)
            return
        if str(current.version) == str(version):
            self._call("remove the alias 'approved'", self.client.delete_registered_model_alias, name,
                       APPROVED_ALIAS)

    # ---------------------------------------------------------------- reading
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
        path = approval_results_artifact(entry.results_digest)
        doc = self._download_json(state.run_id, path)
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
            name=state.name, version=state.version, registry_uri=self.uri, run_id=state.run_id,
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
        flt = name_filter(validate_name(name)) if name else None
        mvs: list[Any] = []
        token = None
        while True:
            page = self._call("search model versions", self.client.search_model_versions, flt, max_results=1000,
                              page_token=token)
            mvs.extend(page)
            token = getattr(page, "token", None)
            if not token:
                break
        cache: dict[tuple[str, int], VersionState] = {}
        out: list[VersionSummary] = []
        for mv in sorted(mvs, key=lambda m: (m.name, int(m.version))):
            if (mv.tags or {}).get("packager.schema") is None:
                continue
            key = (mv.name, int(mv.version))
            if key not in cache:
                run = self._call("read a run", self.client.get_run, mv.run_id)
                cache[key] = VersionState(mv.name, int(mv.version), mv, run)
            out.append(self._row(cache[key], cache))
        return out

    def lineage(self, name: str, version: int | str) -> builtins.list[VersionSummary]:
        """The version and its ancestors, root (baseline) first."""
        chain: list[VersionState] = []
        cache: dict[tuple[str, int], VersionState] = {}
        cur: VersionState | None = self._state(name, version)
        while cur is not None and len(chain) < 64:
            chain.append(cur)
            cache[(cur.name, cur.version)] = cur
            parent = parse_parent(cur.parent, cur.name) if cur.parent else None
            cur = self._state(*parent) if parent else None
        return [self._row(st, cache) for st in reversed(chain)]

    def _row(self, st: VersionState, cache: dict) -> VersionSummary:
        status, _ = st.status()
        return VersionSummary(
            name=st.name, version=st.version, parent=st.parent,
            source_model=st.params.get("packager.source_model", ""),
            recipe=st.params.get("packager.recipe", ""), status=status, summary=self._summary(st, cache),
            results_revision=st.current.revision if st.current else 0, files_digest=st.files_digest,
            created_at=st.params.get("packager.created_at", ""),
            model_uri=st.params.get("packager.model_uri", ""),
        )

    def verify_artifact(self, name: str, version: int | str,
                        model_dir: str | os.PathLike | None = None) -> VerifyResult:
        """Check a model directory (default: the registered location) against the registered sha256 of every
        file; raise IntegrityError naming each missing, altered or unexpected file."""
        state = self._state(name, version)
        files: dict[str, str] = {}
        try:
            manifest = self._download_json(state.run_id, MANIFEST_ARTIFACT)
            files = dict(manifest.get("files", {}))
        except RegistryError as e:
            raise IntegrityError(f"The registered file hashes of {state.name} version {state.version} cannot be "
                                 f"read: {e}") from None
        if not files or tree_digest(files) != state.files_digest:
            raise IntegrityError(
                f"The registered file list of {state.name} version {state.version} ({MANIFEST_ARTIFACT}) was "
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
