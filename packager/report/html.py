"""The report as one self-contained HTML page: renders the Document that packager.report.sections builds, with
the stylesheet (report.css, package data) inline and the plots as inline SVG (no script, no external file, font
or network access). The plots are drawn by the caller (packager.report.render) and passed in by id.
"""
from __future__ import annotations

from html import escape
from importlib.resources import files
from typing import Any, Callable, Mapping, Sequence

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
    Figure,
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
    Text,
)

CSS = "\n" + files("packager.report").joinpath("report.css").read_text(encoding="utf-8")

FigureContent = Any  # an inline <svg> string, None (nothing to plot) or the Exception that drawing it raised


def _h(x: Any) -> str:
    return escape(str(x), quote=True)


def _cls(style: str | None) -> str:
    return f' class="{style}"' if style is not None else ""


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1,
                cls: str = "") -> str:
    out = [f'<div class="table-wrap"><table{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}><thead><tr>']
    out += [f"<th>{_h(h)}</th>" for h in headers]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="num">{_h(c)}</td>' if i >= numeric_from else f"<td>{_h(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _span(s: Text | Name | Code) -> str:
    if isinstance(s, Name):
        return f"<b>{_h(s.text)}</b>"
    if isinstance(s, Code):
        return f"<code>{_h(s.text)}</code>"
    return _h(s.text) if s.style is None else f'<span class="{s.style}">{_h(s.text)}</span>'


def inline(content: Inline) -> str:
    return _h(content) if isinstance(content, str) else "".join(_span(s) for s in content)


# ------------------------------------------------------------------------------------------------------ blocks
# Each returns the block's lines; `figs` (plot id -> FigureContent) is passed down to the figures.
def _paragraph(b: Paragraph, figs: Mapping[str, FigureContent]) -> list[str]:
    return [f"<p{_cls(b.style)}>{inline(b.content)}</p>"]


def _blank(b: Blank, figs: Mapping[str, FigureContent]) -> list[str]:
    return [""]


def _heading(b: Heading, figs: Mapping[str, FigureContent]) -> list[str]:
    return [f"<h3>{_h(b.text)}</h3>"]


def _bullets(b: BulletList, figs: Mapping[str, FigureContent]) -> list[str]:
    head = f"<h3>{_h(b.title)}</h3>" if b.title else ""
    return [head + f"<ul{_cls(b.style)}>" + "".join(f"<li>{inline(item)}</li>" for item in b.items) + "</ul>"]


def _table(b: Table, figs: Mapping[str, FigureContent]) -> list[str]:
    return [_html_table(b.headers, b.rows, numeric_from=b.numeric_from)]


def _panel(b: Panel, figs: Mapping[str, FigureContent]) -> list[str]:
    anchor = f' id="{b.anchor}"' if b.anchor else ""
    return [f'<div{anchor}><h3>{_h(b.title)}</h3><p class="meta">{_h(b.subtitle)}</p>'
            + "".join(f"<p>{_h(p)}</p>" for p in b.paragraphs) + _table(b.table, figs)[0] + "</div>"]


def _children(children: Sequence[Block], figs: Mapping[str, FigureContent]) -> list[str]:
    return [line for child in children for line in block(child, figs)]


def _columns(b: Columns, figs: Mapping[str, FigureContent]) -> list[str]:
    return ['<div class="cols">', *_children(b.children, figs), "</div>"]


def _callout(b: Callout, figs: Mapping[str, FigureContent]) -> list[str]:
    return [f'<div class="rec {"ok" if b.ok else "none"}">',
            f'<p class="headline">{_h(b.headline)}</p><p>{_h(b.text)}</p>', *_children(b.children, figs), "</div>"]


def _summary_row(row: SummaryRow, table: SummaryTable) -> str:
    n_load = sum(1 for c in table.columns if c.load)
    out = ['<tr class="recommended">' if row.recommended else "<tr>"]
    badges = ""
    if row.recommended:
        badges += '<span class="badge rec">★ recommended</span>'
    if row.pareto:
        badges += '<span class="badge pareto">◆ Pareto</span>'
    if row.baseline:
        badges += '<span class="badge">baseline</span>'
    out.append(f"<td><b>{_h(row.name)}</b>{badges}</td>")
    done_err = False
    for c, text in zip(table.columns, row.cells):
        if c.load and row.load_error:
            if not done_err:
                out.append(f'<td class="failed" colspan="{n_load}">{_h(row.load_error)}</td>')
                done_err = True
            continue
        if not c.numeric:  # the verdict
            klass = "v-ok" if text == "recommended" else ("v-bad" if text != DASH and "passes" not in str(text)
                                                           else "")
            out.append(f'<td class="{klass}">{_h(text)}</td>')
        else:
            out.append(f'<td class="num">{_h(text)}</td>')
    out.append("</tr>")
    return "".join(out)


