"""The report as Markdown (for a PR or a wiki): renders the Document that packager.report.sections builds.

Text is escaped so that nothing in a name or an error message renders as HTML ('<' and '&'), and table cells
keep their pipes. Sections for HTML only (the plots) are left out.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from packager.core.formatting import DASH
from packager.report.blocks import (
    Blank,
    Block,
    BudgetTable,
    BulletList,
    Callout,
    Code,
    CodeBlock,
    Columns,
    Document,
    Figures,
    Heading,
    Inline,
    Meta,
    Name,
    Panel,
    Paragraph,
    Section,
    SummaryRow,
    SummaryTable,
    Table,
)
from packager.report.model import Report
from packager.report.sections import build_document


def _md_text(text: Any) -> str:
    """Text for Markdown: '<' and '&' escaped so nothing in a name or an error message renders as HTML."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;")


e = _md_text


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1,
              text_cols: Sequence[int] = ()) -> list[str]:
    """A pipe table; columns from `numeric_from` on are right-aligned except those in `text_cols`."""
    out = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
           "|" + "|".join("---" if i < numeric_from or i in text_cols else "---:" for i in range(len(headers)))
           + "|"]
    for r in rows:
        out.append("| " + " | ".join(_md_cell(c) for c in r) + " |")
    return out


def inline(content: Inline) -> str:
    if isinstance(content, str):
        return e(content)
    return "".join(f"`{s.text}`" if isinstance(s, (Name, Code)) else e(s.text) for s in content)


# ------------------------------------------------------------------------------------------------------ blocks
def _paragraph(b: Paragraph) -> list[str]:
    return [inline(b.content), ""]


def _blank(b: Blank) -> list[str]:
    return [""]


def _heading(b: Heading) -> list[str]:
    return [f"### {e(b.text)}", ""]


def _bullets(b: BulletList) -> list[str]:
    head = [f"### {e(b.title)}", ""] if b.title else []
    return head + [f"- {inline(item)}" for item in b.items] + [""]


def _table(b: Table) -> list[str]:
    return _md_table(b.headers, b.rows, numeric_from=b.numeric_from) + [""]


def _panel(b: Panel) -> list[str]:
    out = [f"### {e(b.title)} ({e(b.subtitle)})", ""]
    for p in b.paragraphs:
        out += [e(p), ""]
    return out + _table(b.table)


def _columns(b: Columns) -> list[str]:
    return [line for child in b.children for line in block(child)]


def _callout(b: Callout) -> list[str]:
    return [f"**{e(b.headline)}** {e(b.text)}", ""] + _columns(Columns(b.children))


def _row_cells(row: SummaryRow, table: SummaryTable) -> list[str]:
    """The load error in the first load-test column, dashes in the others."""
    cells = []
    first_load = True
    for c, text in zip(table.columns, row.cells):
        if c.load and row.load_error:
            cells.append(row.load_error if first_load else DASH)
            first_load = False
        else:
            cells.append(str(text))
    marks = " ".join(m for m, on in (("★", row.recommended), ("◆", row.pareto), ("(baseline)", row.baseline)) if on)
    return [row.name + (" " + marks if marks else ""), *cells]


def _summary(b: SummaryTable) -> list[str]:
    cols = b.columns
    out = _md_table(["variant", *[c.header for c in cols]], [_row_cells(r, b) for r in b.rows],
                    text_cols=[i + 1 for i, c in enumerate(cols) if not c.numeric])
    out.append("")
    out.append("★ recommended · ◆ on the quality-vs-cost Pareto frontier (higher task score, lower USD per 1M output "
               f"tokens): {', '.join(b.pareto) if b.pareto else 'none'}")
    return out + [""]


def _budget(b: BudgetTable) -> list[str]:
    return _md_table(["step", "wall time", "share of budget"], [[r.step, r.wall, r.share] for r in b.rows]) + [""]


def _figures(b: Figures) -> list[str]:
    return []  # no plots in Markdown


def _code(b: CodeBlock) -> list[str]:
    fence = "~~~~" if "```" in b.text else "```"
    return [f"{fence}{b.language}", b.text.rstrip("\n"), fence, ""]


_BLOCKS: dict[type, Callable[[Any], list[str]]] = {
    Paragraph: _paragraph, Blank: _blank, Heading: _heading, BulletList: _bullets, Table: _table, Panel: _panel,
    Columns: _columns, Callout: _callout, SummaryTable: _summary, BudgetTable: _budget, Figures: _figures,
    CodeBlock: _code,
}


def block(b: Block) -> list[str]:
    """The block's lines, ending with a blank line."""
    return _BLOCKS[type(b)](b)


# ---------------------------------------------------------------------------------------------------- document
def meta(m: Meta) -> str:
    fields = [f"{label}: `{value}`" if ident else f"{label}: {e(value)}" for label, value, ident in m.fields]
    return " · ".join([*fields, m.tail])


def section(s: Section) -> list[str]:
    return [f"## {e(s.title)}", ""] + [line for b in s.blocks for line in block(b)]


def document(doc: Document) -> str:
    lines = [f"# {e(doc.title)}", "", meta(doc.meta), ""]
    for s in doc.sections:
        if "markdown" in s.formats:
            lines += section(s)
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    return document(build_document(report))
