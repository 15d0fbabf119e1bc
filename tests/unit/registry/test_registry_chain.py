"""The approval history's hash chain and the status it implies (pure logic, no MLflow)."""
import json

from packager.registry.chain import GENESIS, compute_status, entry_hash, entry_text, make_entry, verify_chain
from packager.registry.records import ResultsSummary

R1, R2, F1, F2 = "r1" * 32, "r2" * 32, "f1" * 32, "f2" * 32


def _chain(decisions):
    entries, prev = [], GENESIS
    for i, d in enumerate(decisions, 1):
        e = make_entry(i, d, f"user{i}", f"reason {i}", 1, R1, F1, ResultsSummary(task_score=0.8, recovery=0.95), prev,
                       at=f"2026-01-0{i}T00:00:00+00:00")
        entries.append(e)
        prev = e.hash
    return entries


def _stored(entries):
    texts = {e.seq: entry_text(e) for e in entries}
    return dict(texts), dict(texts)


def test_entries_link_by_hash_and_verify():
    entries = _chain(["approved", "rejected", "approved"])
    assert entries[0].prev_hash == GENESIS
    assert entries[1].prev_hash == entries[0].hash and entries[2].prev_hash == entries[1].hash
    assert entries[0].hash == entry_hash(json.loads(entry_text(entries[0])))
    params, tags = _stored(entries)
    got, problems, notes = verify_chain(params, tags)
    assert problems == []
    assert [e.decision for e in got] == ["approved", "rejected", "approved"]


def test_edited_entry_without_rehash_is_named():
    params, tags = _stored(_chain(["approved", "approved"]))
    d = json.loads(params[1])
    d["reason"] = "edited later"
    params[1] = tags[1] = json.dumps(d, sort_keys=True)
    _, problems, notes = verify_chain(params, tags)
    assert len(problems) == 1 and problems[0].startswith("entry 1 (packager.approval.0001) was altered")


def test_rehashed_edit_breaks_the_next_link():
    params, tags = _stored(_chain(["rejected", "approved"]))
    d = json.loads(params[1])
    d["decision"] = "approved"
    d["hash"] = entry_hash(d)
    params[1] = tags[1] = json.dumps(d)
    _, problems, notes = verify_chain(params, tags)
    assert any("entry 2" in p and "does not link to entry 1" in p for p in problems)


def test_edited_visible_tag_is_detected_against_write_once_record():
    params, tags = _stored(_chain(["approved"]))
    d = json.loads(tags[1])
    d["by"] = "mallory"
    d["hash"] = entry_hash(d)
    tags[1] = json.dumps(d)
    _, problems, notes = verify_chain(params, tags)
    assert problems == ["entry 1: the model version tag packager.approval.0001 was edited and no longer matches the "
                        "write-once record"]


def test_removed_and_forged_entries_are_reported():
    params, tags = _stored(_chain(["approved", "approved", "approved"]))
    del params[2], tags[2]
    _, problems, notes = verify_chain(params, tags)
    assert any("entry 2 is missing" in p for p in problems)
    params, tags = _stored(_chain(["approved"]))
    tags[2] = tags[1]
    _, problems, notes = verify_chain(params, tags)
    assert any("entry 2" in p and "forged" in p for p in problems)
    params, tags = _stored(_chain(["approved", "approved"]))
    del tags[1]
    _, problems, notes = verify_chain(params, tags)
    assert any("entry 1" in p and "was deleted" in p for p in problems)


def test_newest_entry_without_its_tag_is_a_decision_in_progress_not_tampering():
    params, tags = _stored(_chain(["approved", "approved"]))
    del tags[2]
    got, problems, notes = verify_chain(params, tags)
    assert problems == [] and len(got) == 2
    assert notes == ["entry 2 is recorded but its model version tag packager.approval.0002 is not written yet (a "
                     "decision in progress, or an interrupted one; the next decision writes it)"]


def test_status_follows_last_decision_and_current_digests():
    assert compute_status([], [], R1, F1)[0] == "pending"
    approved = _chain(["approved"])
    assert compute_status(approved, [], R1, F1)[0] == "approved"
    status, detail = compute_status(approved, [], R2, F1)
    assert status == "stale" and "results changed" in detail and "user1" in detail
    status, detail = compute_status(approved, [], R1, F2)
    assert status == "stale" and "files" in detail
    assert compute_status(_chain(["approved", "rejected"]), [], R1, F1)[0] == "rejected"
    assert compute_status(_chain(["rejected", "approved"]), [], R1, F1)[0] == "approved"
    status, detail = compute_status(approved, ["entry 1 was altered"], R1, F1)
    assert status == "tampered" and "entry 1 was altered" in detail


def test_only_the_keys_packager_writes_count_as_entries():
    from packager.registry.chain import parse_seq, stray_keys

    assert parse_seq("packager.approval.0001") == 1 and parse_seq("packager.approval.0123") == 123
    assert parse_seq("packager.approval.12345") == 12345  # past 9999 the number is simply longer
    for alias in ("packager.approval.1", "packager.approval.00001", "packager.approval.0000", "packager.approval.+001",
                  "packager.approval.٠٠٠١", "packager.approval.0001 ", "packager.approval."):
        assert parse_seq(alias) is None, alias
    keys = ["packager.approval.0001", "packager.approval.1", "packager.files_digest", "packager.approval.x"]
    assert stray_keys(keys) == ["packager.approval.1", "packager.approval.x"]
