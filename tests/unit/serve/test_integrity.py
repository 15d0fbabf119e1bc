"""The hash check a bento runs before it starts its backend."""
from __future__ import annotations

from pathlib import Path

import pytest

from packager.errors import IntegrityError
from packager.fsutil import MANIFEST_NAME, hash_tree, tree_digest
from packager.serve.integrity import unexpected_files, verify_model_files


@pytest.fixture()
def model_dir(tmp_path: Path) -> tuple[Path, dict, str]:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"a": 1}')
    (d / "model.safetensors").write_bytes(b"\x00" * 1000)
    (d / "sub").mkdir()
    (d / "sub" / "tok.json").write_text("{}")
    files = hash_tree(d)
    return d, {"files": files}, tree_digest(files)


def test_untouched_files_verify(model_dir):
    d, meta, digest = model_dir
    (d / MANIFEST_NAME).write_text("{}")  # the variant's own manifest may sit beside its files
    verify_model_files(d, meta, digest, "model m:1")


def test_altered_weights_are_named(model_dir):
    d, meta, digest = model_dir
    (d / "model.safetensors").write_bytes(b"\x00" * 999 + b"\x01")
    with pytest.raises(IntegrityError, match=r"sha256 mismatch: model.safetensors"):
        verify_model_files(d, meta, digest, "model m:1")


def test_missing_and_added_files_are_refused(model_dir):
    d, meta, digest = model_dir
    (d / "sub" / "tok.json").unlink()
    with pytest.raises(IntegrityError, match=r"missing: sub/tok.json"):
        verify_model_files(d, meta, digest, "model m:1")
    (d / "sub" / "tok.json").write_text("{}")
    (d / "modeling_evil.py").write_text("import os")
    with pytest.raises(IntegrityError, match=r"not recorded at import: modeling_evil.py"):
        verify_model_files(d, meta, digest, "model m:1")
    assert unexpected_files(d, meta["files"]) == ["modeling_evil.py"]


def test_metadata_edited_to_match_altered_weights_is_caught_by_the_bento_digest(model_dir):
    d, meta, digest = model_dir
    (d / "model.safetensors").write_bytes(b"\x01" * 1000)
    forged = {"files": hash_tree(d)}  # someone also rewrote the hashes in the model store
    with pytest.raises(IntegrityError, match=r"this bento was built for digest " + digest):
        verify_model_files(d, forged, digest, "model m:1")


def test_no_recorded_hashes_cannot_be_verified(model_dir):
    d, _, digest = model_dir
    with pytest.raises(IntegrityError, match="carries no sha256 list"):
        verify_model_files(d, {}, digest, "model m:1")
