"""One phase of the locustfile's plan for one share (packager/loadtest/locustfile_openai.py).

closed: `users` closed-loop greenlets, started evenly over the phase's `ramp_s`; open: Poisson or evenly spaced
arrivals, open loop, dropped (and counted) beyond `max_in_flight`; schedule: explicit arrival offsets, optionally
over a Poisson background rate. The phase dispatches for `duration_s` (less when max_requests is reached), then
waits at most `drain_timeout_s` for its in-flight requests, cancels those still running and records a phase
summary.

Never import this module in the packager process or under pytest: it imports gevent. It imports nothing from
packager either: `locust -f packager/loadtest/locustfile_openai.py` loads the locustfile as a top-level
module, which then loads this file by its path (see `_load_sibling` there).
"""
from __future__ import annotations

import random
import time
from typing import Any

import gevent
from gevent.pool import Group


def split_count(n: int, k: int, w: int) -> int:
    """Share k of W of n items (the first n % W shares get one more)."""
    return n // w + (1 if k < n % w else 0)


class Phase:
    """One phase of the plan for one share: dispatch it for its window, then drain its in-flight requests."""

    def __init__(self, driver: Any, ph: dict, t0: float):
        """driver: the locustfile's _Driver (share, shares, seed, sent, cap, in_flight, sink, one_request ...)."""
        self.d = driver
        self.ph = ph
        k = int(ph["index"])
        w, s = driver.shares, driver.share
        self.k, self.w, self.s = k, w, s
        self.t0 = t0
        self.end = t0 + float(ph["duration_s"])
        self.rng = random.Random(driver.seed * 1_000_003 + k * 7919 + s)
        self.cap_in_flight = (max(1, split_count(int(ph.get("max_in_flight") or 1), s, w))
                              if ph["kind"] != "closed" else None)
        self.stats = {"dropped_arrivals": 0, "request_cap_reached": False}
        self.group = Group()
        self.dispatchers = Group()

    def run(self) -> None:
        self.start()
        self.wait_dispatch()
        self.dispatchers.kill(block=True)
        dispatch_end = time.time()
        group = self.group
        group.join(timeout=self.d.drain_timeout_s)
        cancelled = len(group)
        if cancelled:
            group.kill(block=True, timeout=10)  # one_request records each as "cancelled_at_drain_timeout"
        self.d.sink.add({"type": "phase_summary", "phase": self.k, "share": self.s, "shares": self.w,
                         "start_unix": self.t0, "dispatch_end_unix": dispatch_end, "drain_end_unix": time.time(),
                         "cancelled_at_drain_timeout": cancelled, **self.stats})

    def start(self) -> None:
        ph, w, s = self.ph, self.w, self.s
        kind = ph["kind"]
        if kind == "closed":
            # user g of N (this share holds g = s, s + W, ...) starts g/N of the ramp after the phase's start
            users, ramp = int(ph["users"]), float(ph.get("ramp_s") or 0.0)
            for g in range(s, users, w):
                self.group.spawn(self.closed_user, g, self.t0 + g * ramp / users)
        elif kind == "open":
            rate = float(ph["rate_per_s"])
            # constant arrivals: share s of W fires at t0 + (s + j*W)/rate, interleaving the shares exactly
            self.dispatchers.spawn(self.poisson_or_constant, rate / w, ph.get("arrival", "poisson"), s / rate)
        elif kind == "schedule":
            self.dispatchers.spawn(self.schedule, ph["arrivals"][s::w])
            bg = float(ph.get("background_rate_per_s") or 0.0)
            if bg > 0:
                self.dispatchers.spawn(self.poisson_or_constant, bg / w, "poisson", 0.0)
        else:
            raise ValueError(f"unknown phase kind {kind!r}")

    def wait_dispatch(self) -> None:
        end, group = self.end, self.group
        if self.ph["kind"] == "closed":
            # returns at `end`, or earlier when every user stopped because max_requests was reached
            while time.time() < end and len(group) and not self.stats["request_cap_reached"]:
                group.join(timeout=min(0.2, max(0.0, end - time.time())))
        else:
            self.dispatchers.join(timeout=max(0.0, end - time.time()))  # early when the request cap stops them

    def arrive(self, scheduled: float, index: int | None = None) -> bool:
        """False once max_requests is reached: the dispatcher stops and the phase ends early."""
        d = self.d
        if d.sent >= d.cap:
            self.stats["request_cap_reached"] = True
            return False
        if self.cap_in_flight is not None and d.in_flight >= self.cap_in_flight:
            self.stats["dropped_arrivals"] += 1
            return True
        d.sent += 1
        self.group.spawn(d.one_request, d.next_body(index), self.k, scheduled)
        return True

    def poisson_or_constant(self, rate: float, arrival: str, offset: float) -> None:
        if rate <= 0:
            return
        t0, end, rng = self.t0, self.end, self.rng
        j = 0  # constant arrivals: t0 + offset + j / rate (no accumulated rounding)
        t = t0 + (offset if arrival == "constant" else rng.expovariate(rate))
        while t < end:
            gevent.sleep(max(0.0, t - time.time()))
            if not self.arrive(t):
                return
            j += 1
            t = (t0 + offset + j / rate) if arrival == "constant" else t + rng.expovariate(rate)
        gevent.sleep(max(0.0, end - time.time()))  # the phase lasts its whole window

    def schedule(self, arrivals: list) -> None:
        for off, idx in arrivals:
            t = self.t0 + float(off)
            if t >= self.end:
                break
            gevent.sleep(max(0.0, t - time.time()))
            if not self.arrive(t, idx):
                return
        gevent.sleep(max(0.0, self.end - time.time()))  # the phase lasts its whole window

    def closed_user(self, user: int, first_at: float) -> None:
        d, end = self.d, self.end
        warm_first = bool(self.ph.get("first_request_warmup"))
        gevent.sleep(max(0.0, first_at - time.time()))
        mine = 0
        # with first_request_warmup, a user whose first request (its warm-up) outlasted the phase sends one
        # more, to be judged: during the drain, which drain_timeout_s bounds
        while time.time() < end or (warm_first and mine == 1):
            if d.sent >= d.cap:
                self.stats["request_cap_reached"] = True
                return
            d.sent += 1
            mine += 1
            d.one_request(d.next_body(), self.k, None, first=warm_first and mine == 1, user=user)
