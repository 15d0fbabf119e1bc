"""`packager registry ...` end to end through typer, on a real MLflow SQLite store."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from packager.cli import app


@pytest.fixture
def cli(registry, monkeypatch):
    monkeypatch.setenv("PACKAGER_REGISTRY_URI", registry.uri)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        res = runner.invoke(app, ["registry", *args])
        assert res.exit_code == code, f"exit {res.exit_code} != {code}\n{res.output}"
        return res.output

    return run


def test_register_approve_list_show_gate(cli, unique_name, make_model_dir, tmp_path):
    base, var = make_model_dir("base", b"b" * 1000), make_model_dir("var", b"v" * 500)
    (tmp_path / "base.json").write_text(json.dumps({"score": 0.8, "behaviour": {"refusal_rate": 1.0, "consistency": 0.9}}))
    evdir = tmp_path / "eval-var"
    evdir.mkdir()
    (evdir / "summary.json").write_text(json.dumps({"score": 0.74, "score_by_tag": {"arithmetic": 0.8},
                                                    "behaviour": {"refusal_rate": 0.9, "consistency": 0.85}}))
    (tmp_path / "recipe.yaml").write_text("- kind: gptq\n  bits: 4\n  group_size: 64\n")
    (tmp_path / "lt.json").write_text(json.dumps({"output_tokens_per_s": 236.0, "usd_per_million_output_tokens": 0.21}))

    out = cli("register", unique_name, str(base), "--source-model", "default", "--eval", str(tmp_path / "base.json"), "--json")
    assert json.loads(out)["version"] == 1
    out = cli("register", unique_name, str(var), "--source-model", "default", "--parent", "1",
              "--recipe", str(tmp_path / "recipe.yaml"), "--eval", str(evdir), "--loadtest", str(tmp_path / "lt.json"))
    assert f"registered {unique_name} version 2" in out and "pending" in out

    out = cli("gate", unique_name, "2", code=4)
    assert f"{unique_name} version 2 is not approved (state: pending" in out

    out = cli("approve", unique_name, "2", "--by", "bob", "--reason", "recovery 92.5%")
    assert "entry 1 approved by bob" in out and "status approved" in out
    out = cli("reject", unique_name, "1", "--by", "bob", "--reason", "reference only")
    assert "entry 1 rejected by bob" in out

    rows = json.loads(cli("list", unique_name, "--json"))
    assert [(r["version"], r["status"], r["recipe"]) for r in rows] == [(1, "rejected", ""), (2, "approved", "gptq")]
    assert rows[1]["summary"]["recovery"] == pytest.approx(0.925) and rows[1]["summary"]["refusal"] == 0.9
    table = cli("list", unique_name)
    for cell in ("approved", "rejected", "92.5%", "0.900", "0.850", "236.0", "0.21"):
        assert cell in table

    shown = cli("show", unique_name, "2")
    for text in ("approved", f"{unique_name}/1 (baseline)  ->  {unique_name}/2 (gptq)", "task score", "0.740",
                 "0.800", "refusal (behaviour)", "tag arithmetic", "recovery 92.5%", "chain verified", '"bits": 4'):
        assert text in shown, text
    full = json.loads(cli("show", unique_name, "2", "--json"))
    assert full["recipe"] == [{"kind": "gptq", "bits": 4, "group_size": 64}]

    out = cli("gate", unique_name, "2", "--quality-floor", "0.9")
    assert "release allowed" in out and "recovery 0.925 >= floor 0.900" in out
    out = cli("gate", unique_name, "2", "--quality-floor", "0.95", code=4)
    assert "recovery 0.925" in out and "under the quality floor 0.950" in out
    decision = json.loads(cli("gate", unique_name, "1", "--json", code=4))
    assert decision["allowed"] is False and decision["status"] == "rejected"

    hist = json.loads(cli("history", unique_name, "2", "--json"))
    assert hist["chain_ok"] and [e["by"] for e in hist["entries"]] == ["bob"]

    (tmp_path / "new.json").write_text(json.dumps({"score": 0.6}))
    out = cli("update", unique_name, "2", "--eval", str(tmp_path / "new.json"))
    assert "results revision 2" in out and "stale" in out
    out = cli("gate", unique_name, "2", code=4)
    assert "approval is stale" in out and "under the quality floor 0.970" in out

    cli("verify", unique_name, "2")
    (var / "model.safetensors").write_bytes(b"tampered")
    out = cli("verify", unique_name, "2", code=3)
    assert "model.safetensors" in out and "altered" in out


def test_cli_errors_are_for_people(cli, tmp_path, unique_name):
    out = cli("show", "no-such-model-anywhere", "1", code=2)
    assert "No registered model 'no-such-model-anywhere'" in out
    out = cli("register", unique_name, str(tmp_path / "missing"), "--source-model", "x", code=2)
    assert "does not exist" in out
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    out = cli("register", unique_name, str(tmp_path / "m"), "--source-model", "x", "--eval", str(tmp_path / "bad.json"), code=2)
    assert "--eval" in out and "not valid JSON" in out


def test_importing_the_registry_does_not_import_mlflow():
    code = ("import sys, json, packager.registry, packager.cli.registry, packager.registry.gate; "
            "print(json.dumps([m for m in ('mlflow', 'torch', 'sqlalchemy') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
