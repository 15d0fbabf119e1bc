"""`packager models ...`: model sources (the bundled default, local dirs, HF cache)."""
from __future__ import annotations

import typer

from packager.cli.guard import run_guarded

models_app = typer.Typer(no_args_is_help=True, help="Model sources (the bundled default, local dirs, HF cache).")


@models_app.command("default")
def models_default() -> None:
    """Provide the bundled SmolLM2-135M-Instruct as a safetensors checkpoint; print its directory."""
    from packager.core.sources import ensure_default_model

    m = run_guarded(ensure_default_model)
    typer.echo(str(m.path))


@models_app.command("resolve")
def models_resolve(
    source: str = typer.Argument("default", help="'default', a local directory, or a cached HF id"),
) -> None:
    """Resolve a model source offline and print its directory."""
    from packager.core.sources import resolve_model

    m = run_guarded(resolve_model, source)
    typer.echo(str(m.path))
