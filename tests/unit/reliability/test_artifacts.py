"""Artifacts: only safetensors weights are read, recorded file names cannot point outside their directory.

(That a bento refuses to start when its model files no longer match their hashes is proven against a real
`bentoml serve` in tests/integration/test_serve_bento.py::test_tampered_model_is_refused_before_the_backend_starts.)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from packager.errors import ConfigError, IntegrityError
from packager.fsutil import (MANIFEST_NAME, hash_tree, is_inside_relpath, refuse_pickled_weights, safe_join,
                             sha256_file, tree_digest, verify_files, write_manifest)

PICKLE_NAMES = ["pytorch_model.bin", "model.pt", "weights.pth", "state.pkl", "last.ckpt"]


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----- pickled weights ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PICKLE_NAMES)
def test_refuse_pickled_weights_names_the_file(tmp_path, name):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    (tmp_path / name).write_bytes(b"\x80\x04K\x01.")  # pickle of the int 1; never loaded
    with pytest.raises(IntegrityError, match=rf"pickled weight files \['{name}'\]; pickles can run arbitrary code"):
        refuse_pickled_weights(tmp_path)
    refuse_pickled_weights(tmp_path, allow_pickle=True)  # explicitly allowed: no error


def test_safetensors_only_directory_passes(tiny_llama_dir):
    refuse_pickled_weights(tiny_llama_dir)


def test_compression_weight_files_refuses_pickles_and_empty_dirs(tiny_llama_dir, tmp_path):
    from packager.compress.checkpoint import weight_files

    assert [p.name for p in weight_files(tiny_llama_dir)] == ["model.safetensors"]
    d = _copy_model(tiny_llama_dir, tmp_path / "m")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(IntegrityError, match=r"pickled weight files \['pytorch_model.bin'\]; packager reads and "
                                             r"writes safetensors only"):
        weight_files(d)
    only_config = tmp_path / "empty"
    only_config.mkdir()
    (only_config / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds no \\*.safetensors weight files"):
        weight_files(only_config)


def test_packager_compress_refuses_a_model_with_pickled_weights(tiny_llama_dir, tmp_path):
    d = _copy_model(tiny_llama_dir, tmp_path / "pickled")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    out = tmp_path / "out"
    cp = subprocess.run([sys.executable, "-m", "packager.cli", "compress", str(d), "--recipe", "w8a8-int8",
                         "--no-eval", "--out", str(out)], capture_output=True, text=True, timeout=120,
                        env={**os.environ, "COLUMNS": "400"})
    assert cp.returncode == IntegrityError.exit_code == 3, (cp.returncode, cp.stderr[-2000:])
    assert "pickled weight files ['pytorch_model.bin']" in cp.stderr
    assert "Traceback" not in cp.stderr
    assert not out.exists()


def test_bento_import_refuses_pickled_weights(tiny_llama_dir, tmp_path):
    from packager.serve.store import read_variant

    d = tmp_path / "pickle-only"
    d.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_llama_dir / name).exists():
            shutil.copy(tiny_llama_dir / name, d / name)
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(IntegrityError, match="pickled"):
        read_variant(d, log=lambda _m: None)


# ----- recorded names that escape their directory -----------------------------------------------------------------
@pytest.mark.parametrize("rel, inside", [
    ("model.safetensors", True), ("sub/dir/file.json", True), ("./a", True),
    ("../secret", False), ("sub/../../secret", False), ("/etc/passwd", False), ("", False), (".", False),
    ("a/\x00b", False),
])
def test_is_inside_relpath(rel, inside):
    assert is_inside_relpath(rel) is inside


def test_verify_files_refuses_recorded_names_outside_the_directory(tmp_path):
    root = tmp_path / "variant"
    root.mkdir()
    (root / "w.safetensors").write_bytes(b"abc")
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    files = hash_tree(root)
    verify_files(root, files)  # the honest list verifies
    for evil in ("../secret.txt", str(secret)):
        with pytest.raises(IntegrityError, match=r"path outside the directory: '" + evil.replace(".", r"\.")):
            verify_files(root, {**files, evil: sha256_file(secret)})


def test_bento_import_refuses_a_manifest_that_lists_files_outside_the_variant(tiny_llama_dir, tmp_path):
    """A tampered packager-manifest.json listing '../secret.txt' (with its true hash) passed every check
    before, and `packager build` copied that host file into the bento's model folder."""
    from packager.serve.store import read_variant

    d = _copy_model(tiny_llama_dir, tmp_path / "variant")
    (d / MANIFEST_NAME).unlink(missing_ok=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    files = hash_tree(d)
    files["../secret.txt"] = sha256_file(secret)
    (d / MANIFEST_NAME).write_text(json.dumps({"files": files, "digest": tree_digest(files), "name": "evil"}))
    with pytest.raises(IntegrityError, match=r"path outside the directory: '\.\./secret\.txt'"):
        read_variant(d, log=lambda _m: None)
    # the honest manifest still reads
    (d / MANIFEST_NAME).unlink()
    write_manifest(d, {"name": "honest"})
    assert read_variant(d, log=lambda _m: None).name == "honest"


def test_reused_compression_stage_with_escaping_record_is_not_trusted(tiny_llama_dir, tmp_path):
    """A stage directory whose stage.json lists a file outside it is redone, never reused."""
    from packager.compress.int8 import W8A8Int8Args
    from packager.compress.recipe import _reusable

    stage = _copy_model(tiny_llama_dir, tmp_path / "01-w8a8_int8")
    (tmp_path / "outside.txt").write_text("x")
    args = W8A8Int8Args()
    honest = hash_tree(stage)

    def write_record(files):
        record = {"schema_version": 1, "index": 1, "label": "01-w8a8_int8", "method": args.kind,
                  "arguments": args.model_dump(mode="json"), "input_dir": "x", "input_digest": "d", "device": "cpu",
                  "wall_time_s": 0.0, "peak_rss_mb": 0.0, "parameter_count": 1, "size_bytes": 1, "files": files,
                  "digest": tree_digest(files), "report": {}, "started_at": "t", "finished_at": "t"}
        (stage / "stage.json").write_text(json.dumps(record))

    write_record(honest)
    assert _reusable(stage, args, "d", None) is not None  # the control: an honest record is reused
    write_record({**honest, "../outside.txt": sha256_file(tmp_path / "outside.txt")})
    assert _reusable(stage, args, "d", None) is None


# ----- safe_join -----------------------------------------------------------------------------------------------
def test_safe_join_keeps_paths_inside(tmp_path):
    (tmp_path / "sub").mkdir()
    assert safe_join(tmp_path, "sub/file.yaml") == (tmp_path / "sub" / "file.yaml").resolve()
    assert safe_join(tmp_path, ".") == tmp_path.resolve()
    for rel in ("../x", "sub/../../x", "/etc/passwd"):
        with pytest.raises(ConfigError, match="escapes its directory"):
            safe_join(tmp_path, rel)
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(ConfigError, match="escapes its directory"):
        safe_join(tmp_path, "link/passwd")
