"""stop_process: the process group, then any process it started in a session of its own (BentoML's worker is one)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from packager.engines.base import stop_process

# A child in a session of its own that ignores SIGTERM and writes its pid; its parent waits (SIGTERM ends it).
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    child = ("import os, signal, time\\n"
             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
             "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\\n"
             "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\\n"
             "time.sleep(600)\\n")
    subprocess.Popen([sys.executable, "-c", "import sys\\n" + child, sys.argv[1]], start_new_session=True)
    time.sleep(600)
""")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_child_outside_the_group_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(pidfile)], start_new_session=True)
    child = None
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists():
            assert parent.poll() is None, "the parent exited before its child started"
            assert time.monotonic() < deadline, "the child never wrote its pid"
            time.sleep(0.05)
        child = int(pidfile.read_text())
        assert os.getpgid(child) != os.getpgid(parent.pid)  # out of reach of the group's signals
        stop_process(parent, grace_s=1.0)
        assert parent.poll() == -signal.SIGTERM
        assert _gone(child)
    finally:
        for pid in (parent.pid, child):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        parent.wait(timeout=10)
