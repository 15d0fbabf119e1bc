"""What the server itself reported while a load test ran: its `/metrics` page, scraped every interval, summed
up per phase. It tells why a load failed its SLOs: a full KV cache, a queue, preemptions, busy slots.

    scraper = TelemetryScraper(target_url, interval_s=1.0); scraper.start()
    ... the load test ...
    scraper.stop()
    telemetry = summarize_telemetry(scraper.samples, phase_windows, scraper.error)

Gauges are averaged and maxed over the scrapes taken inside a phase; counters give their increase from the last
scrape before the phase to the last one inside it (a decrease is a restart, as PromQL's increase()). Series
come from vLLM (directly, or merged into a packager bento's page), llama.cpp's llama-server, and a bento's own
packager_* series. A target without a readable `/metrics` gives no telemetry and a note, never a failed test.
The scraper uses the client's key, headers and TLS settings (packager.core.access), like every client.
"""
from __future__ import annotations

import threading
from typing import Any

# name in the result -> the series that give it (the first one a page has wins)
GAUGES: dict[str, tuple[str, ...]] = {
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "llamacpp:kv_cache_usage_ratio"),
    "requests_running": ("vllm:num_requests_running", "llamacpp:requests_processing"),
    "requests_waiting": ("vllm:num_requests_waiting", "llamacpp:requests_deferred"),
}
COUNTERS: dict[str, tuple[str, ...]] = {
    "preemptions": ("vllm:num_preemptions_total",),
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total",),
    "prefix_cache_queries": ("vllm:prefix_cache_queries_total",),
    "bento_requests": ("packager_requests_total",),
    "bento_output_tokens": ("packager_output_tokens_total",),
    "bento_refused_requests": ("packager_refused_requests_total",),
}
Sample = tuple[float, dict[str, float]]  # (unix time of the scrape, figure name -> value)


def read_figures(scrape: Any) -> dict[str, float]:
    """The GAUGES and COUNTERS figures one scrape holds (summed over label sets, e.g. one per engine)."""
    out: dict[str, float] = {}
    for table in (GAUGES, COUNTERS):
        for name, series in table.items():
            for s in series:
                v = scrape.total(s)
                if v is not None:
                    out[name] = v
                    break
    return out


class TelemetryScraper(threading.Thread):
    """Scrapes `<target>/metrics` every `interval_s` until stopped; keeps (time, figures) samples. The first
    failure that leaves no sample is kept in `error`; later failures are counted."""

    def __init__(self, target_url: str, interval_s: float = 1.0, timeout_s: float = 5.0):
        super().__init__(name="loadtest-telemetry", daemon=True)
        self.url = target_url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.samples: list[Sample] = []
        self.failures = 0
        self.error: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        from packager.monitor.scrape import ScrapeError, fetch_metrics, scrape_client

        client = scrape_client()
        try:
            while not self._halt.is_set():
                try:
                    scrape = fetch_metrics(self.url, timeout_s=self.timeout_s, client=client)
                    self.samples.append((scrape.taken_at_s, read_figures(scrape)))
                except ScrapeError as e:
                    self.failures += 1
                    if not self.samples and self.error is None:
                        self.error = str(e)
                self._halt.wait(self.interval_s)
        finally:
            client.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(self.timeout_s + 5)


def _phase_figures(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    inside = [f for t, f in samples if start <= t <= end]
    before = [f for t, f in samples if t < start]
    out: dict[str, Any] = {"scrapes": len(inside)}
    for name in GAUGES:
        vals = [f[name] for f in inside if name in f]
        if vals:
            out[name] = {"mean": sum(vals) / len(vals), "max": max(vals)}
    for name in COUNTERS:
        vals = [f[name] for f in inside if name in f]
        if not vals:
            continue
        first = next((f[name] for f in reversed(before) if name in f), None)
        base = first if first is not None else vals[0]
        inc, prev = 0.0, base
        for v in vals:
            inc += v - prev if v >= prev else v  # a decrease is a restart: the whole new value
            prev = v
        out[name] = inc
    return out


def summarize_telemetry(samples: list[Sample], windows: list[tuple[int, str, float, float]], error: str | None,
                        interval_s: float, failures: int = 0) -> dict[str, Any]:
    """{"interval_s", "scrapes", "failures", "series" (figures seen), "phases": [{index, label, ...}], "note"}."""
    seen = sorted({k for _, f in samples for k in f})
    note = None
    if not samples:
        note = f"no server telemetry: {error or 'the target answered no metrics page'}"
    elif not seen:
        note = "the target's /metrics has none of the series packager reads (vLLM, llama.cpp, packager bento)"
    phases = [{"index": i, "label": label, **_phase_figures(samples, start, end)} for i, label, start, end in windows]
    return {"interval_s": interval_s, "scrapes": len(samples), "failures": failures, "series": seen,
            "phases": phases if samples else [], "note": note}


def phase_windows(plan: dict, records: list[dict], sums: list[dict]) -> list[tuple[int, str, float, float]]:
    """(index, label, start, end) of each phase: its shares' start to the last completion or dispatch end."""
    out = []
    for ph in plan["phases"]:
        k = ph["index"]
        starts = [s["start_unix"] for s in sums if s.get("phase") == k and s.get("start_unix") is not None]
        reqs = [r for r in records if r.get("phase") == k]
        ends = [s["dispatch_end_unix"] for s in sums if s.get("phase") == k and s.get("dispatch_end_unix")]
        ends += [r["t_end_unix"] for r in reqs if r.get("t_end_unix") is not None]
        start = min(starts) if starts else min((r["t_start_unix"] for r in reqs), default=None)
        if start is None:
            continue
        out.append((k, ph["label"], start, max(ends + [start])))
    return out


def telemetry_line(t: dict[str, Any]) -> str:
    """One summary line per phase for the terminal."""
    if t.get("note") and not t.get("phases"):
        return str(t["note"])
    parts = []
    for ph in t["phases"]:
        bits = []
        if "kv_cache_usage" in ph:
            bits.append(f"KV cache max {ph['kv_cache_usage']['max']:.0%}")
        if "requests_running" in ph:
            bits.append(f"running max {ph['requests_running']['max']:g}")
        if "requests_waiting" in ph:
            bits.append(f"waiting max {ph['requests_waiting']['max']:g}")
        if "preemptions" in ph:
            bits.append(f"preemptions {ph['preemptions']:g}")
        if "bento_refused_requests" in ph:
            bits.append(f"refused by the bento {ph['bento_refused_requests']:g}")
        parts.append(f"{ph['label']}: {', '.join(bits) if bits else 'no figures'} ({ph['scrapes']} scrapes)")
    return "Server during the load: " + "; ".join(parts)
