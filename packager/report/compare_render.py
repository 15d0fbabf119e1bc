"""Markdown and HTML of a `packager compare` result (packager.report.compare_model.Comparison): a table per group
of rows, every text escaped, differences beyond noise marked; write_comparison writes compare.md, compare.html
and compare.json. Renderers only read the Comparison."""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any, Callable, Iterable

from packager.core.formatting import DASH, fmt_usd, ms, pct
from packager.report.compare_model import Comparison, Row

FILES = {"md": "compare.md", "html": "compare.html", "json": "compare.json"}


# ------------------------------------------------------------------------------------------------- rendering
def _plain(x: float, fmt: str) -> str:
    if fmt == "ms":
        return ms(x)
    if fmt == "rate":
        return f"{x:,.2f}"
    if fmt == "pct":
        return pct(x)
    if fmt == "usd":
        return fmt_usd(x)
    if fmt == "count":
        return f"{x:,.0f}"
    if fmt == "score":
        return f"{x:.3f}"
    if fmt == "kl":
        return f"{x:.4f}"
    if fmt == "mb":
        return f"{x / 1e6:,.1f}"
    if fmt == "load":
        return f"{x:g}"
    return f"{x:.4g}"


def fmt_value(x: float | None, fmt: str) -> str:
    return DASH if x is None else _plain(x, fmt)


def fmt_delta(x: float | None, fmt: str) -> str:
    """A signed difference; fractions as percentage points."""
    if x is None:
        return DASH
    if fmt == "pct":
        return f"{x * 100:+.1f} pp"
    sign = "+" if x > 0 else ("-" if x < 0 else "±")
    return sign + _plain(abs(x), fmt)


def fmt_relative(x: float | None) -> str:
    return DASH if x is None else f"{x * 100:+.1f}%"


def fmt_noise(x: bool | None) -> str:
    return DASH if x is None else ("yes" if x else "no")


def verdict(r: Row) -> str | None:
    """'better' | 'worse' when the difference is beyond noise and the metric has a direction, else None."""
    if not r.beyond_noise or r.delta is None or r.better is None or r.delta == 0:
        return None
    return "better" if (r.delta > 0) == (r.better == "higher") else "worse"


HEADERS = ("metric", "A", "B", "Δ (B − A)", "Δ %", "beyond noise", "why")


def _cells(r: Row) -> list[str]:
    name = f"{r.metric} ({r.unit})" if r.unit else r.metric
    return [name, fmt_value(r.a, r.fmt), fmt_value(r.b, r.fmt), fmt_delta(r.delta, r.fmt),
            fmt_relative(r.relative_delta), fmt_noise(r.beyond_noise), r.reason]


