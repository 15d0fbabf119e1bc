"""Reliability figures: overload, backend kill, graceful shutdown, bad input and fuzzing, against real bentos.

The measurements live in the integration tests that prove the properties (tests/integration/
test_reliability_faults.py on a tiny bento, test_reliability_api.py on the bundled model's bento,
test_serve_bento_security.py); each writes
its section of the JSON that PACKAGER_RELIABILITY_RESULTS names. This script points it at
benchmarks/results/reliability.json, runs them and prints the figures (a plain test run writes to the system's temp
directory, so `make test` leaves the committed figures alone):

    flock /tmp/packager-heavy.lock .venv/bin/python benchmarks/bench_reliability.py [--only faults|api|security]

It starts real servers (vLLM, bentoml serve): minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reliability.json"
MODULES = {"faults": "tests/integration/test_reliability_faults.py", "api": "tests/integration/test_reliability_api.py",
           "security": "tests/integration/test_serve_bento_security.py"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(MODULES), help="run one module only")
    ns = ap.parse_args()
    mods = [MODULES[ns.only]] if ns.only else list(MODULES.values())
    env = {**os.environ, "PACKAGER_RELIABILITY_RESULTS": str(RESULTS)}
    rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "slow", "-p", "no:cacheprovider", *mods],
                         cwd=ROOT, env=env)
    if not RESULTS.exists():
        print(f"no results in {RESULTS}", file=sys.stderr)
        return rc or 1
    doc = json.loads(RESULTS.read_text())
    o = doc.get("overload", {}).get("total", {})
    if o:
        print(f"overload: tried {o['requests_tried']}, refused {o['requests_refused']}, completed "
              f"{o['requests_completed']}, failed otherwise {o['requests_failed_otherwise']}, lost {o['requests_lost']}, "
              f"p95 time to refusal {o['time_to_refusal_ms_p95']:.0f} ms, recovery "
              f"{doc['overload'].get('recovery_time_s')} s")
    k = doc.get("backend_kill", {})
    if k:
        print(f"backend kill: /readyz 503 after {k.get('readyz_503_after_s')} s, in-flight ended after "
              f"{k.get('in_flight_end_after_kill_s')} s; service: {k.get('service_behaviour')}")
    g = doc.get("graceful_shutdown", {})
    if g:
        print(f"SIGTERM: {g.get('in_flight_completed')}/{g.get('in_flight_at_sigterm')} in-flight completed, exit code "
              f"{g.get('exit_code')} after {g.get('exit_after_sigterm_s')} s")
    b = doc.get("bad_input", {})
    if b:
        print(f"bad input: {b.get('cases')} cases, {b.get('answered_4xx')} answered 4xx, {b.get('answered_5xx')} 5xx")
    f = doc.get("fuzz", {})
    if f:
        n = sum(s["requests"] for s in f.get("operations", {}).values())
        print(f"fuzz: {n} requests, {len(f.get('problems', []))} problems")
    print(f"figures: {RESULTS}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
