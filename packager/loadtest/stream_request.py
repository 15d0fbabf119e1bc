"""One OpenAI-style streaming request of the locustfile (packager/loadtest/locustfile_openai.py).

Its JSON record, the server-sent-events read loop (first content token, inter-token gaps, usage) and the
error kinds. The locustfile keeps the request itself (t0, the timeout, in-flight accounting, the end time) and
calls these helpers in the locust process.

Never import this module in the packager process or under pytest: it imports gevent. It imports nothing from
packager either: `locust -f packager/loadtest/locustfile_openai.py` loads the locustfile as a top-level
module, which then loads this file by its path (see `_load_sibling` there).
"""
from __future__ import annotations

import json
import socket
import time

import gevent


class StreamTiming:
    """perf_counter() of the first content token, None until it arrives (kept when the request then fails)."""

    __slots__ = ("t_first",)

    def __init__(self) -> None:
        self.t_first: float | None = None


def new_record(body: dict, phase: int, share: int, scheduled: float | None) -> dict:
    """The request's record, with its wall-clock start and its dispatch lag behind the scheduled arrival."""
    rec: dict = {"type": "request", "phase": phase, "share": share, "ok": False, "status": None,
                 "error_kind": None, "error": None, "ttft_ms": None, "e2e_ms": None, "itl_ms": [],
                 "input_tokens": None, "output_tokens": None, "content_chunks": 0, "usage_present": False,
                 "dispatch_lag_ms": None, "max_tokens": body.get("max_tokens")}
    t_start_unix = time.time()
    rec["t_start_unix"] = t_start_unix
    if scheduled is not None:
        rec["dispatch_lag_ms"] = max(0.0, (t_start_unix - scheduled) * 1000.0)
    return rec


def read_response(resp, rec: dict, timing: StreamTiming) -> None:
    """Read the whole answer: an HTTP error body, or the event stream up to 'data: [DONE]'."""
    rec["status"] = status = resp.status_code
    if status != 200:
        text = resp.read().decode("utf-8", "replace")
        rec["error_kind"] = f"http_{status}"
        rec["error"] = text[:300]
        return
    done = read_events(resp.readline, rec, timing)
    if rec["error_kind"] is None and not done:
        rec["error_kind"] = "stream_truncated"
        rec["error"] = "the stream ended without 'data: [DONE]'"


def read_events(readline, rec: dict, timing: StreamTiming) -> bool:
    """Record every `data:` event until the stream ends; True when it ended with 'data: [DONE]'.

    Each event is timed when its line has been read (before parsing): the first content chunk sets
    timing.t_first, each later one appends its gap to the previous one to rec["itl_ms"]."""
    itl = rec["itl_ms"]
    t_last: float | None = None  # None exactly until the first content chunk (which sets timing.t_first)
    while True:
        line = readline(b"\n")
        if not line:
            return False
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return True
        now = time.perf_counter()
        obj = json.loads(data)
        if obj.get("error"):
            err = obj["error"]
            rec["error_kind"] = "stream_error"
            rec["error"] = str(err.get("message", err) if isinstance(err, dict) else err)[:300]
            return False
        for ch in obj.get("choices") or ():
            delta = ch.get("delta")
            text = delta.get("content") if delta is not None else ch.get("text")
            if text:
                if t_last is None:
                    timing.t_first = now
                else:
                    itl.append((now - t_last) * 1000.0)
                t_last = now
                rec["content_chunks"] += 1
        usage = obj.get("usage")
        if usage:
            rec["usage_present"] = True
            rec["input_tokens"] = usage.get("prompt_tokens")
            rec["output_tokens"] = usage.get("completion_tokens")


def record_exception(rec: dict, e: BaseException, timeout_s: float, drain_timeout_s: float) -> None:
    """The error kind and message of an exception that ended the request (checked in this order)."""
    if isinstance(e, gevent.Timeout):
        rec["error_kind"] = "timeout"
        rec["error"] = f"no complete answer within {timeout_s:g} s"
    elif isinstance(e, gevent.GreenletExit):
        rec["error_kind"] = "cancelled_at_drain_timeout"
        rec["error"] = f"still running {drain_timeout_s:g} s after its phase ended"
    elif isinstance(e, (OSError, socket.error, ConnectionError)):
        rec["error_kind"] = "connection_error"
        rec["error"] = f"{type(e).__name__}: {e}"[:300]
    elif isinstance(e, ValueError):  # malformed JSON in the stream
        rec["error_kind"] = "bad_response"
        rec["error"] = f"{type(e).__name__}: {e}"[:300]
    else:  # anything else is recorded, never lost
        rec["error_kind"] = "client_error"
        rec["error"] = f"{type(e).__name__}: {e}"[:300]


def finish_record(rec: dict, t0: float, t_end: float, t_first: float | None) -> None:
    """E2E, end time and TTFT from the perf_counter() readings of the request."""
    rec["e2e_ms"] = (t_end - t0) * 1000.0
    rec["t_end_unix"] = rec["t_start_unix"] + (t_end - t0)
    if t_first is not None:
        rec["ttft_ms"] = (t_first - t0) * 1000.0
    rec["ok"] = rec["error_kind"] is None  # an answer without usage is ok; the analysis counts it apart
