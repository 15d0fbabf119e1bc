"""`packager config ...`: the run configuration every command reads, as it takes effect, and its schema."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from packager.cli.guard import run_guarded

config_app = typer.Typer(no_args_is_help=True, help="The run configuration: the effective settings and their schema.")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`eval.max_items=20` -> {"eval": {"max_items": 20}}; values are YAML scalars (as PACKAGER_ variables)."""
    import yaml

    from packager.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"--set {item!r} is not KEY=VALUE with a dotted KEY (e.g. --set eval.max_items=20).")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {part!r} was already given a value, not a section.")
            node = nxt
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not a YAML scalar ({e}).") from None
    return out


@config_app.command("show")
def show(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="run configuration YAML"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override one setting: KEY=VALUE with a dotted "
                                             "KEY (eval.max_items=20); repeat for several"),
) -> None:
    """Print the run configuration as it takes effect (defaults < YAML file < PACKAGER_ environment variables <
    --set), validated, as YAML: what `packager release` would run with and write into its report."""
    def go() -> None:
        from packager.config import dump_config, load_config

        typer.echo(dump_config(load_config(config, parse_overrides(list(set_ or [])))), nl=False)

    run_guarded(go)


@config_app.command("schema")
def schema() -> None:
    """Print the JSON schema of the run configuration: every section and setting with its type, default and
    limits (for editors and validation in CI)."""
    from packager.config import RunConfig

    typer.echo(json.dumps(RunConfig.model_json_schema(), indent=2))
