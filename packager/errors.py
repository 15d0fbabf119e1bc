"""Errors meant for people: what was wrong, with the value, and what to do."""
from __future__ import annotations


class PackagerError(Exception):
    """An error the CLI prints without a traceback and exits non-zero on."""

    exit_code = 2


class ConfigError(PackagerError):
    """Bad configuration, recipe, suite or price table."""


class ModelNotFoundError(PackagerError):
    """A model source could not be resolved offline."""


class IntegrityError(PackagerError):
    """Files do not match their recorded sha256."""

    exit_code = 3


class HardwareError(PackagerError):
    """The requested format or engine cannot run on the target hardware."""


class ServerError(PackagerError):
    """A server (vLLM, bentoml, locust) failed to start or died."""
