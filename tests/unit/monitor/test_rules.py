"""The shipped Prometheus configuration, rules and Grafana dashboard (monitoring/).

promtool comes from the Debian package `prometheus` (CI installs it); without it the promtool tests
skip and say so. The structural checks below run everywhere.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from packager.config import SLOConfig

ROOT = Path(__file__).resolve().parents[3]
MON = ROOT / "monitoring"
RULES = sorted((MON / "rules").glob("*.yml"))
RULE_TESTS = sorted((MON / "tests").glob("*.yml"))
DASHBOARD = MON / "grafana" / "packager-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install -y prometheus gives /usr/bin/promtool)")

# What the bento and the canary export (issue 8); a rule or panel naming anything else is a typo.
EXPORTED = {
    "packager_ttft_seconds_bucket", "packager_tpot_seconds_bucket", "packager_e2e_seconds_bucket",
    "packager_input_tokens_total", "packager_output_tokens_total", "packager_requests_total", "packager_usd_per_hour",
    "packager_canary_pass_ratio", "packager_canary_min_pass_ratio", "packager_canary_last_run_timestamp_seconds",
    "packager_canary_items_total", "packager_canary_runs_total", "packager_canary_run_duration_seconds",
}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=MON)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def rules_of(path: Path) -> list[dict]:
    return [r for g in load(path)["groups"] for r in g["rules"]]


ALERTS = {r["alert"]: r for r in rules_of(MON / "rules" / "packager-alerts.yml")}
RECORDED = {r["record"] for r in rules_of(MON / "rules" / "packager-recording.yml")}


@needs_promtool
def test_promtool_check_config_and_rules():
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 2 rule files found" in r.stdout
    r = promtool("check", "rules", *[str(p.relative_to(MON)) for p in RULES])
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(RECORDED)} rules found" in r.stdout and f"SUCCESS: {len(ALERTS)} rules found" in r.stdout


@needs_promtool
def test_promtool_test_rules():
    r = promtool("test", "rules", *[str(p.relative_to(MON)) for p in RULE_TESTS])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(RULE_TESTS)


@needs_promtool
def test_promtool_test_catches_a_wrong_threshold(tmp_path):
    """The unit tests really pin the thresholds: with the TTFT limit moved to 5 s they fail."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    for p in RULES:
        text = p.read_text()
        if p.name == "packager-alerts.yml":
            text = text.replace("packager:ttft_seconds:p95_rate5m > 2", "packager:ttft_seconds:p95_rate5m > 5")
        (tmp_path / "rules" / p.name).write_text(text)
    shutil.copy(MON / "tests" / "packager-alerts_test.yml", tmp_path / "tests")
    r = subprocess.run([PROMTOOL, "test", "rules", "tests/packager-alerts_test.yml"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and "PackagerTTFTP95AboveSLO" in r.stdout + r.stderr


def test_every_alert_is_tested_firing_and_silent():
    fired: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in load(path)["tests"]:
            for t in case.get("alert_rule_test", []):
                (fired if t.get("exp_alerts") else silent).add(t["alertname"])
    assert set(ALERTS) == {"PackagerEndpointDown", "PackagerTTFTP95AboveSLO", "PackagerTPOTP95AboveSLO",
                           "PackagerHighErrorRate", "PackagerCostAboveBudget", "PackagerCanaryFailing",
                           "PackagerCanaryStale"}
    assert set(ALERTS) - fired == set(), "alerts never made to fire"
    assert set(ALERTS) - silent == set(), "alerts never checked silent on healthy series"


def test_slo_thresholds_match_slo_config_defaults():
    slo = SLOConfig()
    ttft = re.fullmatch(r"packager:ttft_seconds:p95_rate5m > ([0-9.]+)", ALERTS["PackagerTTFTP95AboveSLO"]["expr"].strip())
    tpot = re.fullmatch(r"packager:tpot_seconds:p95_rate5m > ([0-9.]+)", ALERTS["PackagerTPOTP95AboveSLO"]["expr"].strip())
    assert ttft and float(ttft.group(1)) * 1000 == slo.ttft_ms == 2000
    assert tpot and float(tpot.group(1)) * 1000 == slo.tpot_ms == 250
    readme = (MON / "README.md").read_text()
    assert "**2 s** (`SLOConfig.ttft_ms` = 2000)" in readme and "**250 ms** (`SLOConfig.tpot_ms` = 250)" in readme


def test_alerts_have_severity_summary_and_description():
    for name, r in ALERTS.items():
        assert r["labels"]["severity"] in ("page", "ticket"), name
        assert r["annotations"]["summary"] and r["annotations"]["description"], name
        assert "for" in r, name


def test_alert_job_names_match_the_scrape_config():
    jobs = {c["job_name"] for c in load(MON / "prometheus.yml")["scrape_configs"]}
    used = set()
    for r in ALERTS.values():
        used |= set(re.findall(r'up\{job="([^"]+)"\}', r["expr"]))
    assert used == {"packager", "packager-canary"} and used <= jobs
    assert load(MON / "prometheus.yml")["rule_files"] == ["rules/packager-recording.yml", "rules/packager-alerts.yml"]


def _names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # drop string literals (label values, regexes)
    return {m for m in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if m.startswith(("packager", "vllm:"))}


def test_rules_read_only_exported_or_recorded_series():
    for path in RULES:
        for r in rules_of(path):
            unknown = _names(r["expr"]) - EXPORTED - RECORDED
            assert not unknown, f"{r.get('record') or r.get('alert')} reads unknown series {unknown}"


def _dashboard_exprs(d: dict) -> list[str]:
    return [t["expr"] for p in d["panels"] for t in p.get("targets", [])]


def test_dashboard_is_valid_grafana_json():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] == "packager-endpoint" and d["schemaVersion"] >= 36 and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}" and t["refId"] and t["expr"]
    variables = {v["name"] for v in d["templating"]["list"]}
    assert variables == {"datasource", "model", "registry_version", "backend", "hardware"}
    titles = " | ".join(p["title"] for p in d["panels"])
    for want in ("Time to first token", "Time per output token", "End-to-end latency", "Error ratio",
                 "USD per 1M output tokens", "Canary pass ratio", "Requests by outcome", "Tokens / s"):
        assert want in titles


def test_dashboard_covers_every_figure_and_names_only_known_series():
    d = json.loads(DASHBOARD.read_text())
    used = set().union(*(_names(e) for e in _dashboard_exprs(d)))
    packager_used = {n for n in used if n.startswith("packager")}
    assert packager_used - EXPORTED - RECORDED == set()
    for want in ("packager:requests:rate5m", "packager:output_tokens:rate5m", "packager:usd_per_million_output_tokens:rate5m",
                 "packager:ttft_seconds:p95_rate5m", "packager:tpot_seconds:p95_rate5m", "packager:e2e_seconds:p95_rate5m",
                 "packager:request_errors:ratio_rate5m", "packager_canary_pass_ratio",
                 "packager_canary_last_run_timestamp_seconds"):
        assert want in used, want


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    """Every panel query parses: promtool checks them as recording rules (Grafana's $variables are
    substituted the way Grafana would)."""
    d = json.loads(DASHBOARD.read_text())
    exprs = [e.replace("$__rate_interval", "1m").replace("$model", ".*").replace("$registry_version", ".*")
             .replace("$backend", ".*").replace("$hardware", ".*") for e in _dashboard_exprs(d)]
    assert len(exprs) >= 20 and not any("$" in e for e in exprs)
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "dash.yml").write_text(yaml.safe_dump(rules))
    r = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "dash.yml")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
