"""Errors of the registry area (all PackagerError: the CLI prints them without a traceback)."""
from __future__ import annotations

from packager.errors import IntegrityError, PackagerError


class RegistryError(PackagerError):
    """The registry could not be reached, or a name/version does not exist, or a write was refused."""


class TamperedHistoryError(IntegrityError):
    """The approval history or a recorded document fails verification."""


class ReleaseRefusedError(PackagerError):
    """The release gate refused a version (not approved, stale, tampered, or under the quality floor)."""

    exit_code = 4
