"""Quality canary: send a small golden set to a live endpoint at an interval and export its pass rate.

Each item of a task suite (packager.evaluate.suite) is sent as an OpenAI chat completion with greedy
decoding (temperature 0) and scored with its scorer (packager.evaluate.scorers.SCORERS). An item passes
when its score is at least `pass_score` (scorers exact/contains/regex/choice give 0 or 1; f1 and rouge_l
are graded). A request that fails (connection error, HTTP error, timeout, malformed answer) is an
`error` and does not pass: an endpoint that is down fails its canary.

Exported on the canary's own /metrics (prometheus-client), labelled {endpoint, suite}:

    packager_canary_pass_ratio                   passed / items of the last run
    packager_canary_min_pass_ratio               the floor the alert PackagerCanaryFailing compares to
    packager_canary_last_run_timestamp_seconds   unix time the last run finished (PackagerCanaryStale)
    packager_canary_run_duration_seconds         wall time of the last run
    packager_canary_items_total{result}          items by result: pass, fail, error
    packager_canary_runs_total                   completed runs
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from packager.errors import ConfigError, PackagerError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from packager.evaluate.suite import SuiteItem

DEFAULT_MAX_ITEMS = 16
DEFAULT_PORT = 9490
RESULTS = ("pass", "fail", "error")


class CanaryError(PackagerError):
    """The canary cannot run (bad arguments, port in use)."""


class CanaryItemResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    category: str
    scorer: str
    result: Literal["pass", "fail", "error"]
    score: float | None
    latency_s: float
    output: str | None = None
    error: str | None = None


class CanaryResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str
    model: str | None
    started_at_s: float
    finished_at_s: float
    wall_time_s: float
    pass_score: float
    items: list[CanaryItemResult]
    n_pass: int
    n_fail: int
    n_error: int
    pass_ratio: float = Field(ge=0.0, le=1.0)
    mean_score: float | None  # over items that answered

    @property
    def n_items(self) -> int:
        return len(self.items)


def select_canary_items(items: Sequence["SuiteItem"], max_items: int = DEFAULT_MAX_ITEMS) -> list["SuiteItem"]:
    """A stable subset that covers every category: take items round-robin over categories (in order of
    first appearance), keeping the suite's order inside each category."""
    if max_items < 1:
        raise ConfigError(f"The canary needs at least 1 item; max_items is {max_items}.")
    by_cat: dict[str, list] = {}
    for it in items:
        by_cat.setdefault(it.category, []).append(it)
    out: list = []
    depth = 0
    while len(out) < max_items and any(depth < len(v) for v in by_cat.values()):
        for v in by_cat.values():
            if depth < len(v) and len(out) < max_items:
                out.append(v[depth])
        depth += 1
    return out


def discover_model(base_url: str, client, timeout_s: float) -> str:
    """The first model id the endpoint's /v1/models lists."""
    r = client.get(base_url.rstrip("/") + "/v1/models", timeout=timeout_s)
    r.raise_for_status()
    data = r.json().get("data") or []
    if not data:
        raise ValueError(f"{base_url}/v1/models lists no model")
    return str(data[0]["id"])


def _ask(client, base_url: str, model: str, item: "SuiteItem", timeout_s: float, fmt: str = "chat") -> str:
    from packager.core.prompt_format import answer_text, request_body

    path, prompt = request_body(fmt, item.chat_messages())
    r = client.post(base_url.rstrip("/") + path, timeout=timeout_s, json={
        "model": model, **prompt, "max_tokens": item.max_tokens, "temperature": 0.0, "stream": False,
    })
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    body = r.json()
    try:
        return answer_text(fmt, body["choices"][0])
    except (KeyError, IndexError, TypeError, AttributeError):
        raise RuntimeError(f"malformed completion: {str(body)[:200]}") from None


