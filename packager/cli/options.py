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

import typing
from typing import Any, Mapping

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
