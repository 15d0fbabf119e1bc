"""Names and addresses: registry URIs, registered model names, version numbers and references, and the MLflow
names derived from them (experiment, run, model version source). Pure functions; no MLflow import."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from packager.errors import ConfigError
from packager.registry.records import RegistryConfig

ENV_URI = "PACKAGER_REGISTRY_URI"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# ----------------------------------------------------------------------------------------------- registry URIs

def default_registry_uri() -> str:
    from packager.core.sources import packager_home

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
    from packager.core.validation import parse_model

    data = getattr(cfg, "registry", cfg)
    if isinstance(data, RegistryConfig):
        return data
    return parse_model(RegistryConfig, data or {}, "the run configuration's registry section")


# ----------------------------------------------------------------------------------------------- names and versions

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


def version_ref(ref: tuple[str, int] | None) -> str | None:
    """(name, 3) -> "name/3" (how a parent is recorded); None -> None."""
    return f"{ref[0]}/{ref[1]}" if ref else None


# ----------------------------------------------------------------------------------------------- MLflow names

def experiment_name(name: str) -> str:
    """The MLflow experiment holding the runs of registered model `name`."""
    return f"packager/{name}"


def run_name(name: str, label: str) -> str:
    """The name of a registration's run while it is written (`label`: the recipe label, "" for a baseline)."""
    return f"{name}:{label or 'baseline'}"


def version_run_name(name: str, version: int) -> str:
    """The run's name once its model version exists."""
    return f"{name}-v{version}"


def version_source(run_id: str) -> str:
    """The model version's source: the `model` artifact folder of its run."""
    return f"runs:/{run_id}/model"


def name_filter(name: str) -> str:
    """An MLflow search filter for the versions of registered model `name`."""
    return f"name='{name}'"
