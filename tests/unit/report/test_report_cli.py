"""`packager report render|check` on a stored sample report."""
from __future__ import annotations

import typer
from typer.testing import CliRunner

from packager.cli.report import report_app
from packager.report.render import to_json

from unit.report.sample import sample_report


def app() -> typer.Typer:
    a = typer.Typer()

    @a.callback()
    def _root() -> None:  # a group, so that `report` is a subcommand
        pass

    a.add_typer(report_app, name="report")
    return a


def test_render_rewrites_md_and_html_from_report_json(tmp_path):
    (tmp_path / "report.json").write_text(to_json(sample_report()))
    out = tmp_path / "out"
    res = CliRunner().invoke(app(), ["report", "render", str(tmp_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]
    assert "**Deploy w8a8-int8.**" in (out / "report.md").read_text()
    assert 'id="plot-pareto"' in (out / "report.html").read_text()


def test_check_passes_a_consistent_report_and_fails_a_tampered_one(tmp_path):
    r = sample_report()
    (tmp_path / "report.json").write_text(to_json(r))
    res = CliRunner().invoke(app(), ["report", "check", str(tmp_path / "report.json")])
    assert res.exit_code == 0, res.output
    assert "consistent: 3 variant(s); recommendation: w8a8-int8" in res.output
    r.variant("w8a8-int8").load.usd_per_million_output_tokens = 0.05
    (tmp_path / "report.json").write_text(to_json(r))
    res = CliRunner().invoke(app(), ["report", "check", str(tmp_path)])
    assert res.exit_code == 1
    assert "w8a8-int8: usd_per_million_output_tokens 0.05 !=" in res.output


def test_missing_or_invalid_report_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app(), ["report", "check", str(tmp_path)])
    assert res.exit_code == 2 and "No report at" in res.output and "report.json" in res.output
    (tmp_path / "report.json").write_text('{"model": "m"}')
    res = CliRunner().invoke(app(), ["report", "check", str(tmp_path)])
    assert res.exit_code == 2 and "is not a packager report" in res.output and "baseline" in res.output
