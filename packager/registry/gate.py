"""The release gate and artifact verification: what `packager build --release` and `packager release` call."""
from __future__ import annotations

import os
from pathlib import Path

from packager.errors import ConfigError, IntegrityError
from packager.registry.records import GateDecision, VerifyResult
from packager.registry.store import ModelRegistry


def _registry(registry: ModelRegistry | None, registry_uri: str | None) -> ModelRegistry:
    return registry if registry is not None else ModelRegistry(registry_uri)


def check_release_gate(name: str, version: int | str, quality_floor: float, *, registry: ModelRegistry | None = None,
                       registry_uri: str | None = None, model_dir: str | os.PathLike | None = None) -> GateDecision:
    """May `name` version `version` be released? It must be approved, the approval must hold for its current
    results and files (not stale), its history must verify, and its recovery (task score / baseline task score)
    must be at least `quality_floor`. With `model_dir`, the files to ship are also checked against the registered
    hashes. Every failed condition adds a reason naming the version, its state and the floor.

    Returns a GateDecision; call `.raise_if_refused()` to turn a refusal into ReleaseRefusedError.
    """
    if (not isinstance(quality_floor, (int, float)) or isinstance(quality_floor, bool)
            or not 0.0 <= quality_floor <= 1.5):
        raise ConfigError(f"quality_floor must be a recovery ratio between 0 and 1.5 (e.g. 0.95); "
                          f"got {quality_floor!r}.")
    reg = _registry(registry, registry_uri)
    rec = reg.get(name, version)
    hist = rec.history
    label = f"{rec.name} version {rec.version}"
    reasons: list[str] = []
    approved_by = approved_at = None
    if hist.status == "approved":
        last = hist.entries[-1]
        approved_by, approved_at = last.by, last.at
    elif hist.status == "pending":
        reasons.append(f"{label} is not approved (state: pending, no decision recorded). Review it and run "
                       f"`packager registry approve {rec.name} {rec.version} --by WHO --reason WHY`.")
    elif hist.status == "rejected":
        reasons.append(f"{label} was rejected (state: rejected; {hist.status_detail}).")
    elif hist.status == "stale":
        reasons.append(f"{label}'s approval is stale (state: stale; {hist.status_detail}). Review the new results "
                       f"and approve again.")
    else:
        reasons.append(f"{label} fails verification (state: tampered): " + "; ".join(hist.problems[:5]) + ".")
    recovery = rec.summary.recovery
    floor_s = f"{quality_floor:.3f}"
    if recovery is None:
        reasons.append(f"{label} has no recovery recorded (task score {rec.summary.task_score}); the quality floor "
                       f"{floor_s} cannot be checked. Record evaluation results with a score and register the "
                       "baseline as the lineage root (or give eval.baseline_score).")
    elif recovery < quality_floor:
        reasons.append(f"{label}'s recovery {recovery:.3f} ({rec.summary.recovery_source}) is under the quality "
                       f"floor {floor_s}.")
    if model_dir is not None:
        try:
            reg.verify_artifact(rec.name, rec.version, model_dir)
        except IntegrityError as e:
            reasons.append(str(e))
    return GateDecision(
        name=rec.name, version=rec.version, allowed=not reasons, status=hist.status, recovery=recovery,
        quality_floor=float(quality_floor), reasons=reasons, approved_by=approved_by, approved_at=approved_at,
        files_digest=rec.files_digest, results_digest=rec.results_digest,
    )


def verify_artifact(name: str, version: int | str, model_dir: str | os.PathLike | None = None, *,
                    registry: ModelRegistry | None = None, registry_uri: str | None = None) -> VerifyResult:
    """Check the files of `model_dir` (default: the registered location) against the registered sha256 of
    every file; raise IntegrityError naming each missing, altered or unexpected file."""
    return _registry(registry, registry_uri).verify_artifact(name, version, Path(model_dir) if model_dir else None)


def bento_labels(name: str, version: int | str, *, registry: ModelRegistry | None = None,
                 registry_uri: str | None = None) -> dict[str, str]:
    """Labels for a bento built from a registered version: which registry version it serves, its files and
    results digests, and its status when built. Keys follow packager.serve's `packager.registry_version`."""
    reg = _registry(registry, registry_uri)
    rec = reg.get(name, version)
    return {
        "packager.registry_model": rec.name,
        "packager.registry_version": str(rec.version),
        "packager.registry_files_sha256": rec.files_digest,
        "packager.registry_results_sha256": rec.results_digest,
        "packager.registry_status": rec.history.status,
    }


def check_serving_approval(name: str, version: int | str, *, registry: ModelRegistry | None = None,
                           registry_uri: str | None = None) -> tuple[bool, str]:
    """May a bento serve `name` version `version`? Only when the version is approved now: a pending, rejected,
    stale or tampered version is refused. Returns (allowed, a sentence that says why)."""
    reg = _registry(registry, registry_uri)
    rec = reg.get(name, version)
    hist = rec.history
    label = f"{rec.name} version {rec.version}"
    if hist.status == "approved":
        return True, f"{label} is approved ({hist.status_detail})"
    why = "; ".join(hist.problems[:3]) if hist.status == "tampered" else hist.status_detail
    return False, (f"{label} is not approved for serving (state: {hist.status}; {why}). Approve it with "
                   f"`packager registry approve {rec.name} {rec.version} --by WHO --reason WHY`, or serve "
                   "without --require-approved.")
