"""llama-server's build cache: a build is reused only for the same inputs, whole and runnable; anything else
builds afresh and keeps the new build."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from packager.engines import llama_server_build as lsb
from packager.fsutil import sha256_file


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "llama.cpp"
    (src / "tools" / "server").mkdir(parents=True)
    (src / "tools" / "server" / "server.cpp").write_text("int main() { return 0; }\n")
    (src / "CMakeLists.txt").write_text("project(llama)\n")
    return src


def _fake_binary(path: Path, exit_code: int = 0, text: str = "version: 1") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{text}'\nexit {exit_code}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def no_tools_needed(monkeypatch):
    monkeypatch.setattr(lsb.shutil, "which", lambda tool: f"/usr/bin/{tool}")


def test_the_key_changes_with_each_input_and_only_then(tmp_path):
    src = _src(tmp_path)
    base = {"source_sha256": lsb.source_digest(src), "cmake_flags": " ".join(lsb.CMAKE_FLAGS), "target": lsb.BINARY,
            "compiler": "c++ 12.2.0", "cmake": "cmake 3.25.1", "machine": "x86_64", "cpu_flags": "avx avx2"}
    root = tmp_path / "cache"
    key = lsb.cache_dir_for(base, root)
    assert key == lsb.cache_dir_for(dict(base), root) and key.parent == root
    assert lsb.source_digest(src) == base["source_sha256"]  # the same tree, the same digest
    for field, other in (("cmake_flags", "-DGGML_NATIVE=OFF"), ("compiler", "c++ 13.1.0"), ("cmake", "cmake 3.28"),
                         ("machine", "aarch64"), ("cpu_flags", "avx avx2 avx512f")):
        assert lsb.cache_dir_for({**base, field: other}, root) != key, field
    (src / "tools" / "server" / "server.cpp").write_text("int main() { return 1; }\n")
    assert lsb.source_digest(src) != base["source_sha256"]  # one changed source file changes the key
    (src / "tools" / "server" / "server.cpp").write_text("int main() { return 0; }\n")
    (src / "tools" / "server" / "renamed.cpp").write_text("")
    assert lsb.source_digest(src) != base["source_sha256"]  # so does a new file


def test_the_compilers_from_the_environment_are_part_of_the_key(tmp_path):
    src = _src(tmp_path)
    plain = lsb.cache_inputs(src, environ={})
    assert plain == lsb.cache_inputs(src, environ={"UNRELATED": "1"})
    for var in ("CC", "CXX", "CFLAGS", "CXXFLAGS", "LDFLAGS"):
        changed = lsb.cache_inputs(src, environ={var: "x"})
        assert lsb.cache_dir_for(changed, tmp_path) != lsb.cache_dir_for(plain, tmp_path), var


def test_a_cached_build_is_installed_without_compiling(tmp_path, monkeypatch, no_tools_needed):
    src, dest, cache = _src(tmp_path), tmp_path / "venv" / "bin", tmp_path / "cache" / "k"
    built = _fake_binary(tmp_path / "first" / lsb.BINARY)
    lsb.store(cache, built, log=lambda m: None)
    assert json.loads((cache / "build.json").read_text())["binary_sha256"] == sha256_file(built)

    def must_not_compile(*a, **k):
        raise AssertionError("compiled although the cache holds this build")

    monkeypatch.setattr(lsb, "compile_and_install", must_not_compile)
    lines: list[str] = []
    out = lsb.build(src, dest, tmp_path / "b", 2, log=lines.append, cache=cache)
    assert out == dest / lsb.BINARY and out.read_bytes() == built.read_bytes()
    assert out.stat().st_mode & 0o111  # executable
    assert any("reused the build" in m for m in lines), lines
    assert not list(dest.glob(".*partial"))


@pytest.mark.parametrize("damage", ["tampered", "does_not_run", "no_record"])
def test_a_damaged_cache_entry_is_rebuilt_and_replaced(tmp_path, monkeypatch, no_tools_needed, damage):
    src, dest, cache = _src(tmp_path), tmp_path / "venv" / "bin", tmp_path / "cache" / "k"
    lsb.store(cache, _fake_binary(tmp_path / "first" / lsb.BINARY, text="old"), log=lambda m: None)
    if damage == "tampered":
        _fake_binary(cache / lsb.BINARY, text="changed after it was kept")
    elif damage == "does_not_run":
        _fake_binary(cache / lsb.BINARY, exit_code=3)
        (cache / "build.json").write_text(json.dumps({"binary_sha256": sha256_file(cache / lsb.BINARY)}))
    else:
        (cache / "build.json").unlink()
    compiled: list[Path] = []

    def fake_compile(src_, dest_, build_dir, jobs, log=print):
        compiled.append(src_)
        return _fake_binary(dest_ / lsb.BINARY, text="new")

    monkeypatch.setattr(lsb, "compile_and_install", fake_compile)
    lines: list[str] = []
    out = lsb.build(src, dest, tmp_path / "b", 2, log=lines.append, cache=cache)
    assert compiled == [src]
    assert "new" in out.read_text()
    # the fresh build replaced the damaged entry, and the next install takes it from there
    assert (cache / lsb.BINARY).read_bytes() == out.read_bytes()
    assert json.loads((cache / "build.json").read_text())["binary_sha256"] == sha256_file(out)
    if damage != "no_record":
        assert any("building afresh" in m for m in lines), lines
    monkeypatch.setattr(lsb, "compile_and_install", lambda *a, **k: pytest.fail("compiled twice"))
    assert "new" in lsb.build(src, tmp_path / "other" / "bin", tmp_path / "b", 2, log=lambda m: None,
                              cache=cache).read_text()


def test_without_a_cache_it_always_compiles(tmp_path, monkeypatch, no_tools_needed):
    src, dest = _src(tmp_path), tmp_path / "bin"
    calls: list[int] = []
    monkeypatch.setattr(lsb, "compile_and_install",
                        lambda s, d, b, j, log=print: calls.append(1) or _fake_binary(d / lsb.BINARY))
    lsb.build(src, dest, tmp_path / "b", 2, log=lambda m: None, cache=None)
    lsb.build(src, dest, tmp_path / "b", 2, log=lambda m: None, cache=None)
    assert calls == [1, 1]


def test_an_unwritable_cache_costs_only_the_next_build(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would go")
    lines: list[str] = []
    lsb.store(blocker / "k", _fake_binary(tmp_path / lsb.BINARY), log=lines.append)
    assert any("could not keep the build" in m for m in lines), lines


def test_the_cli_uses_the_cache_in_packagers_home_unless_told_not_to(tmp_path, monkeypatch):
    src = _src(tmp_path)
    monkeypatch.setenv("PACKAGER_HOME", str(tmp_path / "home"))
    seen: list[Path | None] = []
    monkeypatch.setattr(lsb, "build", lambda s, d, b, j, log=print, cache=None: seen.append(cache))
    lsb.main([str(src), str(tmp_path / "bin")])
    lsb.main([str(src), str(tmp_path / "bin"), "--no-cache"])
    assert seen[0] is not None and seen[0].parent == tmp_path / "home" / "build-cache" / lsb.BINARY
    assert seen[1] is None
