"""`packager build --release` runs the release gate before any bento work: unapproved, under-floor or tampered
versions are refused with the gate's message and a non-zero exit; nothing is built."""
from __future__ import annotations

import subprocess
import sys

from packager.registry import VariantRegistration


def build_release(model_dir, name, version, uri, *extra):
    return subprocess.run(
        [sys.executable, "-m", "packager.cli", "build", str(model_dir), "--release", "--registry-name", name,
         "--registry-version", str(version), "--registry-uri", uri, *extra],
        capture_output=True, text=True, timeout=300,
    )


def test_release_build_refuses_unapproved_underfloor_and_tampered(registry, unique_name, make_model_dir, tmp_path):
    base_dir = make_model_dir("base")
    v1 = registry.register_variant(VariantRegistration(unique_name, base_dir, source_model="m",
                                                       eval_results={"score": 0.6}))
    var_dir = make_model_dir("var", weights=b"q" * 1024)
    v2 = registry.register_variant(VariantRegistration(unique_name, var_dir, source_model="m", parent_version=v1,
                                                       eval_results={"score": 0.45, "recovery": 0.75}))

    r = build_release(var_dir, unique_name, v2, registry.uri)
    assert r.returncode != 0
    assert "approved" in r.stderr and f"version {v2}" in r.stderr

    registry.approve(unique_name, v2, by="alice", reason="looks fine")
    r = build_release(var_dir, unique_name, v2, registry.uri, "--quality-floor", "0.9")
    assert r.returncode != 0
    assert "under the quality floor 0.900" in r.stderr

    (var_dir / "model.safetensors").write_bytes(b"tampered")
    r = build_release(var_dir, unique_name, v2, registry.uri, "--quality-floor", "0.5")
    assert r.returncode != 0
    assert "model.safetensors" in r.stderr


def test_release_build_needs_a_registry_version(tmp_path, make_model_dir):
    r = subprocess.run([sys.executable, "-m", "packager.cli", "build", str(make_model_dir("x")), "--release"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "--registry-name and --registry-version" in r.stderr
