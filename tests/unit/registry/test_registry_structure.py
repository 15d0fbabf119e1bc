"""The shape of packager.registry: small modules and functions, no import cycles (lazy imports included), and the
registration record's contract."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import packager.registry as registry_pkg
from packager.registry import VariantRegistration

PKG = Path(registry_pkg.__file__).parent
MODULES = {f"packager.registry.{p.stem}" if p.stem != "__init__" else "packager.registry": p
           for p in sorted(PKG.glob("*.py"))}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_are_small(module):
    path = MODULES[module]
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 500, f"{module} is over 500 lines"
    for node in ast.walk(_tree(path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{module}.{node.name} is {length} lines"


def _registry_imports(module: str, path: Path) -> set[str]:
    """packager.registry.* modules that `module` imports, at the top or inside functions."""
    out: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n in MODULES and n != module}
    return out


def test_no_import_cycles_within_the_registry():
    graph = {m: _registry_imports(m, p) for m, p in MODULES.items()}
    graph["packager.registry"] = set()  # the package re-exports; submodules must not import it
    for m, deps in graph.items():
        if m != "packager.registry":
            assert "packager.registry" not in _registry_imports(m, MODULES[m]), f"{m} imports the package"
    done: set[str] = set()

    def visit(m: str, path: tuple[str, ...]) -> None:
        assert m not in path, "import cycle: " + " -> ".join(path + (m,))
        if m in done:
            return
        for d in graph[m]:
            visit(d, path + (m,))
        done.add(m)

    for m in graph:
        visit(m, ())


def test_variant_registration_is_a_frozen_record_with_todays_defaults():
    rec = VariantRegistration("m", "/tmp/x", source_model="default")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        VariantRegistration("m", "/tmp/x", "default")  # type: ignore[misc]  # source_model and after: keyword-only
    defaults = {f.name: f.default for f in dataclasses.fields(VariantRegistration)
                if f.default is not dataclasses.MISSING}
    assert defaults == {
        "source_digest": None, "parent_version": None, "recipe": None, "stage_records": None, "eval_results": None,
        "behaviour_results": None, "loadtest_results": None, "cost_results": None, "run_config": None,
        "environment": None, "log_artifacts": None, "description": None,
    }
    assert rec.results_document() == {"eval": None, "behaviour": None, "loadtest": None, "cost": None}


def test_register_reports_progress(registry, unique_name, make_model_dir):
    lines: list[str] = []
    d = make_model_dir("progress")
    v = registry.register_variant(VariantRegistration(unique_name, d, source_model="default"), progress=lines.append)
    assert lines == [f"hashing the files of {d.resolve()}", "recording documents, params and metrics",
                     f"registered {unique_name} version {v}"]
