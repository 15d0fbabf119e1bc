"""How packager prints numbers, everywhere: the report (its analysis sentences, sections, renderers and plots)
and the consoles of the CLI (evaluate, load test, monitor, registry).

The one-figure formatters take None (a figure that was not measured) and print it as a dash.
"""
from __future__ import annotations

import math

DASH = "—"


def num(x: float | int | None, spec: str = ".1f", unit: str = "") -> str:
    """`num(0.1234, ".3f")` -> `0.123`; `num(12, ".0f", " req")` -> `12 req`; None -> the dash (no unit)."""
    if x is None:
        return DASH
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec) + unit


def ms(x: float | None) -> str:
    """Milliseconds: whole from 100 up, one decimal below (`1190`, `56.3`)."""
    if x is None:
        return DASH
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def pct(x: float | None, decimals: int = 1) -> str:
    return DASH if x is None else f"{x * 100:.{decimals}f}%"


def mb(n: int | float | None) -> str:
    return DASH if n is None else f"{n / 1e6:,.1f}"


def mparams(n: int | None) -> str:
    return DASH if n is None else f"{n / 1e6:,.1f}M"


def secs(x: float | None) -> str:
    if x is None:
        return DASH
    if x >= 120:
        return f"{x:,.0f} s ({x / 60:.1f} min)"
    return f"{x:.1f} s"


def duration(x: float) -> str:
    """A step's duration for a console line: whole seconds under two minutes, then minutes (`42 s`, `3.5 min`)."""
    return f"{x:.0f} s" if x < 120 else f"{x / 60:.1f} min"


def usd_hour(x: float | None) -> str:
    """Hourly prices as list prices print them (0.1785), not rounded to 3 significant digits."""
    return DASH if x is None else (f"{x:,.2f}" if x >= 100 else f"{x:.4g}")


def fmt_pair(value: float, limit: float, scale: float = 1.0, unit: str = "") -> tuple[str, str]:
    """Format a value and its limit with just enough decimals that unequal values never print the same, and that
    neither prints as zero unless it is (a KL of 0.2 against a limit of 0.0105: "0.20 > limit 0.01", not "0.0")."""
    def fmt(decimals: int) -> tuple[str, str]:
        return f"{value * scale:.{decimals}f}{unit}", f"{limit * scale:.{decimals}f}{unit}"

    def zeroed(x: float, decimals: int) -> bool:
        return x != 0 and round(x * scale, decimals) == 0

    for decimals in (0, 1, 2, 3, 4, 5):
        a, b = fmt(decimals)
        if (a != b or value == limit) and not zeroed(value, decimals) and not zeroed(limit, decimals):
            return a, b
    return fmt(6)


def fmt_pct_pair(value: float, limit: float) -> tuple[str, str]:
    """Two fractions as percentages."""
    return fmt_pair(value, limit, 100.0, "%")


def fmt_usd(x: float | None) -> str:
    """USD amounts from fractions of a cent to thousands, with 3 significant digits at least."""
    if x is None:
        return DASH
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}" if abs(x) >= 0.001 else f"{x:.2e}"


def load_words(x: float, unit: str | None) -> str:
    """`4 concurrent users`, `1 concurrent user`, `2.5 requests/s` for an offered load of a sweep."""
    if unit == "concurrency":
        return f"{x:g} concurrent user" + ("" if x == 1 else "s")
    return f"{x:g} requests/s" if unit == "requests_per_s" else f"{x:g}"
