"""CLI flags that set a setting of the run configuration, derived from the config models (packager.config).

A flag made by `config_flag("eval.max_items")` takes its help from the field's description and names the setting
and its default, so `--help`, `packager config schema` and the YAML file describe a setting in the same words.
Its default is None: a flag not given leaves the setting as the file, the environment or the default have it.
`overrides({...})` turns the flags' values into the override dict `load_config` applies on top, keyed by the same
dotted paths (None values left out), so a command never spells a nested dict by hand.

    def evaluate(max_items: Optional[int] = config_flag("eval.max_items"), ...):
        cfg = load_config(config, overrides({"eval.max_items": max_items, ...}))
"""
from __future__ import annotations

import contextlib
import typing
from pathlib import Path
from typing import Any, Iterator, Mapping

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from packager.config import RunConfig, deep_set


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds (also through Optional[...]), else None."""
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def config_field(path: str, root: type[BaseModel] = RunConfig) -> FieldInfo:
    """The pydantic field at a dotted path of the run configuration ("engine.dtype"); KeyError if there is none."""
    model: type[BaseModel] | None = root
    parts = path.split(".")
    for i, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            raise KeyError(f"{path!r} is not a setting of the run configuration")
        f = model.model_fields[part]
        if i == len(parts) - 1:
            return f
        model = _model_of(f.annotation)
    raise KeyError(path)  # pragma: no cover - the loop returns or raises


def _default_text(f: FieldInfo) -> str:
    if f.default_factory is not None:
        value = f.default_factory()  # type: ignore[call-arg]
    else:
        value = f.default
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def config_help(path: str, extra: str = "") -> str:
    """`<description><extra> (setting <path>; default: <default>)`: parentheses, as --help takes square brackets
    for rich markup."""
    f = config_field(path)
    if not f.description:
        raise KeyError(f"the setting {path!r} has no description for its flag's help")
    return f"{f.description}{extra} (setting {path}; default: {_default_text(f)})"


def config_flag(path: str, *param_decls: str, extra: str = "") -> Any:
    """A typer option (default None) for the setting at `path`, with the help of its config field."""
    return typer.Option(None, *param_decls, help=config_help(path, extra))


def overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"eval.max_items": 5, "engine.dtype": None, "model": "x"} -> {"eval": {"max_items": 5}, "model": "x"}."""
    out: dict[str, Any] = {}
    for path, value in values.items():
        if value is None:
            continue
        config_field(path)  # a typo in a command is a KeyError in its tests, not a silent no-op
        deep_set(out, path.split("."), value)
    return out


# ------------------------------------------------------------------------- how a client reaches its target
def api_key_env_flag() -> Any:
    return typer.Option(None, "--api-key-env", metavar="NAME",
                        help="Send the key held in environment variable NAME as `Authorization: Bearer KEY` "
                             "(default: PACKAGER_API_KEY, when set). The key is never written anywhere.")


def api_key_file_flag() -> Any:
    return typer.Option(None, "--api-key-file", help="Send the key in this file (its first line that is not empty "
                        "or a '#' comment), e.g. a mounted Secret.")


def header_flag() -> Any:
    return typer.Option([], "--header", "-H", help="Extra request header 'Name: value' (repeatable), e.g. a "
                        "gateway's tenant or routing header. Never written to results.")


def ca_bundle_flag() -> Any:
    return typer.Option(None, "--ca-bundle", help="PEM file of CA certificates that an https target is verified "
                        "with (default: the system's CAs).")


def insecure_flag() -> Any:
    return typer.Option(False, "--insecure", help="Do not verify an https target's certificate (a warning says so).")


@contextlib.contextmanager
def client_access(api_key_env: str | None, api_key_file: Path | None, header: list[str], ca_bundle: Path | None,
                  insecure: bool) -> Iterator[Any]:
    """Within the block every client of the command (and the locust processes it starts) sends the key and
    headers of these flags and verifies TLS as they say; a bad flag is a ConfigError before any request."""
    from packager.cli.guard import console
    from packager.core.access import access_scope, resolve_access

    access = resolve_access(api_key_env, api_key_file, header, ca_bundle, insecure)
    if insecure:
        console.print("[yellow]warning:[/] --insecure: the target's TLS certificate is not verified; anyone on "
                      "the path can read the requests, the answers and the API key.", highlight=False)
    with access_scope(access) as a:
        yield a


def run_with_access(go: Any, api_key_env: str | None, api_key_file: Path | None, header: list[str],
                    ca_bundle: Path | None, insecure: bool) -> Any:
    """run_guarded(go) with these client-access flags in force (see client_access)."""
    from packager.cli.guard import run_guarded

    def guarded() -> Any:
        with client_access(api_key_env, api_key_file, header, ca_bundle, insecure):
            return go()

    return run_guarded(guarded)
