"""The backend supervisor (packager.serve.supervise) with a real child process; no BentoML, no vLLM.

The test process plays the BentoML worker (the supervisor's parent): a SIGTERM from it is passed on at once,
a SIGTERM from anybody else (BentoML's arbiter) is held while the worker drains.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from packager.serve.supervise import exit_code_for, supervised_command

# A backend that writes its pid, then runs until signalled; on SIGTERM it notes the fact and exits 0.
BACKEND = r"""
import os, signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
def bye(*_):
    (out / "got-sigterm").write_text("1"); sys.exit(0)
signal.signal(signal.SIGTERM, bye)
(out / "pid").write_text(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


def _start(tmp_path: Path, drain_timeout_s: float = 60.0, backend: str = BACKEND) -> tuple[subprocess.Popen, int]:
    script = tmp_path / "backend.py"
    script.write_text(backend)
    proc = subprocess.Popen(supervised_command([sys.executable, str(script), str(tmp_path)], drain_timeout_s),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (tmp_path / "pid").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "backend did not start"
        time.sleep(0.05)
    time.sleep(0.1)
    return proc, int((tmp_path / "pid").read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not reaped) is not alive
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False


def _stop(proc: subprocess.Popen, pid: int) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("returncode, requested, code", [
    (0, True, 0), (-15, True, 0), (143, True, 0),
    (-9, False, 137), (-15, False, 143), (1, False, 1), (0, False, 1), (3, False, 3),
])
def test_exit_code_reports_only_requested_stops_as_clean(returncode, requested, code):
    assert exit_code_for(returncode, requested) == code


def test_sigterm_from_the_worker_stops_the_backend_and_exits_0(tmp_path):
    proc, pid = _start(tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)  # from this process, the supervisor's parent: the worker asks
        assert proc.wait(20) == 0, proc.stderr.read()
        assert (tmp_path / "got-sigterm").exists() and not _alive(pid)
    finally:
        _stop(proc, pid)


def test_sigterm_from_elsewhere_is_held_until_the_worker_asks(tmp_path):
    proc, pid = _start(tmp_path)
    try:
        # `kill` runs as another process: the arbiter's SIGTERM, sent while the worker drains
        subprocess.run(["kill", "-TERM", str(proc.pid)], check=True)
        time.sleep(1.5)
        assert proc.poll() is None and _alive(pid) and not (tmp_path / "got-sigterm").exists()
        proc.send_signal(signal.SIGTERM)  # the worker finished draining
        assert proc.wait(20) == 0
        assert (tmp_path / "got-sigterm").exists()
    finally:
        _stop(proc, pid)


def test_a_second_foreign_sigterm_or_the_drain_timeout_stops_the_backend(tmp_path):
    proc, pid = _start(tmp_path)
    try:
        subprocess.run(["kill", "-TERM", str(proc.pid)], check=True)
        time.sleep(0.5)
        subprocess.run(["kill", "-TERM", str(proc.pid)], check=True)
        assert proc.wait(20) == 0 and (tmp_path / "got-sigterm").exists()
    finally:
        _stop(proc, pid)
    d = tmp_path / "timeout"
    d.mkdir()
    proc, pid = _start(d, drain_timeout_s=1.0)
    try:
        subprocess.run(["kill", "-TERM", str(proc.pid)], check=True)
        assert proc.wait(20) == 0 and (d / "got-sigterm").exists()
        assert "drain timeout" in proc.stderr.read()
    finally:
        _stop(proc, pid)


def test_a_backend_that_dies_on_its_own_makes_the_supervisor_exit_non_zero(tmp_path):
    proc, pid = _start(tmp_path)
    try:
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(20) == 128 + signal.SIGKILL
        assert "exited unexpectedly (returncode -9)" in proc.stderr.read()
    finally:
        _stop(proc, pid)


def test_a_killed_supervisor_takes_its_backend_with_it(tmp_path):
    proc, pid = _start(tmp_path)
    try:
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)  # PR_SET_PDEATHSIG
    finally:
        _stop(proc, pid)


def test_usage_errors():
    from packager.serve.supervise import main

    assert main(["--drain-timeout-s", "3"]) == 2
    assert main(["--"]) == 2


GRANDCHILD_BACKEND = r"""
import os, subprocess, sys, time
from pathlib import Path
out = Path(sys.argv[1])
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
(out / "grandchild").write_text(str(g.pid))
(out / "pid").write_text(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


def test_what_a_killed_backend_leaves_in_its_group_is_ended(tmp_path):
    """A killed vLLM server leaves its engine core running; the supervisor ends its process group."""
    proc, pid = _start(tmp_path, backend=GRANDCHILD_BACKEND)
    grandchild = int((tmp_path / "grandchild").read_text())
    try:
        assert _alive(grandchild)
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(20) == 137
        deadline = time.monotonic() + 10
        while _alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(grandchild)
        assert "ending what the backend left in its process group" in proc.stderr.read()
    finally:
        _stop(proc, pid)
        if _alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
