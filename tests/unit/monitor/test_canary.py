"""The quality canary against the local OpenAI-compatible fake (tests/fakes/fake_openai.py), whose answer
to every request is " tok" repeated (max_tokens caps the count)."""
from __future__ import annotations

import json

import httpx
import pytest
from fakes.fake_openai import FakeOpenAIServer

from packager.errors import ConfigError
from packager.evaluate.suite import SuiteItem, parse_suite_text
from packager.monitor.canary import CanaryExporter, run_canary, run_canary_once, select_canary_items
from packager.monitor.scrape import parse_metrics_text

SUITE = [
    {"id": "exact-tok", "prompt": "Say tok.", "reference": "tok", "scorer": "exact", "tags": ["a"], "max_tokens": 1},
    {"id": "contains-tok", "prompt": "Say tok a few times.", "reference": "tok", "scorer": "contains", "tags": ["a"], "max_tokens": 3},
    {"id": "capital", "prompt": "Capital of France?", "reference": "Paris", "scorer": "contains", "tags": ["b"], "max_tokens": 4},
    {"id": "regex-number", "prompt": "A number?", "reference": "\\d+", "scorer": "regex", "tags": ["b"], "max_tokens": 4},
    # output "tok tok" vs reference "tok tok tok tok": precision 1, recall 0.5, F1 = 2/3
    {"id": "f1-partial", "prompt": "Four toks.", "reference": "tok tok tok tok", "scorer": "f1", "tags": ["c"], "max_tokens": 2},
    {"id": "choice-tok", "prompt": "tok or tik?", "reference": "tok", "scorer": "choice", "choices": ["tik", "tok"], "tags": ["c"], "max_tokens": 2},
]


def items() -> list[SuiteItem]:
    return parse_suite_text("\n".join(json.dumps(x) for x in SUITE), "test suite")


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer(ttft_ms=1, itl_ms=0, output_tokens=8) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _reset(fake):
    fake.configure(fail_every_n=0, fail_status=500)
    fake.reset()


def test_scores_each_item_with_its_scorer(fake):
    r = run_canary_once(fake.base_url, items(), concurrency=3)
    by_id = {x.id: x for x in r.items}
    assert r.model == "fake-model"  # discovered from /v1/models
    assert {i: x.result for i, x in by_id.items()} == {
        "exact-tok": "pass", "contains-tok": "pass", "capital": "fail", "regex-number": "fail",
        "f1-partial": "pass", "choice-tok": "pass"}
    assert by_id["f1-partial"].score == pytest.approx(2 / 3)
    assert by_id["contains-tok"].output == " tok tok tok"
    assert (r.n_pass, r.n_fail, r.n_error) == (4, 2, 0)
    assert r.pass_ratio == pytest.approx(4 / 6)
    assert r.mean_score == pytest.approx((1 + 1 + 0 + 0 + 2 / 3 + 1) / 6)
    assert [x.id for x in r.items] == [x["id"] for x in SUITE]  # suite order kept
    assert r.wall_time_s > 0 and r.finished_at_s >= r.started_at_s
    assert fake.stats()["requests_total"] >= 6


def test_pass_score_decides_graded_items(fake):
    r = run_canary_once(fake.base_url, items(), pass_score=0.8)
    assert {x.id: x.result for x in r.items}["f1-partial"] == "fail"
    assert r.n_pass == 3


def test_failed_requests_are_errors_and_do_not_pass(fake):
    fake.configure(fail_every_n=3)  # the 3rd and 6th chat requests answer HTTP 500
    r = run_canary_once(fake.base_url, items(), concurrency=1)
    errs = [x for x in r.items if x.result == "error"]
    assert [x.id for x in errs] == ["capital", "choice-tok"]
    assert errs[0].error.startswith("RuntimeError: HTTP 500") and errs[0].score is None
    assert (r.n_pass, r.n_fail, r.n_error) == (3, 1, 2)
    assert r.pass_ratio == pytest.approx(0.5)
    assert r.mean_score == pytest.approx((1 + 1 + 0 + 2 / 3) / 4)  # over the items that answered


