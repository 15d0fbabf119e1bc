import pytest

from packager.errors import ConfigError, IntegrityError, ModelNotFoundError
from packager.fsutil import atomic_dir, refuse_pickled_weights, safe_join, verify_manifest, write_manifest
from packager.core.sources import resolve_model


def test_manifest_detects_tampering(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text("{}")
    m = write_manifest(tmp_path)
    assert set(m["files"]) == {"a.safetensors", "config.json"}
    verify_manifest(tmp_path)
    (tmp_path / "a.safetensors").write_bytes(b"weightz")
    with pytest.raises(IntegrityError, match="sha256 mismatch: a.safetensors"):
        verify_manifest(tmp_path)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as d:
            (d / "half").write_text("x")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(final) as d:
        (d / "whole").write_text("x")
    assert (final / "whole").read_text() == "x"


def test_safe_join_refuses_escape(tmp_path):
    assert safe_join(tmp_path, "a/b.txt") == (tmp_path / "a/b.txt").resolve()
    with pytest.raises(ConfigError, match="escapes"):
        safe_join(tmp_path, "../etc/passwd")


def test_pickled_weights_refused_unless_allowed(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="pickled"):
        refuse_pickled_weights(tmp_path)
    refuse_pickled_weights(tmp_path, allow_pickle=True)


def test_resolve_model_errors_are_specific(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(tmp_path)
    with pytest.raises(ModelNotFoundError, match="not in the local cache"):
        resolve_model("nobody-here/no-such-model")
    with pytest.raises(ModelNotFoundError, match="not a Hugging Face id"):
        resolve_model("./missing/dir/x")


def test_iter_record_file_skips_blank_cut_and_non_object_lines(tmp_path):
    from packager.fsutil import iter_record_file

    p = tmp_path / "records.jsonl"
    assert list(iter_record_file(p)) == []  # not written yet
    p.write_text('{"type": "request", "ok": true}\n\n[1, 2]\n{"type": "phase_summary"}\n{"type": "requ')
    assert list(iter_record_file(p)) == [{"type": "request", "ok": True}, {"type": "phase_summary"}]
