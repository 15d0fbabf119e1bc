"""Renderers of a release Report: JSON (the data), Markdown (for a PR or a wiki) and one self-contained HTML page
with plots (inline CSS and inline SVG; no script, no external file, font or network access).

They only read the Report. The sections both Markdown and HTML show are written once, in
packager.report.sections; packager.report.markdown and packager.report.html render them, packager.report.plots
draws the plots. `write_report(report, out_dir)` writes report.json, report.md and report.html, each atomically
(a temporary file renamed into place), after rendering all three, so a failure leaves the previous set untouched.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from packager.core.formatting import DASH  # noqa: F401
from packager.fsutil import atomic_write_text
from packager.report import html as _html
from packager.report.content import (  # noqa: F401 - the renderers' public names, importable from here as before
    DEFINITIONS,
    LOAD_ROWS,
    STAGE_HEADERS,
    SWEEP_HEADERS,
    Column,
    summary_columns,
    verdict,
)
from packager.report.html import CSS  # noqa: F401
from packager.report.markdown import render_markdown
from packager.report.model import Report
from packager.report.plots import (  # noqa: F401
    PLOT_IDS,
    PLOTS,
    plot_categories,
    plot_gate,
    plot_latency,
    plot_pareto,
    plot_sweep,
    plot_timings,
    render_plots,
    render_plots_safely,
)
from packager.report.sections import build_document

REPORT_FILES = {"json": "report.json", "markdown": "report.md", "html": "report.html"}

def to_json(report: Report) -> str:
    """The report as JSON; `Report.model_validate_json(to_json(r)) == r`."""
    return report.model_dump_json(indent=2)


def render_html(report: Report, plots: dict[str, Any] | None = None) -> str:
    """One self-contained HTML page: the same content as the Markdown, plus six inline SVG plots (each in a
    <figure id="plot-..."> container; a plot without data shows why instead). `plots`: plot id -> <svg>, None or
    an exception, drawn here from PLOTS when not given (a plot that raises is shown as its error)."""
    if plots is None:
        plots = render_plots_safely(report, PLOTS)
    return _html.document(build_document(report), plots)


def write_report(report: Report, out_dir: Path | str) -> dict[str, Path]:
    """Render report.json, report.md and report.html into out_dir (created if needed), each written atomically.
    Returns {"json": path, "markdown": path, "html": path}."""
    out = Path(out_dir)
    texts = {"json": to_json(report), "markdown": render_markdown(report), "html": render_html(report)}
    paths: dict[str, Path] = {}
    for kind, text in texts.items():
        p = out / REPORT_FILES[kind]
        atomic_write_text(p, text)
        os.chmod(p, 0o666 & ~_umask())  # the temp file was private (0600); a report is meant to be read
        paths[kind] = p
    return paths


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
