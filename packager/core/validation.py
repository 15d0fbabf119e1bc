"""One formatter of pydantic validation errors for people: which field, what was wrong, the value given.

Every parser of user input (run configuration, recipes, suites, bento arguments, load-test settings, price
tables, registry settings, reports) turns a `ValidationError` into a `ConfigError` through here, so they all
read alike:

    the run configuration is not valid:
      - eval.max_items: Input should be greater than 0 (got -3)
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

from pydantic import BaseModel, ValidationError

from packager.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def dotted_loc(loc: tuple[Any, ...]) -> str:
    """`eval.max_items`, `stages.0.bits`; `(top level)` for an error of the whole object."""
    return ".".join(str(x) for x in loc) or "(top level)"


def error_lines(e: ValidationError, fmt_loc: Callable[[tuple[Any, ...]], str] = dotted_loc,
                limit: int | None = None) -> list[str]:
    """One `  - loc: message (got value)` line per problem; a mapping or list given is not echoed."""
    lines = []
    for err in e.errors()[:limit]:
        got = err.get("input")
        got_s = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
        lines.append(f"  - {fmt_loc(tuple(err['loc']))}: {err['msg']}{got_s}")
    return lines


def format_validation_error(e: ValidationError, where: str, what: str = "valid",
                            fmt_loc: Callable[[tuple[Any, ...]], str] = dotted_loc) -> str:
    """`{where} is not {what}:` and a line per problem."""
    return "\n".join([f"{where} is not {what}:", *error_lines(e, fmt_loc)])


def parse_model(model: type[M], data: Mapping[str, Any] | Any, where: str) -> M:
    """`model.model_validate(data)`, or a ConfigError that names every bad field of `where` and its value."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None
