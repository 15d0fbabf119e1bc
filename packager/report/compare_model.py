"""The data of a `packager compare` result: a Comparison of two runs (RunInfo), its groups of rows (one Row per
figure of A and B), the environment differences (EnvDiff), and make_row, which every row is built with.

The comparison is built by packager.report.compare (load tests) and packager.report.compare_release (releases);
packager.report.compare_render turns it into Markdown and HTML. This module imports neither."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

COMPARE_SCHEMA_VERSION = 1
ONE_RUN = "one run each: no noise estimate"

Kind = Literal["loadtest", "release"]
Better = Literal["higher", "lower"]


class Row(BaseModel):
    """One figure of A and B. `interval`: the 95% interval of B - A when one was computed."""

    metric: str
    unit: str = ""
    fmt: str = "num"  # how to print it: ms | rate | pct | usd | count | score | kl | load | mb | num
    a: float | None = None
    b: float | None = None
    delta: float | None = None  # B - A
    relative_delta: float | None = None  # (B - A) / |A|; None when A is 0 or missing
    beyond_noise: bool | None = None  # None: not judged (see reason)
    reason: str = ""
    interval: tuple[float, float] | None = None
    better: Better | None = None  # which direction is an improvement (colours the HTML)


class Group(BaseModel):
    """The rows of one matched phase (load tests) or variant (releases)."""

    title: str
    note: str = ""
    rows: list[Row] = Field(default_factory=list)


class RunInfo(BaseModel):
    kind: Kind
    path: str  # the JSON file read
    model: str | None = None
    created: str | None = None
    description: str = ""  # summary basis (load test) or recommendation (release)


class EnvDiff(BaseModel):
    key: str
    a: str
    b: str


class Comparison(BaseModel):
    """Render it with packager.report.compare_render (render_markdown, render_html, write_comparison)."""

    schema_version: int = COMPARE_SCHEMA_VERSION
    kind: Kind
    a: RunInfo
    b: RunInfo
    groups: list[Group] = Field(default_factory=list)
    only_in_a: list[str] = Field(default_factory=list)  # phases or variants A has and B has not
    only_in_b: list[str] = Field(default_factory=list)
    recommended_a: str | None = None  # releases: each one's recommended variant
    recommended_b: str | None = None
    environment: list[EnvDiff] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        """`Comparison.model_validate_json(c.to_json()) == c`."""
        return self.model_dump_json(indent=2)


def make_row(metric: str, a: float | None, b: float | None, *, fmt: str = "num", unit: str = "",
             better: Better | None = None, beyond_noise: bool | None = None, reason: str = ONE_RUN,
             interval: tuple[float, float] | None = None) -> Row:
    """A row of A and B with the difference B - A and the relative difference (B - A) / |A| filled in."""
    delta = rel = None
    if a is not None and b is not None:
        delta = b - a
        rel = delta / abs(a) if a != 0 else None
    return Row(metric=metric, unit=unit, fmt=fmt, a=a, b=b, delta=delta, relative_delta=rel,
               beyond_noise=beyond_noise, reason=reason, interval=interval, better=better)


__all__ = ["COMPARE_SCHEMA_VERSION", "ONE_RUN", "Kind", "Better", "Row", "Group", "RunInfo", "EnvDiff", "Comparison",
           "make_row"]
