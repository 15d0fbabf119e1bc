"""What the registry returns: pydantic models (data only; no MLflow import here)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from packager.config import RegistryConfig  # noqa: F401  (the registry section of RunConfig, re-exported)

# pending: no decision yet. approved: the last decision approved these exact results and files.
# stale: approved, but the results (or files) changed since, so the approval no longer holds.
# rejected: the last decision rejected it. tampered: the history or the recorded documents fail verification.
ApprovalStatus = Literal["pending", "approved", "stale", "rejected", "tampered"]
Decision = Literal["approved", "rejected"]

RESULT_KINDS = ("eval", "behaviour", "loadtest", "cost")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResultsSummary(Strict):
    """The few numbers shown in `list`/`show` and used by the gate, taken from the results documents."""

    task_score: float | None = None
    baseline_score: float | None = None
    recovery: float | None = None  # task_score / baseline task score (1.0 = as good as the baseline)
    recovery_source: str | None = None  # where the recovery came from (e.g. "eval.recovery", "root version 1")
    refusal: float | None = None
    consistency: float | None = None
    tag_scores: dict[str, float] = Field(default_factory=dict)
    output_tokens_per_s: float | None = None
    ttft_ms_p95: float | None = None
    goodput_rps: float | None = None
    usd_per_million_output_tokens: float | None = None


class ResultsRevision(Strict):
    """One immutable revision of a version's results (anchored as an MLflow run param)."""

    revision: int
    sha256: str
    at: str
    summary: ResultsSummary


class ApprovalEntry(Strict):
    """One decision in a version's append-only, hash-chained approval history."""

    seq: int = Field(ge=1)
    decision: Decision
    by: str
    at: str  # ISO 8601, UTC
    reason: str
    results_revision: int
    results_digest: str  # sha256 of the canonical JSON of the results at that moment
    files_digest: str  # tree digest of the model files at that moment
    summary: dict[str, Any]  # ResultsSummary at that moment, as data (old entries stay readable)
    prev_hash: str  # hash of entry seq-1; 64 zeros for the first entry
    hash: str  # sha256 of the canonical JSON of every other field


class ApprovalHistory(Strict):
    name: str
    version: int
    entries: list[ApprovalEntry]
    chain_ok: bool
    problems: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # harmless, e.g. the newest entry's tag not written yet
    status: ApprovalStatus
    status_detail: str
    current_results_revision: int
    current_results_digest: str


class VersionSummary(Strict):
    """One row of `packager registry list`."""

    name: str
    version: int
    parent: str | None  # "name/version" of the parent, or None for a root (baseline)
    source_model: str
    recipe: str  # e.g. "w8a8-int8" or "distill>prune>gptq"; "" for a baseline
    status: ApprovalStatus
    summary: ResultsSummary
    results_revision: int
    files_digest: str
    created_at: str
    model_uri: str


class VariantRecord(Strict):
    """Everything recorded for one registered model version (`packager registry show`)."""

    name: str
    version: int
    registry_uri: str
    run_id: str
    mlflow_source: str  # the model version's source (runs:/<run_id>/model)
    created_at: str
    source_model: str
    source_digest: str | None
    parent: str | None
    model_uri: str  # where the model files live (a local path or URI); weights are not copied by default
    artifacts_logged: bool  # True when the model files were uploaded into MLflow as well
    files: dict[str, str]  # relative path -> sha256
    files_digest: str
    size_bytes: int
    recipe: Any
    stage_records: list[Any]
    run_config: dict[str, Any] | None
    environment: dict[str, Any]
    results: dict[str, Any]  # {"eval": ..., "behaviour": ..., "loadtest": ..., "cost": ...}
    results_revision: int
    results_digest: str
    summary: ResultsSummary
    history: ApprovalHistory

    @property
    def status(self) -> ApprovalStatus:
        return self.history.status


class VerifyResult(Strict):
    name: str
    version: int
    model_dir: str
    files_checked: int
    files_digest: str


class GateDecision(Strict):
    """The release gate's answer. `allowed` is False when any reason refuses the version."""

    name: str
    version: int
    allowed: bool
    status: ApprovalStatus
    recovery: float | None
    quality_floor: float
    reasons: list[str] = Field(default_factory=list)
    approved_by: str | None = None
    approved_at: str | None = None
    files_digest: str | None = None
    results_digest: str | None = None

    @property
    def message(self) -> str:
        if self.allowed:
            rec = "unknown" if self.recovery is None else f"{self.recovery:.3f}"
            return (f"{self.name} version {self.version} may be released: approved by {self.approved_by} at "
                    f"{self.approved_at}, recovery {rec} >= floor {self.quality_floor:.3f}.")
        return f"{self.name} version {self.version} may NOT be released: " + " ".join(self.reasons)

    def raise_if_refused(self) -> "GateDecision":
        """Raise ReleaseRefusedError with every reason when the gate refused; return self otherwise."""
        if not self.allowed:
            from packager.registry.errors import ReleaseRefusedError

            raise ReleaseRefusedError(self.message)
        return self
