"""The approval history: an append-only, hash-chained list of decisions (pure logic, no MLflow).

Each entry is stored twice:
  * as an MLflow *run param* ``packager.approval.NNNN`` of the version's run. MLflow refuses to change a param
    once logged (and has no call to delete one), so this copy is write-once; it is also the commit point that
    makes two concurrent approvals of the same version take different sequence numbers;
  * as a *model version tag* with the same key, so the history is visible on the model version's page.

Each entry carries the sha256 of the previous one (``prev_hash``) and its own (``hash``, over every other
field). Reading verifies: sequence numbers 1..n without gaps, every hash, every link, and that each tag equals
its param. Any failure is reported as a problem naming the entry and the version's status becomes "tampered"
(except the newest entry's tag not being written yet: a decision in progress, see verify_chain).
What this cannot detect: someone with write access to the database who rewrites both copies of every entry
consistently (there is no external anchor or signature).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterable

from pydantic import ValidationError

from packager.registry.records import ApprovalEntry, ApprovalStatus, Decision, ResultsSummary
from packager.registry.results import canonical_json, digest

GENESIS = "0" * 64
APPROVAL_PREFIX = "packager.approval."
MAX_BY_CHARS = 200
MAX_REASON_CHARS = 2000


def approval_key(seq: int) -> str:
    return f"{APPROVAL_PREFIX}{seq:04d}"


def parse_seq(key: str, prefix: str = APPROVAL_PREFIX) -> int | None:
    """The sequence number of a key written as PREFIX + 4 digits (`packager.approval.0001`), else None. Only the
    form packager writes counts: `packager.approval.1` or `packager.approval.00001` would alias entry 1."""
    if not key.startswith(prefix):
        return None
    tail = key[len(prefix):]
    if not (tail.isascii() and tail.isdigit()) or tail != f"{int(tail):04d}" or int(tail) < 1:
        return None
    return int(tail)


def stray_keys(keys: Iterable[str], prefix: str = APPROVAL_PREFIX) -> list[str]:
    """Keys under `prefix` that packager never writes (not PREFIX + 4 digits from 0001): each was added outside
    packager, and one such as `packager.approval.1` would otherwise pass for an entry it aliases."""
    return sorted(k for k in keys if k.startswith(prefix) and parse_seq(k, prefix) is None)


def entry_hash(fields: dict[str, Any]) -> str:
    return digest({k: v for k, v in fields.items() if k != "hash"})


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_entry(seq: int, decision: Decision, by: str, reason: str, results_revision: int, results_digest: str,
               files_digest: str, summary: ResultsSummary, prev_hash: str, at: str | None = None) -> ApprovalEntry:
    fields = {
        "seq": seq, "decision": decision, "by": by, "at": at or now_utc(), "reason": reason,
        "results_revision": results_revision, "results_digest": results_digest, "files_digest": files_digest,
        "summary": summary.model_dump(mode="json"), "prev_hash": prev_hash,
    }
    fields["hash"] = entry_hash(fields)
    return ApprovalEntry.model_validate(fields)


def entry_text(entry: ApprovalEntry) -> str:
    return canonical_json(entry.model_dump(mode="json"))


def verify_chain(params: dict[int, str], tags: dict[int, str]) -> tuple[list[ApprovalEntry], list[str], list[str]]:
    """Check the write-once copies (params) and the visible copies (tags) of a history.

    Returns the entries that verified, in order, a list of problems (empty when the chain is intact), and notes.
    The newest entry may lack its tag for a moment: a writer records the param first, then the tag. That is a
    note, not a problem (the next writer copies the tag from the param); an older entry without its tag is a
    problem (the tag was deleted).
    """
    problems: list[str] = []
    notes: list[str] = []
    entries: list[ApprovalEntry] = []
    prev: str | None = GENESIS
    n = max(params) if params else 0
    for seq in range(1, n + 1):
        key = approval_key(seq)
        raw = params.get(seq)
        if raw is None:
            problems.append(f"entry {seq} is missing from the write-once run record ({key}); entries were removed")
            prev = None  # every later link is unverifiable
            continue
        try:
            data = json.loads(raw)
            entry = ApprovalEntry.model_validate(data)
        except (json.JSONDecodeError, ValidationError) as e:
            problems.append(f"entry {seq} ({key}) is not a valid approval entry: {str(e).splitlines()[0]}")
            prev = None
            continue
        if entry.seq != seq:
            problems.append(f"entry stored as {key} claims sequence number {entry.seq}")
        recomputed = entry_hash(data)
        if recomputed != entry.hash:
            problems.append(f"entry {seq} ({key}) was altered: its content hashes to {recomputed[:12]}, "
                            f"not its recorded hash {entry.hash[:12]}")
        if prev is not None and entry.prev_hash != prev:
            problems.append(f"entry {seq} ({key}) does not link to entry {seq - 1}: prev_hash "
                            f"{entry.prev_hash[:12]} != {prev[:12]} (the chain was broken or reordered)")
        prev = entry.hash
        entries.append(entry)
        tag = tags.get(seq)
        if tag is None and seq == n:
            notes.append(f"entry {seq} is recorded but its model version tag {key} is not written yet (a decision "
                         "in progress, or an interrupted one; the next decision writes it)")
        elif tag is None:
            problems.append(f"entry {seq}: the model version tag {key} was deleted (the write-once record is intact)")
        elif tag != raw:
            problems.append(f"entry {seq}: the model version tag {key} was edited and no longer matches the "
                            "write-once record")
    for seq in sorted(set(tags) - set(params)):
        problems.append(f"entry {seq}: the model version tag {approval_key(seq)} has no write-once record: "
                        "it was added outside packager (forged)")
    return entries, problems, notes


def compute_status(entries: list[ApprovalEntry], problems: list[str], results_digest: str,
                   files_digest: str) -> tuple[ApprovalStatus, str]:
    """The status follows from the verified chain and the CURRENT results and files digests."""
    if problems:
        return "tampered", f"verification failed: {problems[0]}" + (
            f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
    if not entries:
        return "pending", "no decision recorded yet"
    last = entries[-1]
    if last.decision == "rejected":
        return "rejected", f"rejected by {last.by} at {last.at}: {last.reason}"
    if last.files_digest != files_digest:
        return "stale", (f"approved by {last.by} at {last.at} for files {last.files_digest[:12]}, but the "
                         f"registered files are now {files_digest[:12]}")
    if last.results_digest != results_digest:
        return "stale", (f"approved by {last.by} at {last.at} for results revision {last.results_revision} "
                         f"({last.results_digest[:12]}), but the results changed since "
                         f"(now {results_digest[:12]}); the approval no longer holds")
    return "approved", f"approved by {last.by} at {last.at}: {last.reason}"
