"""The renderer-neutral structure of a report: a Document of Sections, each a list of blocks.

packager.report.sections builds it from a Report; packager.report.markdown and packager.report.html render it.
Text is plain (never markup): each renderer escapes it. A block says what it is (a table, a list, the
recommendation box); how it looks is the renderer's business, so a new section is written once, in sections.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union


# ------------------------------------------------------------------------------------------------ inline text
@dataclass(frozen=True)
class Text:
    """Plain text. `style`: in HTML, a <span> of that class ("" still makes the span); ignored in Markdown."""

    text: str
    style: str | None = None


@dataclass(frozen=True)
class Name:
    """A name (a variant): `name` in Markdown, bold in HTML."""

    text: str


@dataclass(frozen=True)
class Code:
    """A literal to type (a command): `code` in Markdown, <code> in HTML."""

    text: str


Span = Union[Text, Name, Code]
Inline = Union[str, Sequence[Span]]  # a str is one Text


# ------------------------------------------------------------------------------------------------------ blocks
@dataclass
class Paragraph:
    content: Inline
    style: str | None = None  # HTML class: "empty" (nothing to show), "criteria", "expected-load"


@dataclass
class Blank:
    """An empty line in both formats: where a paragraph has nothing to say but the layout keeps its place."""


@dataclass
class Heading:
    """A subheading inside a section."""

    text: str


@dataclass
class BulletList:
    items: Sequence[Inline]
    title: str | None = None  # a subheading of its own
    style: str | None = None  # HTML class of the list


@dataclass
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    numeric_from: int = 1  # columns from this one on hold numbers (right-aligned)


@dataclass
class Panel:
    """A titled table: its subtitle (the unit), paragraphs above the table, an anchor to link to."""

    title: str
    subtitle: str
    table: Table
    paragraphs: Sequence[str] = ()
    anchor: str | None = None


@dataclass
class Columns:
    """Blocks side by side where the page is wide enough (HTML); one after the other in Markdown."""

    children: Sequence["Block"]


@dataclass
class Callout:
    """The verdict box: a headline, its explanation and what backs it up; `ok` when it is good news."""

    ok: bool
    headline: str
    text: str
    children: Sequence["Block"] = ()


@dataclass
class SummaryColumn:
    header: str
    load: bool  # a load-test figure: replaced, with the others, by the variant's load error when it has one
    numeric: bool  # else the verdict


@dataclass
class SummaryRow:
    name: str
    recommended: bool
    pareto: bool
    baseline: bool
    cells: Sequence[str | None]  # one per column; None where the load error stands instead
    load_error: str | None


@dataclass
class SummaryTable:
    """One row per variant, its marks (recommended, on the Pareto frontier, baseline) and verdict."""

    columns: Sequence[SummaryColumn]
    rows: Sequence[SummaryRow]
    pareto: Sequence[str]  # the frontier, cheapest first


@dataclass
class BudgetRow:
    step: str
    wall: str
    share: str
    fraction: float | None  # of the time budget; None without a budget
    total: bool = False


@dataclass
class BudgetTable:
    """Wall time per step against the time budget, the total last."""

    rows: Sequence[BudgetRow]


@dataclass
class Figure:
    """A plot, drawn by the HTML renderer's caller (packager.report.plots) and looked up by id."""

    id: str
    title: str
    caption: str
    empty: str  # what to say when there is nothing to plot


@dataclass
class Figures:
    figures: Sequence[Figure]


@dataclass
class CodeBlock:
    text: str
    language: str = ""


Block = Union[Paragraph, Blank, Heading, BulletList, Table, Panel, Columns, Callout, SummaryTable, BudgetTable,
              Figures, CodeBlock]


# ---------------------------------------------------------------------------------------------------- document
@dataclass
class Meta:
    """The line under the title: (label, value, is_identifier) fields, then a closing remark."""

    fields: Sequence[tuple[str, str, bool]]
    tail: str


@dataclass
class Section:
    id: str  # the HTML anchor
    title: str
    blocks: Sequence[Block]
    html_heading: bool = True  # HTML shows the title (the recommendation box stands without one)
    compact: bool = False  # HTML: the first and last block share a line with the section's tags
    formats: tuple[str, ...] = ("markdown", "html")  # plots are HTML only


@dataclass
class Document:
    title: str
    meta: Meta
    sections: Sequence[Section] = field(default_factory=list)
