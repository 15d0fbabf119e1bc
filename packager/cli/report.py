"""`packager report ...`: the `report_app` command group, added to the top-level `packager` command by
packager.cli.app.

    packager report render RUN_DIR_OR_REPORT_JSON [--out DIR]   re-render report.md and report.html from report.json
    packager report check  RUN_DIR_OR_REPORT_JSON                list figures that disagree; exit 1 when any do

`packager release` writes the report itself; these commands re-render a stored report (e.g. after a renderer
upgrade, or into another directory) and verify one, without re-running anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from packager.cli.guard import console, run_guarded


def load_report(path: Path | str):
    """A Report from a report.json, or from the directory that holds one. Raises ConfigError naming the file and
    what is wrong with it."""
    from pydantic import ValidationError

    from packager.errors import ConfigError
    from packager.report.model import REPORT_SCHEMA_VERSION, Report

    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise ConfigError(f"No report at {p}: give a run directory holding report.json (what `packager release` "
                          "writes) or the report.json file itself.")
    try:
        report = Report.model_validate_json(p.read_text(encoding="utf-8"))
    except ValidationError as e:
        first = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()[:5])
        raise ConfigError(f"{p} is not a packager report ({e.error_count()} problem(s): {first}).") from None
    if report.schema_version > REPORT_SCHEMA_VERSION:
        raise ConfigError(f"{p} has report schema version {report.schema_version}, newer than this packager "
                          f"understands ({REPORT_SCHEMA_VERSION}); upgrade packager to render it.")
    return report


report_app = typer.Typer(help="Re-render or verify a release report (report.json).", no_args_is_help=True)


@report_app.command("render")
def render_cmd(
    report_path: Path = typer.Argument(..., help="run directory holding report.json, or the report.json file"),
    out: Optional[Path] = typer.Option(None, help="directory to write into (default: beside report.json)"),
) -> None:
    """Write report.json, report.md and report.html (self-contained, with plots) from a stored report."""

    def go() -> None:
        from packager.report.analysis import consistency_problems
        from packager.report.render import write_report

        report = load_report(report_path)
        target = out if out is not None else (report_path if report_path.is_dir() else report_path.parent)
        paths = write_report(report, target)
        for kind, p in paths.items():
            console.print(f"{kind:>8}: {p}")
        problems = consistency_problems(report)
        if problems:
            console.print(f"[yellow]{len(problems)} figure(s) disagree; see `packager report check`.[/]")

    run_guarded(go)


@report_app.command("check")
def check_cmd(
    report_path: Path = typer.Argument(..., help="run directory holding report.json, or the report.json file"),
) -> None:
    """List every pair of figures in the report that disagree (cost vs price and throughput, recovery vs
    scores, percentile order, Pareto frontier, recommendation). Exit 1 when there is any."""

    def go() -> int:
        from packager.report.analysis import consistency_problems

        report = load_report(report_path)
        problems = consistency_problems(report)
        if not problems:
            console.print(f"[green]consistent[/]: {len(report.variants)} variant(s); recommendation: "
                          f"{report.recommendation.variant or 'none'}", highlight=False)
            return 0
        console.print(f"[bold red]{len(problems)} problem(s):[/]", highlight=False)
        for line in problems:
            console.print(f"  - {line}", highlight=False, markup=False)
        return 1

    code = run_guarded(go)
    if code:
        raise typer.Exit(code)
