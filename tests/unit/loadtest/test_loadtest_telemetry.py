"""Server telemetry during a load test: the target's /metrics, scraped and summed up per phase."""
from __future__ import annotations

from packager.loadtest.telemetry import TelemetryScraper, phase_windows, summarize_telemetry, telemetry_line


def test_gauges_are_averaged_and_counters_increase_per_phase():
    samples = [
        (0.5, {"requests_running": 0.0, "preemptions": 10.0}),
        (1.5, {"requests_running": 2.0, "requests_waiting": 1.0, "kv_cache_usage": 0.25, "preemptions": 12.0}),
        (2.5, {"requests_running": 4.0, "requests_waiting": 3.0, "kv_cache_usage": 0.75, "preemptions": 15.0}),
        (3.5, {"requests_running": 1.0, "kv_cache_usage": 0.5, "preemptions": 2.0}),  # the server restarted
    ]
    t = summarize_telemetry(samples, [(0, "4 users", 1.0, 3.0), (1, "8 users", 3.0, 4.0)], None, 1.0)
    p0, p1 = t["phases"]
    assert p0["scrapes"] == 2 and p0["requests_running"] == {"mean": 3.0, "max": 4.0}
    assert p0["kv_cache_usage"] == {"mean": 0.5, "max": 0.75} and p0["requests_waiting"]["max"] == 3.0
    assert p0["preemptions"] == 5.0  # 10 before the phase -> 15 at its last scrape
    assert p1["preemptions"] == 2.0 and "requests_waiting" not in p1  # a reset counts the new value
    assert t["series"] == ["kv_cache_usage", "preemptions", "requests_running", "requests_waiting"]
    line = telemetry_line(t)
    assert "4 users: KV cache max 75%, running max 4, waiting max 3, preemptions 5 (2 scrapes)" in line


def test_no_metrics_page_is_a_note_not_a_failure():
    t = summarize_telemetry([], [(0, "x", 0.0, 1.0)], "Could not read http://127.0.0.1:9/metrics", 1.0, 3)
    assert t["phases"] == [] and t["failures"] == 3 and "no server telemetry" in t["note"]
    assert telemetry_line(t).startswith("no server telemetry")
    s = TelemetryScraper("http://127.0.0.1:9", interval_s=0.05, timeout_s=0.5)  # nothing listens on port 9
    s.start()
    import time

    time.sleep(0.3)
    s.stop()
    assert not s.is_alive() and s.samples == [] and s.failures >= 1 and "127.0.0.1:9/metrics" in (s.error or "")


def test_phase_windows_from_records():
    plan = {"phases": [{"index": 0, "label": "a"}, {"index": 1, "label": "b"}]}
    sums = [{"phase": 0, "start_unix": 10.0, "dispatch_end_unix": 12.0}]
    reqs = [{"phase": 0, "t_start_unix": 10.1, "t_end_unix": 12.5}, {"phase": 1, "t_start_unix": 13.0,
                                                                      "t_end_unix": 14.0}]
    assert phase_windows(plan, reqs, sums) == [(0, "a", 10.0, 12.5), (1, "b", 13.0, 14.0)]


def test_a_load_test_records_what_the_server_reported(fake_server, tmp_path, run_lt):
    fake_server.configure(ttft_ms=100, itl_ms=20, output_tokens=10)
    res = run_lt(fake_server.base_url, tmp_path / "lt", prompt_format="chat", telemetry_interval_s=0.2,
                 profile={"kind": "concurrency", "users": 3, "duration_s": 2})
    t = res.telemetry
    assert t is not None and t["note"] is None and t["scrapes"] >= 3
    assert "requests_running" in t["series"] and "requests_waiting" in t["series"]
    ph = t["phases"][0]
    assert ph["scrapes"] >= 1 and 0 <= ph["requests_running"]["mean"] <= ph["requests_running"]["max"] <= 3
    off = run_lt(fake_server.base_url, tmp_path / "off", prompt_format="chat", telemetry_interval_s=0,
                 profile={"kind": "concurrency", "users": 1, "duration_s": 1})
    assert off.telemetry is None
