"""MlflowBackend: the MLflow calls the registry is built on (connection, experiments, registered models and
versions, JSON artifacts, write-once params, display params and metrics), each failure turned into a
RegistryError naming the registry. MLflow is imported only inside methods: importing this module stays cheap."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from packager.errors import ConfigError
from packager.registry.documents import MAX_PARAM_CHARS, SCHEMA_VERSION, metric_key
from packager.registry.errors import RegistryError
from packager.registry.names import experiment_name, name_filter, resolve_registry_uri, sqlite_path

T = TypeVar("T")

_QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration",
                  "mlflow.tracking._tracking_service.utils", "mlflow.store.model_registry.abstract_store")


def short_message(msg: str, limit: int = 400) -> str:
    """The first paragraph of an (MLflow) error message, at most `limit` characters."""
    first = msg.strip().split("\n\n", 1)[0].strip()
    return first if len(first) <= limit else first[:limit] + "..."


class MlflowBackend:
    """An MLflow tracking server / model registry at `uri` (see names.resolve_registry_uri), opened on first use."""

    def __init__(self, uri: str | None = None, *, log_artifacts: bool = False):
        self.uri = resolve_registry_uri(uri)
        self.log_artifacts = log_artifacts
        self._client: Any = None
        db = sqlite_path(self.uri)
        self.artifact_root: Path | None = (db.resolve().parent / "artifacts") if db is not None else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    @property
    def client(self) -> Any:
        if self._client is None:
            import logging

            for lg in _QUIET_LOGGERS:
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
                raise RegistryError(f"Cannot open the MLflow registry at {self.uri}: {short_message(str(e))}. "
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
            raise RegistryError(f"The MLflow registry at {self.uri} refused to {what}: "
                                f"{short_message(e.message)}") from None
        except OSError as e:
            raise RegistryError(f"The MLflow registry at {self.uri} failed to {what}: {e}") from None

    # ---------------------------------------------------------------- experiments, models, versions
    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp_name = experiment_name(name)
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
                                    f"{short_message(e.message)}") from None
        try:
            self.client.create_registered_model(
                name, tags={"packager.schema": str(SCHEMA_VERSION), "packager.source_model": source_model},
                description=f"Variants of {source_model} registered by packager (compressed and baseline).")
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise RegistryError(f"The MLflow registry at {self.uri} refused to create model {name!r}: "
                                    f"{short_message(e.message)}") from None

    def _model_version(self, name: str, version: int) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(f"The MLflow registry at {self.uri} refused to read {name} version "
                                    f"{version}: {short_message(e.message)}") from None
        known = []
        with contextlib.suppress(MlflowException):
            known = sorted(int(mv.version) for mv in self.client.search_model_versions(name_filter(name)))
        if not known:
            raise RegistryError(f"No registered model {name!r} in the registry at {self.uri}. "
                                "See `packager registry list` for the registered names.")
        raise RegistryError(f"{name} has no version {version} in the registry at {self.uri}; its versions are "
                            f"{', '.join(map(str, known))}. See `packager registry list {name}`.")

    def _tag_version(self, name: str, version: int, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._call("tag the version", self.client.set_model_version_tag, name, str(version), k, v)

    # ---------------------------------------------------------------- artifacts, params, metrics
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
            raise RegistryError(f"The MLflow registry at {self.uri} refused to record {key}: "
                                f"{short_message(e.message)}") from None

    def _log_display(self, run_id: str, params: dict[str, str], metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric, Param

        ts = int(time.time() * 1000)
        # keys are sanitised for MLflow; two keys that become one keep the first value (params are write-once)
        pdict: dict[str, str] = {}
        for k, v in params.items():
            pdict.setdefault(metric_key(k), v[:500])
        mdict: dict[str, float] = {}
        for k, value in metrics.items():
            mdict.setdefault(metric_key(k), value)
        plist = [Param(k, v) for k, v in pdict.items()]
        mlist = [Metric(k, v, ts, step) for k, v in mdict.items()]
        for i in range(0, len(plist), 100):
            self._call("log params", self.client.log_batch, run_id, params=plist[i:i + 100])
        for i in range(0, len(mlist), 1000):
            self._call("log metrics", self.client.log_batch, run_id, metrics=mlist[i:i + 1000])
