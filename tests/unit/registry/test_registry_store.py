"""ModelRegistry against a real MLflow store (SQLite file + local artifacts in a temp dir; no mocks of MLflow)."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

from packager.errors import ConfigError, IntegrityError
from packager.registry import (
    ModelRegistry, RegistryError, ReleaseRefusedError, TamperedHistoryError, VariantRegistration, bento_labels,
    check_release_gate, verify_artifact,
)
from packager.registry.store import resolve_registry_uri

BASE_EVAL = {"score": 0.80, "score_by_tag": {"arithmetic": 0.9, "facts": 0.7}}
BASE_BEHAVIOUR = {"score": 0.9, "behaviour": {"refusal_rate": 1.0, "consistency": 0.9}}
VAR_EVAL = {"score": 0.76, "score_by_tag": {"arithmetic": 0.85, "facts": 0.67}}
VAR_BEHAVIOUR = {"score": 0.85, "behaviour": {"refusal_rate": 0.95, "consistency": 0.8}}
RECIPE = [{"kind": "w8a8-int8", "scheme": "dynamic-per-token"}]
STAGES = [{"kind": "w8a8-int8", "wall_time_s": 3.5, "size_bytes": 2048}]


@pytest.fixture
def pair(registry, unique_name, make_model_dir):
    """A baseline (version 1) and a compressed variant (version 2, parent 1) of a fresh registered model."""
    base = make_model_dir("base", b"b" * 4096)
    var = make_model_dir("w8a8", b"q" * 2048)
    v1 = registry.register_variant(VariantRegistration(
        unique_name, base, source_model="default", source_digest="ab" * 32, eval_results=BASE_EVAL,
        behaviour_results=BASE_BEHAVIOUR, run_config={"model": "default", "quality_floor": 0.9}))
    v2 = registry.register_variant(VariantRegistration(
        unique_name, var, source_model="default", parent_version=v1, recipe=RECIPE, stage_records=STAGES,
        eval_results=VAR_EVAL, behaviour_results=VAR_BEHAVIOUR,
        loadtest_results={"output_tokens_per_s": 487.0, "ttft_ms_p95": 150.0},
        cost_results={"usd_per_million_output_tokens": 0.11}))
    return unique_name, v1, v2, base, var


def test_register_records_lineage_hashes_results_and_environment(registry, pair):
    name, v1, v2, base, var = pair
    assert (v1, v2) == (1, 2)
    rec = registry.get(name, v2)
    manifest = json.loads((var / "packager-manifest.json").read_text())
    assert rec.files == manifest["files"] and rec.files_digest == manifest["digest"]
    assert rec.parent == f"{name}/1" and rec.source_model == "default" and rec.model_uri == str(var)
    assert rec.recipe == RECIPE and rec.stage_records == STAGES
    assert rec.results["eval"] == VAR_EVAL and rec.results["cost"] == {"usd_per_million_output_tokens": 0.11}
    assert rec.environment["packages"]["mlflow"].startswith("3.")
    assert rec.environment["hardware"]["cpu_count"] >= 1
    assert rec.summary.task_score == 0.76 and rec.summary.recovery == pytest.approx(0.95)
    assert rec.summary.recovery_source == f"root {name} version 1"
    assert (rec.summary.refusal, rec.summary.consistency) == (0.95, 0.8)
    assert rec.status == "pending" and rec.history.entries == []
    assert registry.get(name, v1).run_config == {"model": "default", "quality_floor": 0.9}
    assert registry.get(name, v1).source_digest == "ab" * 32


def test_results_are_visible_as_mlflow_metrics_params_and_artifacts(registry, pair):
    name, _, v2, _, _ = pair
    rec = registry.get(name, v2)
    run = registry.client.get_run(rec.run_id)
    assert run.data.metrics["eval.score"] == 0.76
    assert run.data.metrics["behaviour.behaviour.refusal_rate"] == 0.95
    assert run.data.metrics["loadtest.output_tokens_per_s"] == 487.0
    assert run.data.metrics["summary.recovery"] == pytest.approx(0.95)
    assert run.data.params["recipe.0.kind"] == "w8a8-int8"
    assert run.data.params["packager.files_digest"] == rec.files_digest
    assert run.info.status == "FINISHED"
    mv = registry.client.get_model_version(name, str(v2))
    assert mv.source == f"runs:/{rec.run_id}/model" and mv.tags["packager.parent"] == f"{name}/1"
    # the weights are NOT copied by default: only the manifest and the location document
    model_files = sorted(Path(f.path).name for f in registry.client.list_artifacts(rec.run_id, "model"))
    assert model_files == ["location.json", "packager-manifest.json"]
    docs = {f.path for f in registry.client.list_artifacts(rec.run_id, "packager")}
    assert {"packager/record.json", "packager/results"} <= docs


def test_log_artifacts_uploads_the_model_files(registry, unique_name, make_model_dir):
    d = make_model_dir("up", b"u" * 1000, extra={"tokenizer.json": b"{}"})
    v = registry.register_variant(VariantRegistration(unique_name, d, source_model="default", log_artifacts=True))
    rec = registry.get(unique_name, v)
    assert rec.artifacts_logged
    names = sorted(Path(f.path).name for f in registry.client.list_artifacts(rec.run_id, "model"))
    assert names == ["config.json", "location.json", "model.safetensors", "packager-manifest.json", "tokenizer.json"]
    local = registry.client.download_artifacts(rec.run_id, "model/model.safetensors", str(d.parent / "dl"))
    assert Path(local).read_bytes() == b"u" * 1000


def test_register_refuses_a_dir_that_no_longer_matches_its_manifest(registry, unique_name, make_model_dir):
    d = make_model_dir("bad")
    (d / "model.safetensors").write_bytes(b"changed")
    with pytest.raises(IntegrityError, match=r"altered .*model\.safetensors"):
        registry.register_variant(VariantRegistration(unique_name, d, source_model="default"))
    assert registry.list(unique_name) == []


def test_bad_inputs_say_what_to_do(registry, unique_name, make_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="'bad name!' is not valid"):
        registry.register_variant(VariantRegistration("bad name!", tmp_path, source_model="x"))
    with pytest.raises(ConfigError, match="does not exist"):
        registry.register_variant(VariantRegistration(unique_name, tmp_path / "nope", source_model="x"))
    d = make_model_dir("orphan")
    registry.register_variant(VariantRegistration(unique_name, d, source_model="default"))
    with pytest.raises(RegistryError, match=rf"{unique_name} has no version 7 .* versions are 1\b"):
        registry.register_variant(VariantRegistration(unique_name, d, source_model="default", parent_version=7))
    with pytest.raises(RegistryError, match=r"No registered model 'never-registered-xyz'"):
        registry.get("never-registered-xyz", 1)
    with pytest.raises(ConfigError, match="needs a reason"):
        registry.approve(unique_name, 1, by="alice", reason="  ")


def test_approve_reject_history_and_gate(registry, pair):
    name, v1, v2, _, var = pair
    e1 = registry.reject(name, v1, by="alice", reason="baseline is not for release")
    e2 = registry.approve(name, v2, by="bob", reason="recovery 95%, refusal kept")
    assert (e1.seq, e1.decision, e2.seq, e2.decision) == (1, "rejected", 1, "approved")
    hist = registry.history(name, v2)
    assert hist.chain_ok and hist.problems == [] and hist.status == "approved"
    assert [(e.by, e.decision, e.reason) for e in hist.entries] == [("bob", "approved", "recovery 95%, refusal kept")]
    assert hist.entries[0].summary["recovery"] == pytest.approx(0.95)
    assert registry.approval_results(name, v2, 1)["eval"] == VAR_EVAL

    ok = check_release_gate(name, v2, 0.9, registry=registry)
    assert ok.allowed and ok.approved_by == "bob" and ok.raise_if_refused() is ok
    assert "may be released" in ok.message and "recovery 0.950 >= floor 0.900" in ok.message

    low = check_release_gate(name, v2, 0.97, registry=registry)
    assert not low.allowed and low.status == "approved"
    assert low.reasons == [f"{name} version 2's recovery 0.950 (root {name} version 1) is under the quality floor 0.970."]
    with pytest.raises(ReleaseRefusedError, match="under the quality floor 0.970"):
        low.raise_if_refused()

    rej = check_release_gate(name, v1, 0.9, registry=registry)
    assert not rej.allowed and rej.status == "rejected"
    assert rej.reasons[0].startswith(f"{name} version 1 was rejected (state: rejected; rejected by alice")

    # a later approval of the baseline supersedes the rejection and links to it
    e3 = registry.approve(name, v1, by="carol", reason="needed as the reference deployment")
    assert e3.seq == 2 and e3.prev_hash == e1.hash
    assert registry.history(name, v1).status == "approved"

    labels = bento_labels(name, v2, registry=registry)
    assert labels["packager.registry_model"] == name and labels["packager.registry_version"] == "2"
    assert labels["packager.registry_status"] == "approved" and labels["packager.registry_files_sha256"] == ok.files_digest
    assert verify_artifact(name, v2, var, registry=registry).files_checked == 2


def test_pending_and_unscored_versions_are_refused(registry, unique_name, make_model_dir):
    v = registry.register_variant(VariantRegistration(unique_name, make_model_dir("noscore"), source_model="default"))
    d = check_release_gate(unique_name, v, 0.9, registry=registry)
    assert not d.allowed and d.status == "pending" and d.recovery is None
    assert d.reasons[0].startswith(f"{unique_name} version 1 is not approved (state: pending")
    assert "has no recovery recorded" in d.reasons[1] and "0.900" in d.reasons[1]
    with pytest.raises(ConfigError, match="quality_floor must be a recovery ratio"):
        check_release_gate(unique_name, v, 90, registry=registry)


def test_changed_results_make_the_approval_stale_until_reapproved(registry, pair):
    name, _, v2, _, _ = pair
    registry.approve(name, v2, by="bob", reason="ok at 0.95")
    before = registry.get(name, v2)
    rev = registry.update_results(name, v2, eval_results={"score": 0.70})
    assert rev.revision == 2 and rev.sha256 != before.results_digest
    assert rev.summary.recovery == pytest.approx(0.875)
    after = registry.get(name, v2)
    assert after.status == "stale" and after.results["eval"] == {"score": 0.70}
    assert after.results["behaviour"] == VAR_BEHAVIOUR  # kinds not given are kept
    assert "results changed" in after.history.status_detail
    d = check_release_gate(name, v2, 0.8, registry=registry)
    assert not d.allowed and d.status == "stale"
    assert d.reasons[0].startswith(f"{name} version 2's approval is stale (state: stale; approved by bob")
    # the same results again are not a new revision
    assert registry.update_results(name, v2, eval_results={"score": 0.70}).revision == 2
    registry.approve(name, v2, by="bob", reason="re-reviewed at 0.875")
    d = check_release_gate(name, v2, 0.8, registry=registry)
    assert d.allowed and d.recovery == pytest.approx(0.875)
    d = check_release_gate(name, v2, 0.9, registry=registry)
    assert d.reasons == [f"{name} version 2's recovery 0.875 (root {name} version 1) is under the quality floor 0.900."]
    run = registry.client.get_run(after.run_id)
    history = registry.client.get_metric_history(after.run_id, "eval.score")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.76), (2, 0.70)]
    assert run.data.params["packager.results.r0001"] != run.data.params["packager.results.r0002"]
    with pytest.raises(ConfigError, match="Unknown results kind 'accuracy'"):
        registry.update_results(name, v2, accuracy=1.0)
    for other_spelling in ("eval", "behaviour", "behavior_results", "loadtest", "cost"):  # one spelling per kind
        with pytest.raises(ConfigError, match=f"Unknown results kind '{other_spelling}'; known: behaviour_results, "
                                              "cost_results, eval_results, loadtest_results."):
            registry.update_results(name, v2, **{other_spelling: {"score": 0.1}})


def test_modified_missing_and_unexpected_files_are_named(registry, pair):
    name, _, v2, _, var = pair
    assert registry.verify_artifact(name, v2).model_dir == str(var)
    (var / "model.safetensors").write_bytes(b"q" * 2047 + b"!")
    (var / "extra.bin").write_bytes(b"pickle")
    (var / "config.json").unlink()
    with pytest.raises(IntegrityError) as ei:
        registry.verify_artifact(name, v2)
    msg = str(ei.value)
    assert f"does not match {name} version 2 (3 problem(s))" in msg
    assert "missing: config.json" in msg and "altered" in msg and "model.safetensors" in msg
    assert "unexpected (not registered): extra.bin" in msg
    registry.approve(name, v2, by="bob", reason="ok")
    d = check_release_gate(name, v2, 0.9, registry=registry, model_dir=var)
    assert not d.allowed and d.status == "approved" and "missing: config.json" in d.reasons[0]


def test_edited_history_tag_is_detected_and_blocks_release(registry, pair):
    name, _, v2, _, _ = pair
    registry.approve(name, v2, by="bob", reason="ok")
    key = "packager.approval.0001"
    mv = registry.client.get_model_version(name, str(v2))
    forged = json.loads(mv.tags[key])
    forged["by"] = "mallory"
    registry.client.set_model_version_tag(name, str(v2), key, json.dumps(forged))
    hist = registry.history(name, v2)
    assert hist.status == "tampered" and not hist.chain_ok
    # the write-once record (run param) still holds bob's entry; the visible copy no longer matches it
    assert hist.problems == ["entry 1: the model version tag packager.approval.0001 was edited and no longer matches "
                             "the write-once record"]
    assert hist.entries[0].by == "bob"
    d = check_release_gate(name, v2, 0.9, registry=registry)
    assert not d.allowed and d.status == "tampered" and "fails verification (state: tampered)" in d.reasons[0]
    with pytest.raises(TamperedHistoryError, match="Refusing to record a decision"):
        registry.approve(name, v2, by="mallory", reason="cover it up")
    with pytest.raises(TamperedHistoryError, match="Refusing to update the results of .* Investigate before changing it"):
        registry.update_results(name, v2, eval_results={"recovery": 1.0})
    assert [r.status for r in registry.list(name) if r.version == v2] == ["tampered"]


def test_history_params_are_write_once_in_mlflow(registry, pair):
    from mlflow.exceptions import MlflowException

    name, _, v2, _, _ = pair
    registry.approve(name, v2, by="bob", reason="ok")
    run_id = registry.get(name, v2).run_id
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        registry.client.log_param(run_id, "packager.approval.0001", "{}")


def test_modified_stored_results_document_is_detected(registry, pair):
    name, _, v2, _, _ = pair
    registry.approve(name, v2, by="bob", reason="ok")
    rec = registry.get(name, v2)
    # the registry's artifact store is a local directory here: edit the stored document in place
    run_artifacts = Path(urlparse(registry.client.get_run(rec.run_id).info.artifact_uri).path)
    assert registry.artifact_root in run_artifacts.parents
    stored = run_artifacts / "packager" / "results" / f"{rec.results_digest}.json"
    doc = json.loads(stored.read_text())
    doc["eval"]["score"] = 0.99
    stored.write_text(json.dumps(doc))
    again = registry.get(name, v2)
    assert again.status == "tampered"
    assert any("results revision 1) was modified" in p for p in again.history.problems)
    assert not check_release_gate(name, v2, 0.9, registry=registry).allowed


def test_concurrent_decisions_take_distinct_sequence_numbers(registry, pair):
    name, _, v2, _, _ = pair
    regs = [ModelRegistry(registry.uri) for _ in range(4)]
    errors: list[BaseException] = []

    def decide(i: int) -> None:
        try:
            regs[i].approve(name, v2, by=f"user{i}", reason=f"parallel {i}")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    hist = registry.history(name, v2)
    assert hist.chain_ok and hist.problems == [] and [e.seq for e in hist.entries] == [1, 2, 3, 4]
    assert sorted(e.by for e in hist.entries) == ["user0", "user1", "user2", "user3"]
    assert all(b.prev_hash == a.hash for a, b in zip(hist.entries, hist.entries[1:]))


def test_list_shows_behaviour_next_to_task_score(registry, pair):
    name, v1, v2, _, _ = pair
    rows = registry.list(name)
    assert [(r.version, r.parent, r.recipe, r.status) for r in rows] == [(1, None, "", "pending"),
                                                                         (2, f"{name}/1", "w8a8-int8", "pending")]
    base, var = rows[0].summary, rows[1].summary
    assert (base.task_score, base.recovery, base.refusal, base.consistency) == (0.8, 1.0, 1.0, 0.9)
    assert (var.task_score, var.refusal, var.consistency) == (0.76, 0.95, 0.8)
    assert var.recovery == pytest.approx(0.95) and var.usd_per_million_output_tokens == 0.11
    assert [v.version for v in registry.lineage(name, v2)] == [1, 2]
    assert {r.name for r in registry.list()} >= {name}


def test_registry_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("PACKAGER_REGISTRY_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PACKAGER_HOME", str(tmp_path / "home"))
    assert resolve_registry_uri() == "sqlite:///" + (tmp_path / "home" / "registry" / "mlflow.db").as_posix()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_registry_uri() == "http://127.0.0.1:5000"
    monkeypatch.setenv("PACKAGER_REGISTRY_URI", str(tmp_path / "team.db"))
    assert resolve_registry_uri() == "sqlite:///" + (tmp_path / "team.db").as_posix()
    assert resolve_registry_uri("http://mlflow.internal:5000") == "http://mlflow.internal:5000"
    reg = ModelRegistry(str(tmp_path / "r"))
    assert reg.artifact_root == tmp_path / "r" / "artifacts"


def test_unreachable_server_fails_fast_with_what_to_do():
    reg = ModelRegistry("http://127.0.0.1:9")
    with pytest.raises(RegistryError, match=r"Cannot reach the MLflow tracking server at http://127.0.0.1:9 .*--registry-uri"):
        reg.list()


def test_registry_section_of_the_run_configuration(tmp_path):
    from packager.config import RunConfig

    cfg = RunConfig(registry={"uri": str(tmp_path / "team"), "log_artifacts": True, "name": "smol"})
    reg = ModelRegistry.from_config(cfg)
    assert reg.uri == "sqlite:///" + (tmp_path / "team" / "mlflow.db").as_posix() and reg.log_artifacts
    with pytest.raises(ConfigError, match="registry section is not valid:\n  - url: Extra inputs are not permitted"):
        ModelRegistry.from_config({"url": "http://x"})


def test_a_key_that_aliases_an_entry_is_refused(registry, pair):
    """`packager.approval.1` would read as entry 1 if keys were parsed as numbers: a forged approval added as a
    run param beside a rejection. The chain refuses every key packager does not write."""
    name, _, v2, _, _ = pair
    registry.reject(name, v2, by="bob", reason="recovery too low")
    entry = json.loads(registry.client.get_model_version(name, str(v2)).tags["packager.approval.0001"])
    run_id = registry.get(name, v2).run_id
    registry.client.log_param(run_id, "packager.approval.1", json.dumps({**entry, "decision": "approved"}))
    hist = registry.history(name, v2)
    assert hist.status == "tampered" and not hist.chain_ok
    assert [e.decision for e in hist.entries] == ["rejected"]
    assert hist.problems == ["the run param packager.approval.1 is not a key packager writes (it would alias an entry "
                             "of the chain): added outside packager (forged)"]
    assert not check_release_gate(name, v2, 0.9, registry=registry).allowed


def test_approval_moves_the_approved_alias(registry, pair):
    name, v1, v2, _, _ = pair
    registry.approve(name, v1, by="bob", reason="first")
    assert str(registry.client.get_model_version_by_alias(name, "approved").version) == str(v1)
    registry.approve(name, v2, by="bob", reason="better")
    assert str(registry.client.get_model_version_by_alias(name, "approved").version) == str(v2)
    # rejecting another version leaves the alias; rejecting the aliased one removes it
    registry.reject(name, v1, by="carol", reason="superseded")
    assert str(registry.client.get_model_version_by_alias(name, "approved").version) == str(v2)
    registry.reject(name, v2, by="carol", reason="regression found")
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        registry.client.get_model_version_by_alias(name, "approved")


def test_serving_needs_an_approval_that_holds_now(registry, pair):
    from packager.registry.gate import check_serving_approval

    name, _, v2, _, _ = pair
    ok, why = check_serving_approval(name, v2, registry=registry)
    assert not ok and f"{name} version {v2} is not approved for serving (state: pending" in why
    registry.approve(name, v2, by="bob", reason="good")
    ok, why = check_serving_approval(name, v2, registry=registry)
    assert ok and "approved by bob" in why
    registry.update_results(name, v2, eval_results={"score": 0.5})  # new results: the approval is stale
    ok, why = check_serving_approval(name, v2, registry=registry)
    assert not ok and "state: stale" in why
    registry.reject(name, v2, by="carol", reason="regressed")
    ok, why = check_serving_approval(name, v2, registry=registry)
    assert not ok and "state: rejected" in why and "regressed" in why
