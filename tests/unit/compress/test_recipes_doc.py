"""recipes/README.md documents what the code accepts: every built-in recipe in its table, and every argument of
every stage kind in the arguments table (a new argument or recipe that is not documented fails here)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from packager.compress.recipe import ARGS_BY_KIND, builtin_recipes

DOC = Path(__file__).resolve().parents[3] / "recipes" / "README.md"


def _rows(first_header: str) -> dict[str, str]:
    """{first cell without backticks: the whole row} of the Markdown table whose header starts with first_header."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    rows: dict[str, str] = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows[ln.split("|")[1].strip().strip("`")] = ln
    return rows


def test_every_builtin_recipe_is_in_the_table():
    rows = _rows("recipe")
    assert set(builtin_recipes()) <= set(rows), sorted(set(builtin_recipes()) - set(rows))


@pytest.mark.parametrize("kind", sorted(ARGS_BY_KIND))
def test_every_stage_argument_is_documented(kind):
    rows = _rows("kind")
    assert kind in rows, f"stage kind {kind} has no row in {DOC.name}"
    documented = set(re.findall(r"`([a-z_0-9]+)`", rows[kind]))
    missing = [n for n in ARGS_BY_KIND[kind].model_fields if n != "kind" and n not in documented]
    assert not missing, f"{kind}: arguments not in {DOC.name}: {missing}"
