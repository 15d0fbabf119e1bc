"""The governance scenario on a real MLflow store holding a real (tiny) checkpoint and a real compressed copy.

`run_governance_scenario` is shared with test_registry_server.py, which runs it against an MLflow tracking
server process; here it runs on the embedded SQLite store.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from packager.errors import IntegrityError
from packager.fsutil import read_manifest, write_manifest

pytestmark = pytest.mark.slow

BASE_EVAL = {"score": 0.80, "score_by_tag": {"arithmetic": 0.9, "facts": 0.7}, "n_items": 40}
BASE_BEHAVIOUR = {"score": 0.92, "behaviour": {"refusal_rate": 1.0, "consistency": 0.9}}
VAR_EVAL = {"score": 0.76, "score_by_tag": {"arithmetic": 0.85, "facts": 0.67}, "n_items": 40}
VAR_BEHAVIOUR = {"score": 0.88, "behaviour": {"refusal_rate": 0.95, "consistency": 0.8}}


def make_checkpoints(tiny_llama_dir: Path, out: Path) -> tuple[Path, Path]:
    """The tiny Llama as the baseline, and a real compressed copy: every float32 tensor cast to bfloat16."""
    import torch
    from safetensors.torch import load_file, save_file

    base = out / "baseline"
    shutil.copytree(tiny_llama_dir, base)
    write_manifest(base, {"name": "tiny-llama"})
    var = out / "bf16"
    shutil.copytree(tiny_llama_dir, var)
    for f in var.glob("*.safetensors"):
        tensors = {k: v.to(torch.bfloat16) if v.dtype == torch.float32 else v for k, v in load_file(str(f)).items()}
        save_file(tensors, str(f), metadata={"format": "pt"})
    cfg = json.loads((var / "config.json").read_text())
    cfg["torch_dtype"] = cfg["dtype"] = "bfloat16"
    (var / "config.json").write_text(json.dumps(cfg))
    write_manifest(var, {"name": "tiny-llama-bf16"})
    return base, var


def run_governance_scenario(reg, name: str, base: Path, var: Path, work: Path) -> None:
    from packager.registry import VariantRegistration, check_release_gate, verify_artifact

    v1 = reg.register_variant(VariantRegistration(name, base, source_model="tiny-llama", eval_results=BASE_EVAL,
                                                  behaviour_results=BASE_BEHAVIOUR, run_config={"model": "tiny-llama"}))
    v2 = reg.register_variant(VariantRegistration(
        name, var, source_model="tiny-llama", source_digest=read_manifest(base)["digest"], parent_version=v1,
        recipe=[{"kind": "cast", "dtype": "bfloat16"}],
        stage_records=[{"kind": "cast", "size_bytes_before": 1, "size_bytes_after": 1}],
        eval_results=VAR_EVAL, behaviour_results=VAR_BEHAVIOUR,
        loadtest_results={"output_tokens_per_s": 45.0, "ttft_ms_p95": 310.0},
        cost_results={"usd_per_million_output_tokens": 1.02}))
    assert (v1, v2) == (1, 2)
    rec = reg.get(name, v2)
    assert rec.parent == f"{name}/1" and rec.files == read_manifest(var)["files"]
    assert rec.summary.recovery == pytest.approx(0.95) and rec.summary.refusal == 0.95
    # the compressed copy really is smaller and differs from the baseline file by file
    assert reg.get(name, v1).size_bytes > rec.size_bytes
    assert reg.get(name, v1).files["model.safetensors"] != rec.files["model.safetensors"]

    # decisions and their history
    reg.reject(name, v1, by="alice", reason="baseline: reference only")
    reg.approve(name, v2, by="bob", reason="recovery 95%, refusal 0.95")
    h = reg.history(name, v2)
    assert h.chain_ok and h.status == "approved" and [(e.seq, e.by, e.decision) for e in h.entries] == [(1, "bob", "approved")]
    assert reg.approval_results(name, v2, 1)["eval"] == VAR_EVAL

    # the gate, with its messages
    assert check_release_gate(name, v2, 0.9, registry=reg).allowed
    d = check_release_gate(name, v2, 0.97, registry=reg)
    assert d.reasons == [f"{name} version 2's recovery 0.950 (root {name} version 1) is under the quality floor 0.970."]
    d = check_release_gate(name, v1, 0.9, registry=reg)
    assert d.status == "rejected" and d.reasons[0].startswith(f"{name} version 1 was rejected (state: rejected")

    # results change after approval: the approval is lost until someone approves again
    reg.update_results(name, v2, eval_results={**VAR_EVAL, "score": 0.74})
    d = check_release_gate(name, v2, 0.9, registry=reg)
    assert d.status == "stale" and "approval is stale" in d.reasons[0] and "results changed" in d.reasons[0]
    reg.approve(name, v2, by="bob", reason="0.925 still fine")
    h = reg.history(name, v2)
    assert [e.seq for e in h.entries] == [1, 2] and h.entries[1].prev_hash == h.entries[0].hash
    assert h.entries[1].results_revision == 2
    d = check_release_gate(name, v2, 0.9, registry=reg)
    assert d.allowed and d.recovery == pytest.approx(0.925)

    # the files: the registered ones verify; a modified copy is named
    assert verify_artifact(name, v2, var, registry=reg).files_checked == len(rec.files)
    copy = work / "shipped"
    shutil.copytree(var, copy)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(IntegrityError, match=rf"does not match {name} version 2 .*altered .*model\.safetensors"):
        verify_artifact(name, v2, copy, registry=reg)
    assert not check_release_gate(name, v2, 0.9, registry=reg, model_dir=copy).allowed

    # someone edits the visible history: detected, release refused
    key = "packager.approval.0002"
    entry = json.loads(reg.client.get_model_version(name, str(v2)).tags[key])
    entry["reason"] = "edited afterwards"
    reg.client.set_model_version_tag(name, str(v2), key, json.dumps(entry))
    h = reg.history(name, v2)
    assert h.status == "tampered" and any("packager.approval.0002 was edited" in p for p in h.problems)
    d = check_release_gate(name, v2, 0.9, registry=reg)
    assert not d.allowed and "state: tampered" in d.reasons[0]
    rows = {r.version: r for r in reg.list(name)}
    assert (rows[1].status, rows[2].status) == ("rejected", "tampered")
    assert rows[2].summary.consistency == 0.8 and rows[1].summary.refusal == 1.0


def test_governance_scenario_on_the_embedded_sqlite_store(tiny_llama_dir, tmp_path, monkeypatch):
    from packager.registry import ModelRegistry

    monkeypatch.setenv("PACKAGER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PACKAGER_REGISTRY_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base, var = make_checkpoints(tiny_llama_dir, tmp_path)
    reg = ModelRegistry()  # the embedded default: <packager home>/registry/mlflow.db, artifacts beside it
    assert reg.uri == "sqlite:///" + (tmp_path / "home" / "registry" / "mlflow.db").as_posix()
    run_governance_scenario(reg, "tiny-llama", base, var, tmp_path)
    assert (tmp_path / "home" / "registry" / "mlflow.db").is_file()
    assert any((tmp_path / "home" / "registry" / "artifacts").rglob("record.json"))
    # the weights were not copied into the artifact store
    assert not any((tmp_path / "home" / "registry" / "artifacts").rglob("*.safetensors"))
