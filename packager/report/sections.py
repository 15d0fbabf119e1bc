"""The report's sections, in order, each written once: a function from a Report to a Section (or None when the
report has nothing for it). Both renderers walk SECTIONS through `build_document`.

To add a section: write a function here returning a Section of blocks (packager.report.blocks) and put it in
SECTIONS where it belongs. A new kind of block needs a case in packager.report.markdown and packager.report.html.
"""
from __future__ import annotations

from typing import Callable

from packager.core.formatting import num
from packager.report.blocks import (
    Blank,
    BudgetRow,
    BudgetTable,
    BulletList,
    Callout,
    Code,
    CodeBlock,
    Columns,
    Document,
    Figure,
    Figures,
    Heading,
    Meta,
    Name,
    Panel,
    Paragraph,
    Section,
    SummaryColumn,
    SummaryRow,
    SummaryTable,
    Table,
    Text,
)
from packager.report.content import (
    DEFINITIONS,
    ENGINE_SEARCH_HEADERS,
    LOAD_ROWS,
    STAGE_HEADERS,
    SWEEP_HEADERS,
    behaviours,
    categories,
    config_yaml,
    criteria_line,
    engine_rows,
    engine_search_rows,
    expected_load_line,
    headline,
    load_error_text,
    load_notes,
    replicas_line,
    stage_rows,
    summary_columns,
    sweep_label,
    sweep_rows,
    timing_cells,
    timing_rows,
)
from packager.report.model import Report
from packager.report.plots import PLOTS


def recommendation(report: Report) -> Section:
    rec = report.recommendation
    backing: list = []
    if rec.rejected:
        backing.append(BulletList([[Name(name), Text(f": {why}")] for name, why in rec.rejected.items()]))
    if (line := expected_load_line(report)) is not None:
        backing.append(Paragraph(line, style="expected-load"))
    if (line := replicas_line(report)) is not None:
        backing.append(Paragraph(line, style="expected-load"))
    return Section("recommendation", "Recommendation", [
        Callout(bool(rec.variant), headline(report), rec.reason, backing),
        Paragraph(criteria_line(report), style="criteria"),
    ], html_heading=False, compact=True)


def summary_table(report: Report) -> SummaryTable:
    cols = summary_columns(report)
    rows = []
    for v in report.variants:
        err = load_error_text(v)
        rows.append(SummaryRow(name=v.name, recommended=report.recommendation.variant == v.name,
                               pareto=v.name in report.pareto, baseline=v.is_baseline,
                               cells=[None if c.load and err else c.get(v) for c in cols], load_error=err))
    return SummaryTable([SummaryColumn(c.header, c.load, c.numeric) for c in cols], rows, list(report.pareto))


def variants(report: Report) -> Section:
    blocks: list = [summary_table(report), BulletList(list(DEFINITIONS), style="defs")]
    problems = [(v.name, x) for v in report.variants for x in v.errors]
    if problems:
        blocks.append(BulletList([[Name(name), Text(f": {x}")] for name, x in problems], title="Problems"))
    return Section("variants", "Variants", blocks)


def figures(report: Report) -> Section:
    return Section("plots", "Plots", [Figures([Figure(pid, title, caption, empty)
                                               for pid, title, _, caption, empty in PLOTS])],
                   compact=True, formats=("html",))


def scores(report: Report) -> Section:
    names = [v.name for v in report.variants]
    cats = categories(report)
    blocks: list = [
        Table(["category", *names], [[c, *[num(v.score_by_category.get(c), ".3f") for v in report.variants]]
                                     for c in cats]) if cats
        else Paragraph("No per-category scores were recorded.", style="empty")]
    beh = behaviours(report)
    if beh:
        blocks += [Heading("Behaviour checks"),
                   Table(["check", *names], [[b, *[num(v.behaviour.get(b), ".3f") for v in report.variants]]
                                             for b in beh])]
    return Section("categories", "Scores by category", blocks)


def stages(report: Report) -> Section:
    return Section("stages", "Compression stages", [Table(STAGE_HEADERS, stage_rows(report), numeric_from=4)])


def load_tests(report: Report) -> Section:
    loaded = [v for v in report.variants if v.load is not None]
    blocks: list = []
    if loaded:
        blocks.append(Table(["metric", *[v.name for v in loaded]],
                            [[label, *[get(v.load) for v in loaded]] for label, get in LOAD_ROWS]))  # type: ignore[arg-type]
    notes = load_notes(report)
    if notes:
        blocks.append(BulletList([[Name(name), Text(f" {kind}: "), Text(x, "v-bad" if kind != "figures at" else "")]
                                  for name, kind, x in notes]))
    if report.engines is not None:
        blocks.append(Panel("Engines", sweep_label(report.engines.sweep_unit),
                            Table(*engine_rows(report), numeric_from=0), [report.engines.summary], anchor="engines"))
    sweeps = [v for v in loaded if v.load and v.load.sweep]
    if sweeps:
        blocks.append(Columns([Panel(f"Sweep: {v.name}", sweep_label(v.load.sweep_unit),  # type: ignore[union-attr]
                                     Table(SWEEP_HEADERS, sweep_rows(v.load), numeric_from=0))  # type: ignore[arg-type]
                               for v in sweeps]))
    return Section("load", "Load tests", blocks)


def engine_search(report: Report) -> Section | None:
    """What each variant's engine-argument search tried before its bento was built, and what it chose."""
    rows, reasons = engine_search_rows(report)
    if not reasons:
        return None
    return Section("engine-search", "Engine arguments", [
        Table(ENGINE_SEARCH_HEADERS, rows, numeric_from=2),
        BulletList([[Name(name), Text(f" {why}")] for name, why in reasons]),
    ])


def timings(report: Report) -> Section:
    trows, tverdict = timing_rows(report)
    budget = report.time_budget_s
    blocks: list = []
    if trows:
        rows = []
        for step, s in trows:
            _, wall, share = timing_cells(report, step, s)
            rows.append(BudgetRow(step, wall, share, s / budget if budget else None, total=step == "total"))
        blocks.append(BudgetTable(rows))
    if tverdict:
        blocks.append(Paragraph(tverdict))
    elif trows:
        blocks.append(Blank())
    else:
        blocks.append(Paragraph("No timings were recorded.", style="empty"))
    return Section("timings", "Timings", blocks)


def versions(report: Report) -> Section:
    return Section("versions", "Versions and platform", [Columns([
        Table(["package", "version"], sorted(report.versions.items()), numeric_from=2),
        Table(["platform", "value"], list(report.platform.items()), numeric_from=2),
    ])], compact=True)


def notes(report: Report) -> Section | None:
    if not report.notes:
        return None
    return Section("notes", "Notes", [BulletList(list(report.notes))], compact=True)


def configuration(report: Report) -> Section:
    return Section("config", "Configuration", [
        Paragraph([Text("The run configuration, verbatim: "), Code("packager release --config"),
                   Text(" with this file reproduces the run.")]),
        CodeBlock(config_yaml(report), "yaml"),
    ], compact=True)


SECTIONS: list[Callable[[Report], Section | None]] = [
    recommendation, variants, figures, scores, stages, load_tests, engine_search, timings, versions, notes,
    configuration,
]


def build_document(report: Report) -> Document:
    """The report as a Document: its title, the line under it and every section SECTIONS has something for."""
    meta = Meta([("Model", report.model, True), ("baseline", report.baseline, True),
                 ("created", report.created_at, False)], f"report schema v{report.schema_version}")
    built = (make(report) for make in SECTIONS)
    return Document(report.title, meta, [s for s in built if s is not None])
