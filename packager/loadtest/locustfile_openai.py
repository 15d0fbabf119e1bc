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

Environment: PACKAGER_LOADTEST_PLAN (the plan file, read by the master or the local process; workers get
the plan from the master), PACKAGER_LOADTEST_RECORDS (the records file, written by the master or the local
process). Targets other than loopback addresses are refused here too.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import socket
import time
from urllib.parse import urlsplit

import gevent
from gevent.event import AsyncResult
from gevent.pool import Group
from geventhttpclient import HTTPClient
from locust import User, events, task
from locust.runners import MasterRunner, WorkerRunner

PLAN_ENV = "PACKAGER_LOADTEST_PLAN"
RECORDS_ENV = "PACKAGER_LOADTEST_RECORDS"
PLAN_VERSION = 1
log = logging.getLogger("packager.locust")


# --------------------------------------------------------------------------------------- helpers
def is_loopback_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_count(n: int, k: int, w: int) -> int:
    """Share k of W of n items (the first n % W shares get one more)."""
    return n // w + (1 if k < n % w else 0)


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
        if not is_loopback_url(plan.get("target_url", "")):
            _fail_fast(environment, f"target {plan.get('target_url')!r} is not a loopback address; refused")
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
        self.cursor = share  # round-robin over the request pool, interleaved across shares
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
                                                   "User-Agent": "packager-loadtest"})
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
        k = int(ph["index"])
        w, s = self.shares, self.share
        gevent.sleep(max(0.0, t0 - time.time()))
        end = t0 + float(ph["duration_s"])
        rng = random.Random(self.seed * 1_000_003 + k * 7919 + s)
        cap_in_flight = max(1, split_count(int(ph.get("max_in_flight") or 1), s, w)) if ph["kind"] != "closed" else None
        stats = {"dropped_arrivals": 0, "request_cap_reached": False}
        group = Group()
        dispatchers = Group()

        def arrive(scheduled: float, index: int | None = None) -> bool:
            """False once max_requests is reached: the dispatcher stops and the phase ends early."""
            if self.sent >= self.cap:
                stats["request_cap_reached"] = True
                return False
            if cap_in_flight is not None and self.in_flight >= cap_in_flight:
                stats["dropped_arrivals"] += 1
                return True
            self.sent += 1
            group.spawn(self.one_request, self.next_body(index), k, scheduled)
            return True

        def poisson_or_constant(rate: float, arrival: str, offset: float) -> None:
            if rate <= 0:
                return
            j = 0  # constant arrivals: t0 + offset + j / rate (no accumulated rounding)
            t = t0 + (offset if arrival == "constant" else rng.expovariate(rate))
            while t < end:
                gevent.sleep(max(0.0, t - time.time()))
                if not arrive(t):
                    return
                j += 1
                t = (t0 + offset + j / rate) if arrival == "constant" else t + rng.expovariate(rate)
            gevent.sleep(max(0.0, end - time.time()))  # the phase lasts its whole window

        def schedule(arrivals: list) -> None:
            for off, idx in arrivals:
                t = t0 + float(off)
                if t >= end:
                    break
                gevent.sleep(max(0.0, t - time.time()))
                if not arrive(t, idx):
                    return
            gevent.sleep(max(0.0, end - time.time()))  # the phase lasts its whole window

        def closed_user() -> None:
            while time.time() < end:
                if self.sent >= self.cap:
                    stats["request_cap_reached"] = True
                    return
                self.sent += 1
                self.one_request(self.next_body(), k, None)

        kind = ph["kind"]
        if kind == "closed":
            for _ in range(split_count(int(ph["users"]), s, w)):
                group.spawn(closed_user)
        elif kind == "open":
            rate = float(ph["rate_per_s"])
            # constant arrivals: share s of W fires at t0 + (s + j*W)/rate, interleaving the shares exactly
            dispatchers.spawn(poisson_or_constant, rate / w, ph.get("arrival", "poisson"), s / rate)
        elif kind == "schedule":
            dispatchers.spawn(schedule, ph["arrivals"][s::w])
            bg = float(ph.get("background_rate_per_s") or 0.0)
            if bg > 0:
                dispatchers.spawn(poisson_or_constant, bg / w, "poisson", 0.0)
        else:
            raise ValueError(f"unknown phase kind {kind!r}")
        if kind == "closed":
            # returns at `end`, or earlier when every user stopped because max_requests was reached
            while time.time() < end and len(group) and not stats["request_cap_reached"]:
                group.join(timeout=min(0.2, max(0.0, end - time.time())))
        else:
            dispatchers.join(timeout=max(0.0, end - time.time()))  # early when the request cap stops them
        dispatchers.kill(block=True)
        dispatch_end = time.time()
        group.join(timeout=self.drain_timeout_s)
        cancelled = len(group)
        if cancelled:
            group.kill(block=True, timeout=10)  # one_request records each as "cancelled_at_drain_timeout"
        self.sink.add({"type": "phase_summary", "phase": k, "share": s, "shares": w,
                       "start_unix": t0, "dispatch_end_unix": dispatch_end, "drain_end_unix": time.time(),
                       "cancelled_at_drain_timeout": cancelled, **stats})

    def one_request(self, body: dict, phase: int, scheduled: float | None) -> None:
        self.in_flight += 1
        rec: dict = {"type": "request", "phase": phase, "share": self.share, "ok": False, "status": None,
                     "error_kind": None, "error": None, "ttft_ms": None, "e2e_ms": None, "itl_ms": [],
                     "input_tokens": None, "output_tokens": None, "content_chunks": 0, "usage_present": False,
                     "dispatch_lag_ms": None, "max_tokens": body.get("max_tokens")}
        t_start_unix = time.time()
        rec["t_start_unix"] = t_start_unix
        if scheduled is not None:
            rec["dispatch_lag_ms"] = max(0.0, (t_start_unix - scheduled) * 1000.0)
        payload = json.dumps(body, separators=(",", ":")).encode()
        t0 = time.perf_counter()
        t_first = t_last = None
        itl = rec["itl_ms"]
        resp = None
        done = False
        exc: BaseException | None = None
        try:
            with gevent.Timeout(self.timeout_s):
                resp = self.client.post(self.path, body=payload)
                rec["status"] = status = resp.status_code
                if status != 200:
                    text = resp.read().decode("utf-8", "replace")
                    rec["error_kind"] = f"http_{status}"
                    rec["error"] = text[:300]
                else:
                    readline = resp.readline
                    while True:
                        line = readline(b"\n")
                        if not line:
                            break
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            break
                        now = time.perf_counter()
                        obj = json.loads(data)
                        if obj.get("error"):
                            err = obj["error"]
                            rec["error_kind"] = "stream_error"
                            rec["error"] = str(err.get("message", err) if isinstance(err, dict) else err)[:300]
                            break
                        for ch in obj.get("choices") or ():
                            delta = ch.get("delta")
                            text = delta.get("content") if delta is not None else ch.get("text")
                            if text:
                                if t_first is None:
                                    t_first = now
                                else:
                                    itl.append((now - t_last) * 1000.0)
                                t_last = now
                                rec["content_chunks"] += 1
                        usage = obj.get("usage")
                        if usage:
                            rec["usage_present"] = True
                            rec["input_tokens"] = usage.get("prompt_tokens")
                            rec["output_tokens"] = usage.get("completion_tokens")
                    if rec["error_kind"] is None and not done:
                        rec["error_kind"] = "stream_truncated"
                        rec["error"] = "the stream ended without 'data: [DONE]'"
        except gevent.Timeout as e:
            exc = e
            rec["error_kind"] = "timeout"
            rec["error"] = f"no complete answer within {self.timeout_s:g} s"
        except gevent.GreenletExit as e:
            exc = e
            rec["error_kind"] = "cancelled_at_drain_timeout"
            rec["error"] = f"still running {self.drain_timeout_s:g} s after its phase ended"
        except (OSError, socket.error, ConnectionError) as e:
            exc = e
            rec["error_kind"] = "connection_error"
            rec["error"] = f"{type(e).__name__}: {e}"[:300]
        except ValueError as e:  # malformed JSON in the stream
            exc = e
            rec["error_kind"] = "bad_response"
            rec["error"] = f"{type(e).__name__}: {e}"[:300]
        except Exception as e:  # noqa: BLE001 - anything else is recorded, never lost
            exc = e
            rec["error_kind"] = "client_error"
            rec["error"] = f"{type(e).__name__}: {e}"[:300]
        finally:
            if resp is not None:
                resp.release()
            self.in_flight -= 1
        t_end = time.perf_counter()
        rec["e2e_ms"] = (t_end - t0) * 1000.0
        rec["t_end_unix"] = t_start_unix + (t_end - t0)
        if t_first is not None:
            rec["ttft_ms"] = (t_first - t0) * 1000.0
        rec["ok"] = rec["error_kind"] is None  # an answer without usage is ok; the analysis counts it apart
        self.sink.add(rec)
        self.env.events.request.fire(
            request_type="POST", name="chat.completions" if "messages" in body else "completions",
            response_time=rec["e2e_ms"], response_length=int(rec["output_tokens"] or 0),
            exception=None if rec["ok"] else (exc or RuntimeError(rec["error_kind"])), context={})
        if isinstance(exc, gevent.GreenletExit):
            raise exc