def run_canary_once(base_url: str, items: Sequence["SuiteItem"], model: str | None = None, timeout_s: float = 60.0,
                    pass_score: float = 0.5, concurrency: int = 2, client=None,
                    prompt_format: str = "chat") -> CanaryResult:
    """Send every item once, score it, and return the run's result. Never raises for endpoint failures:
    they are items with result 'error'."""
    import httpx

    from packager.core.access import http_options
    from packager.evaluate.scorers import SCORERS

    if not items:
        raise ConfigError("The canary was given no items; pass a suite with at least one item.")
    if not 0.0 < pass_score <= 1.0:
        raise ConfigError(f"pass_score must be in (0, 1], got {pass_score}.")
    if concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1, got {concurrency}.")
    scorers = {it.scorer: SCORERS.get(it.scorer) for it in items}
    own = client is None
    client = client or httpx.Client(**http_options())
    started = time.time()
    t0 = time.monotonic()
    try:
        model_err: str | None = None
        if model is None:
            try:
                model = discover_model(base_url, client, timeout_s)
            except Exception as e:  # endpoint down or not OpenAI-compatible: every item is an error
                model_err = f"could not list models: {type(e).__name__}: {e}"

        def one(item: "SuiteItem") -> CanaryItemResult:
            s = time.monotonic()
            if model_err is not None:
                return CanaryItemResult(id=item.id, category=item.category, scorer=item.scorer, result="error",
                                        score=None, latency_s=0.0, error=model_err)
            assert model is not None  # given, or discovered above: model_err is set when discovery failed
            try:
                out = _ask(client, base_url, model, item, timeout_s, prompt_format)
            except Exception as e:
                return CanaryItemResult(id=item.id, category=item.category, scorer=item.scorer, result="error",
                                        score=None, latency_s=time.monotonic() - s,
                                        error=f"{type(e).__name__}: {e}"[:300])
            score = float(scorers[item.scorer](out, item))
            return CanaryItemResult(id=item.id, category=item.category, scorer=item.scorer,
                                    result="pass" if score >= pass_score else "fail", score=score,
                                    latency_s=time.monotonic() - s, output=out[:500])

        with ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
            results = list(pool.map(one, items))
    finally:
        if own:
            client.close()
    n = {r: sum(1 for x in results if x.result == r) for r in RESULTS}
    answered = [x.score for x in results if x.score is not None]
    return CanaryResult(
        base_url=base_url, model=model, started_at_s=started, finished_at_s=time.time(),
        wall_time_s=time.monotonic() - t0, pass_score=pass_score, items=results,
        n_pass=n["pass"], n_fail=n["fail"], n_error=n["error"], pass_ratio=n["pass"] / len(results),
        mean_score=sum(answered) / len(answered) if answered else None,
    )


class CanaryExporter:
    """The canary's Prometheus series in a registry of its own, optionally served on /metrics."""

    def __init__(self, endpoint: str, suite: str, min_pass_ratio: float = 0.5):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        if not 0.0 <= min_pass_ratio <= 1.0:
            raise ConfigError(f"min_pass_ratio must be in [0, 1], got {min_pass_ratio}.")
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = {"endpoint": endpoint, "suite": suite}
        names = list(self.labels)
        self.pass_ratio = Gauge("packager_canary_pass_ratio", "Share of canary items that passed in the last run.",
                                names, registry=self.registry)
        self.min_pass_ratio = Gauge("packager_canary_min_pass_ratio",
                                    "Pass ratio below which the canary counts as failing (PackagerCanaryFailing).",
                                    names, registry=self.registry)
        self.last_run = Gauge("packager_canary_last_run_timestamp_seconds",
                              "Unix time the last canary run finished.", names, registry=self.registry)
        self.duration = Gauge("packager_canary_run_duration_seconds", "Wall time of the last canary run.",
                              names, registry=self.registry)
        self.items = Counter("packager_canary_items", "Canary items by result (pass, fail, error).",
                             names + ["result"], registry=self.registry)
        self.runs = Counter("packager_canary_runs", "Completed canary runs.", names, registry=self.registry)
        self.min_pass_ratio.labels(**self.labels).set(min_pass_ratio)
        for r in RESULTS:  # export zeros from the start so increase() sees the first errors
            self.items.labels(**self.labels, result=r)
        self.server: WSGIServer | None = None

    def record(self, result: CanaryResult) -> None:
        lab = self.labels
        self.pass_ratio.labels(**lab).set(result.pass_ratio)
        self.duration.labels(**lab).set(result.wall_time_s)
        for r, n in (("pass", result.n_pass), ("fail", result.n_fail), ("error", result.n_error)):
            self.items.labels(**lab, result=r).inc(n)
        self.runs.labels(**lab).inc()
        self.last_run.labels(**lab).set(result.finished_at_s)

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve /metrics on host:port (0 picks a free port); returns the port."""
        from prometheus_client import start_http_server

        try:
            self.server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise CanaryError(f"Cannot serve the canary's metrics on {host}:{port}: {e.strerror}. "
                              "Pick another --port (0 picks a free one).") from None
        return self.server.server_port

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def run_canary(base_url: str, items: Sequence["SuiteItem"], exporter: CanaryExporter, interval_s: float = 60.0,
               iterations: int | None = None, model: str | None = None, timeout_s: float = 60.0,
               pass_score: float = 0.5, on_result: Callable[[CanaryResult], None] | None = None,
               sleep: Callable[[float], None] = time.sleep, prompt_format: str = "chat") -> CanaryResult | None:
    """Run the canary every `interval_s` (start to start) `iterations` times (None: until interrupted);
    prompt_format: chat (/v1/chat/completions) or completion (raw prompts, /v1/completions, for base models)."""
    if interval_s <= 0:
        raise ConfigError(f"--interval-s must be > 0 seconds, got {interval_s}.")
    if iterations is not None and iterations < 1:
        raise ConfigError(f"--iterations must be >= 1 (or 0 for forever), got {iterations}.")
    last: CanaryResult | None = None
    done = 0
    while iterations is None or done < iterations:
        t0 = time.monotonic()
        last = run_canary_once(base_url, items, model=model, timeout_s=timeout_s, pass_score=pass_score,
                               prompt_format=prompt_format)
        if model is None and last.model is not None:
            model = last.model  # keep asking the same model from now on
        exporter.record(last)
        done += 1
        if on_result:
            on_result(last)
        if iterations is None or done < iterations:
            sleep(max(0.0, interval_s - (time.monotonic() - t0)))
    return last
