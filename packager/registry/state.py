"""What the write-once params and the tags of one registered version say (no artifacts downloaded, no MLflow
import): its results revisions, its verified approval history, and the status they imply."""
from __future__ import annotations

import json
from typing import Any

from packager.registry.chain import compute_status, parse_seq, stray_keys, verify_chain
from packager.registry.documents import RESULTS_PREFIX
from packager.registry.records import ApprovalHistory, ResultsRevision, ResultsSummary


class VersionState:
    """One version as read from its MLflow model version (`mv`) and run (`run`); `problems` collects every
    verification failure found (ModelRegistry adds those of the stored documents)."""

    def __init__(self, name: str, version: int, mv: Any, run: Any):
        self.name, self.version, self.mv, self.run = name, version, mv, run
        self.params: dict[str, str] = dict(run.data.params)
        self.tags: dict[str, str] = dict(mv.tags or {})
        self.problems: list[str] = []
        self.revisions: list[ResultsRevision] = []
        self._read_revisions()
        if not self.revisions:
            self.problems.append("no results revision recorded")
        p_entries = {n: v for k, v in self.params.items() if (n := parse_seq(k)) is not None}
        t_entries = {n: v for k, v in self.tags.items() if (n := parse_seq(k)) is not None}
        self.entries, chain_problems, self.notes = verify_chain(p_entries, t_entries)
        for where, keys in (("run param", self.params), ("model version tag", self.tags)):
            for k in stray_keys(keys) + stray_keys(keys, RESULTS_PREFIX):
                chain_problems.append(f"the {where} {k} is not a key packager writes (it would alias "
                                      "an entry of the chain): added outside packager (forged)")
        self.chain_ok = not chain_problems
        self.problems += chain_problems
        self.files_digest = self.params.get("packager.files_digest", "")
        if not self.files_digest:
            self.problems.append("the write-once files digest (packager.files_digest) is missing")

    def _read_revisions(self) -> None:
        revs: dict[int, str] = {}
        for k, v in self.params.items():
            n = parse_seq(k, RESULTS_PREFIX)
            if n is not None:
                revs[n] = v
        for n in range(1, (max(revs) if revs else 0) + 1):
            if n not in revs:
                self.problems.append(f"results revision {n} is missing from the write-once run record")
                continue
            try:
                d = json.loads(revs[n])
                self.revisions.append(ResultsRevision(revision=n, sha256=d["sha256"], at=d["at"],
                                                      summary=ResultsSummary.model_validate(d["summary"])))
            except Exception as e:  # noqa: BLE001 - any malformed record is a verification problem
                self.problems.append(f"results revision {n} record is malformed: {str(e).splitlines()[0]}")

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def current(self) -> ResultsRevision | None:
        return self.revisions[-1] if self.revisions else None

    @property
    def results_digest(self) -> str:
        return self.current.sha256 if self.current else ""

    @property
    def parent(self) -> str | None:
        return self.params.get("packager.parent") or None

    def status(self) -> tuple[str, str]:
        return compute_status(self.entries, self.problems, self.results_digest, self.files_digest)

    def history(self) -> ApprovalHistory:
        status, detail = self.status()
        cur = self.current
        return ApprovalHistory(
            name=self.name, version=self.version, entries=self.entries, chain_ok=self.chain_ok,
            problems=list(self.problems), notes=list(self.notes), status=status, status_detail=detail,
            current_results_revision=cur.revision if cur else 0, current_results_digest=self.results_digest,
        )
