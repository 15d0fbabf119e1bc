"""CLI commands of packager.monitor: `register(app)` adds them to the top-level `packager` command."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`. Keep imports of heavy libraries inside the commands."""
