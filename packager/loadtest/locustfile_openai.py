"""Locustfile: an OpenAI-style STREAMING user driven by a packager load plan.

Never import this module in the packager process or under pytest: importing locust monkey-patches the
interpreter with gevent. packager runs it as `python -m locust -f <this file> --headless ...` in a
subprocess (packager.loadtest.runner), and so can you (see loadtests/README.md).

How it works
------------
packager writes a *plan* (JSON): the target, the model, a pool of chat requests and a list of phases.
Each locust process that runs the test (one local process, or each worker of a distributed run) runs ONE
`OpenAIStreamingUser`; that user is a dispatcher that executes the plan's phases for its *share*
(share k of W):

  * closed: `users` closed-loop greenlets (users split over the W shares), each sending its next request
    when the previous one ends;
  * open: arrivals at `rate_per_s` (rate/W per share; Poisson, or evenly spaced and interleaved across
    shares), OPEN LOOP: a dispatcher greenlet spawns one request greenlet per arrival and never waits for
    the server; an arrival that finds `max_in_flight` requests outstanding is dropped and counted;
  * schedule: explicit arrival offsets (bursts, trace replay; share k takes every W-th arrival), optionally
    over a Poisson background rate.

Every phase starts at a time agreed by all shares (a barrier through the locust master), dispatches for
`duration_s`, then waits at most `drain_timeout_s` for its in-flight requests (those still running are
cancelled and recorded as errors). Each request records: TTFT (request sent -> first content token), every
inter-token gap (ITL, one per content chunk), E2E, input and output tokens from the server's `usage`
(stream_options.include_usage), HTTP status and error. Records are JSON lines appended to the file named by
PACKAGER_LOADTEST_RECORDS; workers send theirs to the master through locust's message channel, so the
master's file holds every record even when workers run on other hosts.

Two modules next to this file hold the traffic: phase_dispatch.py (a phase's arrivals, closed users and drain)
and stream_request.py (one request's record, the event-stream reading, the error kinds). The locustfile loads
them by their path when locust loads it as a top-level module (see `_load_sibling`).

Environment: PACKAGER_LOADTEST_PLAN (the plan file, read by the master or the local process; workers get
the plan from the master), PACKAGER_LOADTEST_RECORDS (the records file, written by the master or the local
process), and those of packager.core.access: PACKAGER_API_KEY (sent as `Authorization: Bearer`),
PACKAGER_CLIENT_HEADERS (extra headers, a JSON object), PACKAGER_CA_BUNDLE and PACKAGER_TLS_VERIFY ("0": an https
target is not verified). Keys and headers travel only in the environment, never in the plan.

A request whose pooled keep-alive connection turns out closed before any answer byte arrives (the server
closed it while idle; the request never reached it) is sent once more on a fresh connection and recorded with
`retried: true`, not as a failure.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
import time
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import gevent
from gevent.event import AsyncResult
from geventhttpclient import HTTPClient
from geventhttpclient.response import HTTPConnectionClosed
from locust import User, events, task
from locust.runners import MasterRunner, WorkerRunner

PLAN_ENV = "PACKAGER_LOADTEST_PLAN"
RECORDS_ENV = "PACKAGER_LOADTEST_RECORDS"
PLAN_VERSION = 1
log = logging.getLogger("packager.locust")


def _load_sibling(name: str) -> ModuleType:
    """The module `name`.py next to this file, without needing the packager package or sys.path.

    Imported as packager.loadtest.locustfile_openai (loadtests/openai_streaming.py): the package's module.
    Loaded by `locust -f <this file>` as the top-level module `locustfile_openai`: loaded from its path, once,
    as `locustfile_openai_<name>`."""
    if __package__:
        return importlib.import_module(f"{__package__}.{name}")
    mod_name = f"{__name__}_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                         f"{name}.py"))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name}.py next to {__file__}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return mod


if TYPE_CHECKING:
    from packager.loadtest import phase_dispatch as _phase
    from packager.loadtest import stream_request as _req
else:
    _phase = _load_sibling("phase_dispatch")
    _req = _load_sibling("stream_request")
split_count = _phase.split_count


# --------------------------------------------------------------------------------------- helpers
def _fail_fast(environment, message: str) -> None:
    log.error(message)
    environment.process_exit_code = 2
    gevent.spawn_later(0.1, environment.runner.quit)


class _Coordinator:
    """Plan distribution, barriers and record collection across a master and its workers."""

    def __init__(self):
        self.plan: dict | None = None
        self.records_path: str | None = None
        self.records_file = None
        self.expected_shares = 1
        self.assigned: dict[str, int] = {}  # worker node id -> share index
        self.pending: dict[str, set[str]] = {}  # barrier name -> node ids waiting
        self.done: set[str] = set()
        self.go: dict[str, AsyncResult] = {}
        self.share: AsyncResult = AsyncResult()

    # master / local side
    def load_plan(self, environment) -> bool:
        path = os.environ.get(PLAN_ENV)
        rec = os.environ.get(RECORDS_ENV)
        if not path or not rec:
            _fail_fast(environment, f"set {PLAN_ENV} (the plan file) and {RECORDS_ENV} (the records file); "
                       "packager loadtest does this for you")
            return False
        try:
            with open(path) as f:
                plan = json.load(f)
        except (OSError, ValueError) as e:
            _fail_fast(environment, f"cannot read the plan {path}: {e}")
            return False
        if plan.get("plan_version") != PLAN_VERSION:
            _fail_fast(environment, f"plan {path} has version {plan.get('plan_version')}, expected {PLAN_VERSION}")
            return False
        if urlsplit(plan.get("target_url", "")).scheme not in ("http", "https"):
            _fail_fast(environment, f"target {plan.get('target_url')!r} is not an http(s) URL; refused")
            return False
        self.plan = plan
        self.expected_shares = int(plan.get("shares", 1))
        self.records_path = rec
        self.records_file = open(rec, "a", buffering=1 << 16)
        return True

    def write(self, records: list[dict]) -> None:
        f = self.records_file
        if f is None:
            return
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
        f.flush()

    def close(self) -> None:
        if self.records_file is not None:
            self.records_file.flush()
            os.fsync(self.records_file.fileno())
            self.records_file.close()
            self.records_file = None


COORD = _Coordinator()


@events.init.add_listener
def _on_init(environment, **_kw):
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        def on_plan(environment, msg, **kw):
            data = msg.data
            if data.get("share") is None:
                COORD.share.set((None, None, None))
                return
            COORD.plan = data["plan"]
            COORD.share.set((int(data["share"]), int(data["shares"]), float(data["start_at_unix"])))

        def on_go(environment, msg, **kw):
            COORD.go.setdefault(msg.data["name"], AsyncResult()).set(float(msg.data["start_at_unix"]))

        runner.register_message("packager_plan", on_plan)
        runner.register_message("packager_go", on_go)
        return

    if not COORD.load_plan(environment):
        return
    if isinstance(runner, MasterRunner):
        def on_plan_request(environment, msg, **kw):
            node = msg.node_id
            if node in COORD.assigned:
                return
            if len(COORD.assigned) >= COORD.expected_shares:
                log.warning("worker %s asked for a share but all %d are assigned; it stays idle",
                            node, COORD.expected_shares)
                environment.runner.send_message("packager_plan", {"share": None}, client_id=node)
                return
            COORD.assigned[node] = len(COORD.assigned)
            if len(COORD.assigned) == COORD.expected_shares:
                start_at = time.time() + 0.5
                for n, k in COORD.assigned.items():
                    environment.runner.send_message(
                        "packager_plan", {"plan": COORD.plan, "share": k, "shares": COORD.expected_shares,
                                          "start_at_unix": start_at}, client_id=n)

        def on_barrier(environment, msg, **kw):
            name = msg.data["name"]
            waiting = COORD.pending.setdefault(name, set())
            waiting.add(msg.node_id)
            if len(waiting) == COORD.expected_shares:
                start_at = time.time() + 0.2
                for n in waiting:
                    environment.runner.send_message("packager_go", {"name": name, "start_at_unix": start_at},
                                                    client_id=n)

        def on_records(environment, msg, **kw):
            COORD.write(msg.data)

        def on_done(environment, msg, **kw):
            COORD.done.add(msg.node_id)
            if len(COORD.done) >= COORD.expected_shares:
                COORD.close()
                gevent.spawn_later(0.2, environment.runner.quit)

        runner.register_message("packager_plan_request", on_plan_request)
        runner.register_message("packager_barrier", on_barrier)
        runner.register_message("packager_records", on_records)
        runner.register_message("packager_done", on_done)


@events.quitting.add_listener
def _on_quitting(environment, **_kw):
    COORD.close()


# ----------------------------------------------------------------------------------------- sinks
class _Sink:
    """Local: write records straight to the file. Worker: batch them to the master every 0.25 s."""

    def __init__(self, environment):
        self.env = environment
        self.worker = isinstance(environment.runner, WorkerRunner)
        self.buf: list[dict] = []
        self.flusher = gevent.spawn(self._loop) if self.worker else None

    def add(self, rec: dict) -> None:
        if self.worker:
            self.buf.append(rec)
        else:
            COORD.write([rec])

    def _loop(self) -> None:
        while True:
            gevent.sleep(0.25)
            self.flush()

    def flush(self) -> None:
        if self.buf:
            batch, self.buf = self.buf, []
            self.env.runner.send_message("packager_records", batch)

    def close(self) -> None:
        if self.flusher is not None:
            self.flusher.kill(block=False)
        self.flush()


# ------------------------------------------------------------------------------------- the user
class OpenAIStreamingUser(User):
    """One per locust process: runs the plan's phases for its share, then idles until the run ends."""

    # The plan decides the pacing; locust's own wait_time is never used (the task runs once).
    def wait_time(self):  # pragma: no cover - never reached
        return 3600.0

    @task
    def run_plan(self) -> None:
        env = self.environment
        runner = env.runner
        if isinstance(runner, WorkerRunner):
            runner.send_message("packager_plan_request", {})
            share, shares, start_at = COORD.share.get(timeout=120)
            if share is None:
                gevent.sleep(1e9)
        else:
            if COORD.plan is None:
                gevent.sleep(1e9)
            share, shares, start_at = 0, 1, time.time() + 0.1
        plan = COORD.plan
        sink = _Sink(env)
        try:
            assert plan is not None  # a worker gets its share after the plan; the master stops above without one
            _Driver(env, plan, share, shares, sink).run(start_at)
        except Exception as e:  # a bug here must not hang the run: record it and end this share
            log.exception("the load driver failed")
            sink.add({"type": "driver_error", "share": share, "error": repr(e)})
        sink.close()
        if isinstance(runner, WorkerRunner):
            runner.send_message("packager_done", {"share": share})
        else:
            COORD.close()
            gevent.spawn_later(0.1, runner.quit)
        gevent.sleep(1e9)


