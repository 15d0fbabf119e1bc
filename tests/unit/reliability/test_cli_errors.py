"""Bad input to the CLI: a clear error (what was wrong, with the value, what to do), a non-zero exit, no
traceback, and nothing written. Each case runs the real `packager` command in a subprocess (no server).

"Nothing written" is checked by listing the working directory (the default output location) and the
--out directory before and after the command.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CLOSED_URL = "http://127.0.0.1:9"  # discard port: nothing listens there; the commands must fail before a request


def run_cli(cwd: Path, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "PACKAGER_OUTPUT_DIR": str(cwd / "runs" / "latest")}
    return subprocess.run([sys.executable, "-m", "packager.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def check_refused(cp: subprocess.CompletedProcess, before: set[str], cwd: Path, *needles: str, code: int = 2) -> str:
    """The command exited with `code`, printed an error naming every needle, no traceback, wrote nothing."""
    err = one_line(cp.stderr)
    assert cp.returncode == code, (cp.returncode, cp.stdout[-2000:], cp.stderr[-3000:])
    assert "Traceback" not in cp.stderr, cp.stderr[-3000:]
    assert err.startswith("error:") or "error:" in err, err
    for n in needles:
        assert n in err, (n, err)
    assert tree(cwd) == before, sorted(tree(cwd) - before)
    return err


@pytest.fixture
def work(tmp_path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


# ----- missing model ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["compress", "{missing}", "--recipe", "w8a8-int8", "--no-eval", "--out", "{work}/out"],
    ["evaluate", "{missing}", "--out", "{work}/out"],
    ["build", "{missing}"],
])
def test_missing_model_is_named(work, command):
    missing = str(work / "no-such-model")
    args = [a.format(missing=missing, work=work) for a in command]
    before = tree(work)
    err = check_refused(run_cli(work, *args), before, work, f"Model '{missing}' was not found", "no such directory")
    assert "out" not in tree(work)
    assert err.count("error:") == 1


# ----- unreadable or invalid suite --------------------------------------------------------------------------------
def _suite_dir(work: Path) -> tuple[str, str]:
    (work / "suite-is-a-dir").mkdir()
    return "suite-is-a-dir", "Suite file suite-is-a-dir cannot be read: Is a directory"


def _suite_missing(work: Path) -> tuple[str, str]:
    return "nope.jsonl", "Suite file nope.jsonl does not exist. Built-in suites: default, behaviour"


def _suite_binary(work: Path) -> tuple[str, str]:
    (work / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    return "binary.jsonl", "binary.jsonl is not UTF-8 text"


def _suite_bad_json(work: Path) -> tuple[str, str]:
    (work / "badjson.jsonl").write_text('{"id": "a", "prompt": "2+2?", "reference": "4", "scorer": "exact"}\n{"id": \n')
    return "badjson.jsonl", "badjson.jsonl, line 2: not valid JSON"


def _suite_missing_field(work: Path) -> tuple[str, str]:
    (work / "noref.jsonl").write_text('{"id": "a", "prompt": "2+2?", "scorer": "exact"}\n')
    return "noref.jsonl", "noref.jsonl, line 1, field 'reference': Field required"


def _suite_unknown_scorer(work: Path) -> tuple[str, str]:
    (work / "scorer.jsonl").write_text('{"id": "a", "prompt": "2+2?", "reference": "4", "scorer": "vibes"}\n')
    return "scorer.jsonl", "scorer.jsonl, line 1, field 'scorer'"


def _suite_empty(work: Path) -> tuple[str, str]:
    (work / "empty.jsonl").write_text("# only a comment\n\n")
    return "empty.jsonl", "empty.jsonl holds no items"


@pytest.mark.parametrize("make", [_suite_dir, _suite_missing, _suite_binary, _suite_bad_json, _suite_missing_field,
                                  _suite_unknown_scorer, _suite_empty])
def test_bad_suite_is_refused_before_any_request(work, make):
    suite, needle = make(work)
    before = tree(work)
    check_refused(run_cli(work, "evaluate", CLOSED_URL, "--suite", suite, "--out", str(work / "out")), before, work,
                  needle)


# ----- bad recipes ------------------------------------------------------------------------------------------------
def _write(work: Path, name: str, text: str) -> str:
    (work / name).write_text(text)
    return name


def test_recipe_with_unknown_method_lists_the_known_ones(work, tiny_llama_dir):
    recipe = _write(work, "magic.yaml", "name: magic\nstages:\n  - kind: magic_quant\n")
    before = tree(work)
    check_refused(run_cli(work, "compress", str(tiny_llama_dir), "--recipe", recipe, "--no-eval", "--out", "out"),
                  before, work, "stages[0].kind: unknown compression method 'magic_quant'",
                  "Known kinds: distill, fp8, gguf, gptq, prune, w8a8_int8")


@pytest.mark.parametrize("group_size, needle", [
    (48, "group_size 48 does not divide hidden_size 64"),  # the tiny model: hidden 64, intermediate 128
    (0, "group_size must be -1 (one group per row) or a positive integer, got 0"),
    ("sixty-four", "stages[0] (gptq).group_size"),
])
def test_recipe_with_impossible_group_size(work, tiny_llama_dir, group_size, needle):
    recipe = _write(work, "gptq-bad.yaml", f"name: gptq-bad\nstages:\n  - kind: gptq\n    group_size: {group_size}\n")
    before = tree(work)
    err = check_refused(run_cli(work, "compress", str(tiny_llama_dir), "--recipe", recipe, "--no-eval", "--out", "out"),
                        before, work, needle)
    if group_size == 48:
        assert "use one of 32, 64" in err  # what to do instead


def test_recipe_with_unknown_field_and_misplaced_quantization(work, tiny_llama_dir):
    recipe = _write(work, "typo.yaml", "name: typo\nstages:\n  - kind: w8a8_int8\n    smoothquant_alfa: 0.5\n")
    before = tree(work)
    check_refused(run_cli(work, "compress", str(tiny_llama_dir), "--recipe", recipe, "--no-eval", "--out", "out"),
                  before, work, "smoothquant_alfa", "Extra inputs are not permitted")
    recipe = _write(work, "order.yaml", "name: order\nstages:\n  - kind: w8a8_int8\n  - kind: prune\n    target_layers: 2\n")
    before = tree(work)
    check_refused(run_cli(work, "compress", str(tiny_llama_dir), "--recipe", recipe, "--no-eval", "--out", "out"),
                  before, work, "Put quantization last")


def test_missing_recipe_file_and_unknown_builtin(work, tiny_llama_dir):
    before = tree(work)
    check_refused(run_cli(work, "compress", str(tiny_llama_dir), "--recipe", "missing.yaml", "--no-eval", "--out", "out"),
                  before, work, "Recipe file missing.yaml does not exist", "Built-in recipes:")
    check_refused(run_cli(work, "compress", str(tiny_llama_dir), "--recipe", "w3a3-magic", "--no-eval", "--out", "out"),
                  before, work, "Unknown recipe 'w3a3-magic'", "w8a8-int8")


# ----- prices -----------------------------------------------------------------------------------------------------
def test_price_table_with_a_negative_price(work):
    table = _write(work, "prices.yaml", "sources: {S1: my invoice}\ninstances:\n"
                   "  - {provider: aws, name: c7i.xlarge, usd_per_hour: 0.1785, source: S1}\n"
                   "  - {provider: aws, name: cheap.box, usd_per_hour: -0.5, source: S1}\n")
    before = tree(work)
    check_refused(run_cli(work, "loadtest", "--target", CLOSED_URL, "--price-table", table, "--instance", "c7i.xlarge",
                          "--out", "lt"), before, work, "Price table prices.yaml is not valid",
                  "instances.1.usd_per_hour", "greater than or equal to 0", "(got -0.5)")


def test_negative_hourly_price_flag_and_config(work):
    before = tree(work)
    check_refused(run_cli(work, "loadtest", "--target", CLOSED_URL, "--usd-per-hour", "-1", "--out", "lt"),
                  before, work, "pricing.usd_per_hour", "(got -1.0)")
    cfg = _write(work, "release.yaml", "pricing: {usd_per_hour: -2}\nrecipes: [w8a8-int8]\n")
    before = tree(work)
    check_refused(run_cli(work, "release", "--config", cfg, "--out", "run"), before, work,
                  "release.yaml is not valid", "pricing.usd_per_hour", "(got -2)")


def test_unknown_price_instance_suggests_close_names(work):
    before = tree(work)
    check_refused(run_cli(work, "loadtest", "--target", CLOSED_URL, "--instance", "c7i.xlarg", "--out", "lt"),
                  before, work, "Unknown instance 'c7i.xlarg'", "Close names: c7i.xlarge")


# ----- run configuration --------------------------------------------------------------------------------------------
def test_release_config_with_unknown_key_and_wrong_type(work):
    cfg = _write(work, "release.yaml", "recipes: [w8a8-int8]\neval: {max_itmes: 5}\nquality_floor: high\n")
    before = tree(work)
    check_refused(run_cli(work, "release", "--config", cfg), before, work, "eval.max_itmes",
                  "Extra inputs are not permitted", "quality_floor", "(got 'high')")
    check_refused(run_cli(work, "release", "--config", "missing.yaml"), before, work,
                  "Configuration file missing.yaml does not exist")
