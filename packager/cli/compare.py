"""`packager compare A B`: two saved runs side by side (two load tests, or two releases); packager.cli.app adds it
to the top-level `packager` command. The comparison itself is packager.report.compare; its Markdown, HTML and
files are packager.report.compare_render."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from packager.cli.guard import console, run_guarded

FORMATS = ("md", "html", "json", "all")


def compare(
    a: Path = typer.Argument(..., metavar="A", help="Run A: a loadtest.json or its directory, or a release's "
                             "report.json or its output directory."),
    b: Path = typer.Argument(..., metavar="B", help="Run B, of the same kind as A."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory to write compare.md, compare.html and "
                                       "compare.json into (created if needed)."),
    fmt: str = typer.Option("all", "--format", help="md | html | json | all: the files written into --out. "
                            "Without --out, md, html or json prints that text on stdout instead of the table."),
) -> None:
    """Compare two load tests or two releases: each figure of A and B, the difference, and whether it is beyond
    noise (latency percentiles: a bootstrap interval from the runs' per-request records; throughput from one run
    each has no noise estimate and says so)."""

    def go() -> None:
        from rich.console import Console
        from rich.markdown import Markdown

        from packager.errors import ConfigError
        from packager.report.compare import compare_runs
        from packager.report.compare_render import render_html, render_markdown, write_comparison

        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
        comparison = compare_runs(a, b)
        if out is None and fmt != "all":
            render = {"md": render_markdown, "html": render_html, "json": lambda c: c.to_json()}[fmt]
            text = render(comparison)
            typer.echo(text, nl=False)
            return
        Console(soft_wrap=False).print(Markdown(render_markdown(comparison)))
        if out is not None:
            paths = write_comparison(comparison, out, ("md", "html", "json") if fmt == "all" else (fmt,))
            for kind, p in paths.items():
                console.print(f"{kind:>5}: {p}", highlight=False)

    run_guarded(go)