class _Driver:
    def __init__(self, env, plan: dict, share: int, shares: int, sink: _Sink):
        self.env = env
        self.plan = plan
        self.share = share
        self.shares = shares
        self.sink = sink
        self.requests = plan["requests"]
        # round-robin over the request pool, interleaved across shares, from pool_offset (a capacity-search probe
        # starts where the sweep stopped, so the server has not seen its prompts: no prefix-cache hits)
        self.cursor = int(plan.get("pool_offset", 0)) + share
        self.sent = 0
        self.cap = split_count(int(plan["max_requests"]), share, shares)
        self.timeout_s = float(plan["request_timeout_s"])
        self.drain_timeout_s = float(plan["drain_timeout_s"])
        self.seed = int(plan.get("seed", 0))
        url = urlsplit(plan["target_url"])
        self.path = url.path.rstrip("/") + plan.get("endpoint", "/v1/chat/completions")
        max_in_flight = max([int(p.get("max_in_flight") or 1) for p in plan["phases"]]
                            + [split_count(int(p.get("users") or 0), share, shares) for p in plan["phases"]] + [1])
        self.client = HTTPClient.from_url(plan["target_url"], concurrency=max_in_flight + 4,
                                          connection_timeout=min(30.0, self.timeout_s),
                                          network_timeout=self.timeout_s,
                                          headers={"Content-Type": "application/json", "Accept": "text/event-stream",
                                                   "User-Agent": "packager-loadtest", **_access_headers()},
                                          **_tls_options())
        self.model = plan["model"]
        self.in_flight = 0

    # ---- barrier: all shares start each phase at the same instant
    def barrier(self, name: str) -> float:
        runner = self.env.runner
        if not isinstance(runner, WorkerRunner):
            return time.time() + 0.05
        res = COORD.go.setdefault(name, AsyncResult())
        runner.send_message("packager_barrier", {"name": name})
        return res.get(timeout=self.drain_timeout_s + 600)

    def run(self, start_at: float) -> None:
        for i, ph in enumerate(self.plan["phases"]):
            t0 = start_at if i == 0 else self.barrier(f"phase-{i}")
            self.run_phase(ph, t0)

    def next_body(self, index: int | None = None) -> dict:
        if index is None:
            index = self.cursor % len(self.requests)
            self.cursor += self.shares
        body = dict(self.requests[index])
        body["model"] = self.model
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        return body

    def run_phase(self, ph: dict, t0: float) -> None:
        gevent.sleep(max(0.0, t0 - time.time()))
        _phase.Phase(self, ph, t0).run()

    def one_request(self, body: dict, phase: int, scheduled: float | None, first: bool = False,
                    user: int | None = None) -> None:
        self.in_flight += 1
        rec = _req.new_record(body, phase, self.share, scheduled)
        if user is not None:  # the closed-loop user that sent it (0 .. users - 1, over every share)
            rec["user"] = user
        if first:  # a closed-loop user's first request, its warm-up (plan.closed_phase)
            rec["first_of_user"] = True
        payload = json.dumps(body, separators=(",", ":")).encode()
        t0 = time.perf_counter()
        timing = _req.StreamTiming()
        resp = None
        exc: BaseException | None = None
        try:
            with gevent.Timeout(self.timeout_s):
                try:
                    resp = self.client.post(self.path, body=payload)
                except (HTTPConnectionClosed, ConnectionResetError, BrokenPipeError) as e:
                    # a pooled connection the server had closed while idle: no answer byte came back
                    rec["retried"] = True
                    rec["retry_error"] = f"{type(e).__name__}: {e}"[:200]
                    resp = self.client.post(self.path, body=payload)
                _req.read_response(resp, rec, timing)
        except (gevent.Timeout, gevent.GreenletExit, Exception) as e:  # noqa: BLE001 - recorded, never lost
            exc = e
            _req.record_exception(rec, e, self.timeout_s, self.drain_timeout_s)
        finally:
            if resp is not None:
                resp.release()
            self.in_flight -= 1
        t_end = time.perf_counter()
        _req.finish_record(rec, t0, t_end, timing.t_first)
        self.sink.add(rec)
        self.env.events.request.fire(
            request_type="POST", name="chat.completions" if "messages" in body else "completions",
            response_time=rec["e2e_ms"], response_length=int(rec["output_tokens"] or 0),
            exception=None if rec["ok"] else (exc or RuntimeError(rec["error_kind"])), context={})
        if isinstance(exc, gevent.GreenletExit):
            raise exc


def _access_headers() -> dict[str, str]:
    """The extra headers (PACKAGER_CLIENT_HEADERS) and `Authorization: Bearer KEY` (PACKAGER_API_KEY), as
    packager.core.access sets them: read from the environment so they never enter the plan or a command line."""
    try:
        extra = json.loads(os.environ.get("PACKAGER_CLIENT_HEADERS") or "{}")
    except ValueError:
        extra = {}
    out = {str(k): str(v) for k, v in extra.items()} if isinstance(extra, dict) else {}
    key = os.environ.get("PACKAGER_API_KEY", "").strip()
    if key:
        out["Authorization"] = f"Bearer {key}"
    return out


def _unverified_context(cafile=None, **_kw):
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _tls_options() -> dict:
    """geventhttpclient's TLS arguments: the CA bundle (PACKAGER_CA_BUNDLE), or no verification at all
    (PACKAGER_TLS_VERIFY=0); neither: the default CAs. Ignored for an http target."""
    if os.environ.get("PACKAGER_TLS_VERIFY", "1") == "0":
        return {"insecure": True, "ssl_context_factory": _unverified_context}
    bundle = os.environ.get("PACKAGER_CA_BUNDLE")
    return {"ssl_options": {"ca_certs": bundle}} if bundle else {}