def test_unknown_model_and_unreachable_endpoint(fake):
    r = run_canary_once(fake.base_url, items()[:2], model="not-served")
    assert r.n_error == 2 and r.pass_ratio == 0.0 and "HTTP 404" in r.items[0].error
    r = run_canary_once("http://127.0.0.1:1", items()[:2], timeout_s=2)
    assert r.n_error == 2 and r.model is None and r.mean_score is None
    assert r.items[0].error.startswith("could not list models: ConnectError")


def test_bad_arguments():
    with pytest.raises(ConfigError, match="no items"):
        run_canary_once("http://x", [])
    with pytest.raises(ConfigError, match=r"pass_score must be in \(0, 1\], got 0"):
        run_canary_once("http://x", items(), pass_score=0)
    with pytest.raises(ConfigError, match="min_pass_ratio must be in"):
        CanaryExporter("http://x", "s", min_pass_ratio=1.5)


def test_select_canary_items_round_robin_over_categories():
    its = items()  # categories a, a, b, b, c, c
    assert [x.id for x in select_canary_items(its, 4)] == ["exact-tok", "capital", "f1-partial", "contains-tok"]
    assert [x.id for x in select_canary_items(its, 100)] == ["exact-tok", "capital", "f1-partial", "contains-tok",
                                                              "regex-number", "choice-tok"]
    with pytest.raises(ConfigError, match="at least 1 item"):
        select_canary_items(its, 0)


def test_default_suite_subset_covers_every_category():
    from packager.evaluate.suite import load_suite

    suite = load_suite("default")
    picked = select_canary_items(suite.items, 16)
    assert len(picked) == 16 and len({x.id for x in picked}) == 16
    assert {x.category for x in picked} == {x.category for x in suite.items}
    per_cat = [sum(1 for x in picked if x.category == c) for c in {x.category for x in picked}]
    assert max(per_cat) - min(per_cat) <= 1  # balanced
    assert select_canary_items(suite.items, 16) == picked  # stable from run to run


def test_exporter_series_and_http(fake):
    r1 = run_canary_once(fake.base_url, items())
    fake.configure(fail_every_n=2)
    r2 = run_canary_once(fake.base_url, items(), concurrency=1)
    ex = CanaryExporter(endpoint=fake.base_url, suite="test", min_pass_ratio=0.6)
    before = parse_metrics_text(ex.text())
    lab = {"endpoint": fake.base_url, "suite": "test"}
    assert before.total("packager_canary_items_total", {"result": "error"}) == 0.0  # exported from the start
    assert before.total("packager_canary_pass_ratio") is None  # no run yet: no ratio, no timestamp
    assert before.total("packager_canary_min_pass_ratio", lab) == 0.6
    ex.record(r1)
    ex.record(r2)
    s = parse_metrics_text(ex.text())
    assert s.total("packager_canary_pass_ratio", lab) == pytest.approx(r2.pass_ratio)
    assert s.total("packager_canary_last_run_timestamp_seconds", lab) == pytest.approx(r2.finished_at_s)
    assert s.total("packager_canary_run_duration_seconds", lab) == pytest.approx(r2.wall_time_s)
    assert s.total("packager_canary_runs_total", lab) == 2.0
    for res in ("pass", "fail", "error"):
        want = getattr(r1, f"n_{res}") + getattr(r2, f"n_{res}")
        assert s.total("packager_canary_items_total", {**lab, "result": res}) == want
    assert s.total("packager_canary_items_total", {"result": "error"}) == r2.n_error == 3
    port = ex.serve(0, "127.0.0.1")
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert parse_metrics_text(body).total("packager_canary_runs_total") == 2.0
    finally:
        ex.close()


def test_run_canary_loop_keeps_the_interval(fake):
    slept: list[float] = []
    seen = []
    ex = CanaryExporter(endpoint=fake.base_url, suite="test")
    last = run_canary(fake.base_url, items(), ex, interval_s=30.0, iterations=3, on_result=seen.append,
                      sleep=slept.append)
    assert len(seen) == 3 and last is seen[-1]
    assert len(slept) == 2 and all(25.0 < s <= 30.0 for s in slept)  # interval minus the run's time
    assert parse_metrics_text(ex.text()).total("packager_canary_runs_total") == 3.0
    with pytest.raises(ConfigError, match="--iterations must be >= 1"):
        run_canary(fake.base_url, items(), ex, iterations=0)
    with pytest.raises(ConfigError, match="--interval-s must be > 0"):
        run_canary(fake.base_url, items(), ex, interval_s=0)
