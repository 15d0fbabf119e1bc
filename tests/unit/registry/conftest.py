"""Fixtures of the registry tests: one real MLflow SQLite store per session, fake model dirs with real manifests."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from packager.fsutil import write_manifest

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A real MLflow store (SQLite file + local artifact dir) in a temp dir, shared by the registry unit tests."""
    from packager.registry import ModelRegistry

    reg = ModelRegistry(str(tmp_path_factory.mktemp("registry")))
    reg.client  # opens (and migrates) the database once
    return reg


@pytest.fixture
def unique_name(request):
    """A registered model name of this test's own, so tests sharing the store do not see each other."""
    base = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:60].strip("-")
    return f"{base}-{next(_counter)}"


@pytest.fixture
def make_model_dir(tmp_path):
    """make_model_dir("name", weights=b"...") -> a model dir with config.json, model.safetensors, a manifest."""

    def make(name: str, weights: bytes = b"w" * 4096, extra: dict[str, bytes] | None = None) -> Path:
        d = tmp_path / name
        d.mkdir(parents=True)
        (d / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 2}')
        (d / "model.safetensors").write_bytes(weights)
        for rel, data in (extra or {}).items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)
        write_manifest(d, {"name": name})
        return d

    return make
