"""`packager compress` end to end on the tiny model (no evaluation: that needs a server)."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from packager.cli import app


def test_compress_cli_writes_stage_and_summaries(tiny_llama_dir, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["compress", str(tiny_llama_dir), "--recipe", "w8a8-int8", "--out", str(out),
                                 "--no-eval", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (out / "01-w8a8_int8" / "model.safetensors").is_file()
    data = json.loads((out / "compress-summary.json").read_text())
    assert [row["stage"] for row in data["rows"]] == ["00-source", "01-w8a8_int8"]
    assert data["rows"][1]["size_mb"] < data["rows"][0]["size_mb"]
    md = (out / "compress-summary.md").read_text()
    assert "| 01-w8a8_int8 | w8a8_int8 |" in md
    assert "01-w8a8_int8" in r.output and "size MB" in r.output


def test_compress_cli_unknown_recipe_is_a_clean_error(tiny_llama_dir, tmp_path):
    r = CliRunner().invoke(app, ["compress", str(tiny_llama_dir), "--recipe", "nope", "--out", str(tmp_path), "--no-eval"])
    assert r.exit_code == 2
    assert "Unknown recipe 'nope'" in r.output and "w8a8-int8" in r.output


def test_compress_cli_fp8_on_cpu_refused(tiny_llama_dir, tmp_path):
    r = CliRunner().invoke(app, ["compress", str(tiny_llama_dir), "--recipe", "fp8", "--out", str(tmp_path / "o"),
                                 "--no-eval", "--target", "cpu"])
    assert r.exit_code == 2
    assert "Refusing the recipe before starting" in r.output
    assert not (tmp_path / "o" / "01-fp8").exists()