def _md(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")


def _title(c: Comparison) -> str:
    return f"Comparison of two {'load tests' if c.kind == 'loadtest' else 'releases'}"


def render_markdown(c: Comparison) -> str:
    out = [f"# {_title(c)}", "", "| | A | B |", "|---|---|---|"]
    for label, get in (("file", lambda i: i.path), ("model", lambda i: i.model or DASH),
                       ("created", lambda i: i.created or DASH), ("run", lambda i: i.description)):
        out.append(f"| {label} | {_md(get(c.a))} | {_md(get(c.b))} |")
    if c.kind == "release":
        out.append(f"| recommended | {_md(c.recommended_a or 'none')} | {_md(c.recommended_b or 'none')} |")
    for g in c.groups:
        out += ["", f"## {_md(g.title)}", ""]
        if g.note:
            out += [_md(g.note), ""]
        out.append("| " + " | ".join(HEADERS) + " |")
        out.append("|---|---:|---:|---:|---:|---|---|")
        for r in g.rows:
            cells = [_md(x) for x in _cells(r)]
            if verdict(r) is not None:
                cells[3] = f"**{cells[3]}**"
            out.append("| " + " | ".join(cells) + " |")
    if c.only_in_a or c.only_in_b:
        out += ["", "## Only in one run", ""]
        out += [f"- only in A: {_md(x)}" for x in c.only_in_a] + [f"- only in B: {_md(x)}" for x in c.only_in_b]
    if c.environment:
        out += ["", "## Environment differences", "", "| | A | B |", "|---|---|---|"]
        out += [f"| {_md(e.key)} | {_md(e.a)} | {_md(e.b)} |" for e in c.environment]
    if c.notes:
        out += ["", "## Notes", ""] + [f"- {_md(n)}" for n in c.notes]
    return "\n".join(out) + "\n"


CSS = """
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; color: #1d2330; }
main { max-width: 1400px; margin: 0 auto; padding: 20px 28px 40px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 26px; border-bottom: 1px solid #d9dee7; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid #d9dee7; padding: 4px 8px; vertical-align: top; }
th { background: #f3f5f9; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.why { color: #5b6474; font-size: 12.5px; }
td.better { background: #e8f6ee; color: #1e7f45; font-weight: 600; }
td.worse { background: #fbecea; color: #a8321e; font-weight: 600; }
.note, .legend { color: #5b6474; }
"""


def _h(x: Any) -> str:
    return escape(str(x), quote=True)


def render_html(c: Comparison) -> str:
    """One self-contained page (inline CSS; no script, no external file): every text escaped. A difference beyond
    noise is coloured green when it is an improvement and red when it is a regression."""
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{_h(_title(c))}</title><style>{CSS}</style></head><body><main>", f"<h1>{_h(_title(c))}</h1>",
           "<table><thead><tr><th></th><th>A</th><th>B</th></tr></thead><tbody>"]
    info = [("file", c.a.path, c.b.path), ("model", c.a.model or DASH, c.b.model or DASH),
            ("created", c.a.created or DASH, c.b.created or DASH), ("run", c.a.description, c.b.description)]
    if c.kind == "release":
        info.append(("recommended", c.recommended_a or "none", c.recommended_b or "none"))
    out += [f"<tr><th>{_h(k)}</th><td>{_h(x)}</td><td>{_h(y)}</td></tr>" for k, x, y in info]
    out.append("</tbody></table>")
    out.append('<p class="legend">Green: better beyond noise; red: worse beyond noise; uncoloured: within noise '
               "or not judged (see why).</p>")
    for g in c.groups:
        out.append(f"<h2>{_h(g.title)}</h2>")
        if g.note:
            out.append(f'<p class="note">{_h(g.note)}</p>')
        out.append("<table><thead><tr>" + "".join(f"<th>{_h(h)}</th>" for h in HEADERS) + "</tr></thead><tbody>")
        for r in g.rows:
            cells = _cells(r)
            v = verdict(r)
            cls = ["", "num", "num", "num" + (f" {v}" if v else ""), "num", "", "why"]
            out.append("<tr>" + "".join(f'<td class="{k}">{_h(x)}</td>' if k else f"<td>{_h(x)}</td>"
                                        for k, x in zip(cls, cells)) + "</tr>")
        out.append("</tbody></table>")
    if c.only_in_a or c.only_in_b:
        out.append("<h2>Only in one run</h2><ul>")
        out += [f"<li>only in A: {_h(x)}</li>" for x in c.only_in_a]
        out += [f"<li>only in B: {_h(x)}</li>" for x in c.only_in_b]
        out.append("</ul>")
    if c.environment:
        out.append("<h2>Environment differences</h2><table><thead><tr><th></th><th>A</th><th>B</th></tr></thead>"
                   "<tbody>")
        out += [f"<tr><th>{_h(e.key)}</th><td>{_h(e.a)}</td><td>{_h(e.b)}</td></tr>" for e in c.environment]
        out.append("</tbody></table>")
    if c.notes:
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_h(n)}</li>" for n in c.notes) + "</ul>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------- the files
def write_comparison(c: Comparison, out_dir: Path | str, formats: Iterable[str] = ("md", "html", "json"),
                     ) -> dict[str, Path]:
    """Write compare.md / compare.html / compare.json (those asked for) into out_dir, each atomically."""
    from packager.fsutil import atomic_write_text

    render: dict[str, Callable[[], str]] = {"md": lambda: render_markdown(c), "html": lambda: render_html(c),
                                            "json": c.to_json}
    texts = {f: render[f]() for f in formats}
    paths = {}
    for f, text in texts.items():
        p = Path(out_dir) / FILES[f]
        atomic_write_text(p, text)
        paths[f] = p
    return paths


__all__ = ["FILES", "render_markdown", "render_html", "write_comparison", "fmt_value", "fmt_delta", "fmt_relative",
           "fmt_noise", "verdict"]
