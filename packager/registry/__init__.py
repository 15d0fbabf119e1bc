"""packager.registry: governed versions of compressed models in an MLflow model registry.

Every variant (and its baseline) is a registered model version with lineage, the sha256 of every file,
the recipe and stage records, results (task suite, behaviour suite, load test, cost), the run configuration,
hardware and package versions, and an append-only, hash-chained approval history. The release gate
(`check_release_gate`) refuses versions that are not approved, whose approval went stale, whose history fails
verification, or whose recovery is under the quality floor. MLflow is imported only when a registry is used.
"""
from packager.registry.documents import VariantRegistration
from packager.registry.errors import RegistryError, ReleaseRefusedError, TamperedHistoryError
from packager.registry.gate import bento_labels, check_release_gate, verify_artifact
from packager.registry.records import (
    ApprovalEntry,
    ApprovalHistory,
    GateDecision,
    RegistryConfig,
    ResultsRevision,
    ResultsSummary,
    VariantRecord,
    VerifyResult,
    VersionSummary,
)
from packager.registry.store import ModelRegistry, default_registry_uri, resolve_registry_uri

__all__ = [
    "ApprovalEntry", "ApprovalHistory", "GateDecision", "ModelRegistry", "RegistryConfig", "RegistryError",
    "ReleaseRefusedError", "ResultsRevision", "ResultsSummary", "TamperedHistoryError", "VariantRecord",
    "VariantRegistration", "VerifyResult", "VersionSummary", "bento_labels", "check_release_gate",
    "default_registry_uri", "resolve_registry_uri", "verify_artifact",
]