def _summary(b: SummaryTable, figs: Mapping[str, FigureContent]) -> list[str]:
    out = ['<div class="table-wrap"><table class="summary"><thead><tr><th>variant</th>']
    out += [f"<th>{_h(c.header)}</th>" for c in b.columns]
    out.append("</tr></thead><tbody>")
    out += [_summary_row(r, b) for r in b.rows]
    out.append("</tbody></table></div>")
    return ["".join(out)]


def _budget(b: BudgetTable, figs: Mapping[str, FigureContent]) -> list[str]:
    out = ['<div class="table-wrap"><table><thead><tr><th>step</th><th>wall time</th><th>share of budget</th>'
           "<th></th></tr></thead><tbody>"]
    for r in b.rows:
        frac = r.fraction
        bar = (f'<div class="bar{" over" if frac > 1 else ""}"><span style="width:{min(frac, 1.0) * 100:.1f}%">'
               "</span></div>") if frac is not None else ""
        tag = "th" if r.total else "td"
        out.append(f"<tr><{tag}>{_h(r.step)}</{tag}><td class=\"num\">{_h(r.wall)}</td><td class=\"num\">"
                   f"{_h(r.share)}</td><td>{bar}</td></tr>")
    out.append("</tbody></table></div>")
    return out


def _figure(f: Figure, content: FigureContent) -> list[str]:
    if isinstance(content, Exception):
        body = (f'<p class="empty v-bad">This plot could not be drawn: {_h(type(content).__name__)}: '
                f"{_h(content)}</p>")
    else:
        body = content if content else f'<p class="empty">{_h(f.empty)}</p>'
    return [f'<figure class="plot" id="{f.id}" aria-label="{_h(f.title)}">', body,
            f"<figcaption>{_h(f.caption)}</figcaption></figure>"]


def _figures(b: Figures, figs: Mapping[str, FigureContent]) -> list[str]:
    return ['<div class="plots">', *[line for f in b.figures for line in _figure(f, figs.get(f.id))], "</div>"]


def _code(b: CodeBlock, figs: Mapping[str, FigureContent]) -> list[str]:
    return [f"<pre>{_h(b.text)}</pre>"]


_BLOCKS: dict[type, Callable[[Any, Mapping[str, FigureContent]], list[str]]] = {
    Paragraph: _paragraph, Blank: _blank, Heading: _heading, BulletList: _bullets, Table: _table, Panel: _panel,
    Columns: _columns, Callout: _callout, SummaryTable: _summary, BudgetTable: _budget, Figures: _figures,
    CodeBlock: _code,
}


def block(b: Block, figs: Mapping[str, FigureContent]) -> list[str]:
    return _BLOCKS[type(b)](b, figs)


# ---------------------------------------------------------------------------------------------------- document
def meta(m: Meta) -> str:
    return " · ".join([*[f"{label} <b>{_h(value)}</b>" for label, value, _ in m.fields], m.tail])


def section(s: Section, figs: Mapping[str, FigureContent]) -> list[str]:
    """The section's lines: its tags on lines of their own, or (compact) sharing the first and last line."""
    opening = f'<section id="{s.id}">' + (f"<h2>{_h(s.title)}</h2>" if s.html_heading else "")
    lines = _children(s.blocks, figs)
    if not s.compact or not lines:
        return [opening, *lines, "</section>"]
    lines[0] = opening + lines[0]
    lines[-1] += "</section>"
    return lines


def document(doc: Document, figs: Mapping[str, FigureContent]) -> str:
    lines = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_h(doc.title)}</title>", f"<style>{CSS}</style></head><body><main>",
             f"<header><h1>{_h(doc.title)}</h1>", f'<p class="meta">{meta(doc.meta)}</p></header>']
    for s in doc.sections:
        if "html" in s.formats:
            lines += section(s, figs)
    lines.append("</main></body></html>")
    return "\n".join(lines)
