"""The bento's backend supervisor: `python -m packager.serve.supervise [--drain-timeout-s S] -- BACKEND ARGV...`.

The service's `__command__` starts this small process, which starts the backend (vLLM, ...) as its child and
stands between BentoML and it, for two reasons measured in tests/integration/test_reliability_faults.py:

1. **Graceful shutdown drains.** On SIGTERM, BentoML's arbiter (circus, `stop_children=True`) signals the
   worker AND the worker's direct children at the same moment. Without this process the backend stopped at
   once and cut every in-flight stream while the worker was still draining them. The supervisor is that
   direct child: it reads who sent each SIGTERM/SIGINT (`sigtimedwait` gives the sender's pid) and passes it
   on to the backend only when the *worker* asks (its proxy terminates the command after draining), when
   the worker is gone, when a second signal comes from elsewhere, or when `--drain-timeout-s` has passed
   since the first one.
2. **An unexpected backend exit is visible.** The supervisor exits 0 only after a stop the worker asked
   for; a backend that dies on its own (OOM kill, crash) makes it exit with the backend's code (128+N for
   signal N, 1 for an unexpected clean exit). The service's watchdog (services/service.py) sees that and
   ends the worker, so BentoML respawns it with a fresh backend (outside containers; in a container the
   orchestrator's liveness probe restarts the replica).

The backend runs in a process group of its own; whatever it leaves there when it exits (a killed vLLM server
leaves its engine core) is ended. It also gets PR_SET_PDEATHSIG (SIGKILL): if the supervisor is killed outright, \
the backend dies too: it
is never left running on its own, holding the port the worker's restart needs, and open streams fail fast.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
WAIT_SIGNALS = STOP_SIGNALS | {signal.SIGCHLD}
POLL_S = 0.5
KILL_AFTER_S = 60.0  # after forwarding a stop, SIGKILL a backend that has not exited by then


def _log(msg: str) -> None:
    print(f"packager supervise: {msg}", file=sys.stderr, flush=True)


def _child_setup() -> None:  # runs in the child between fork and exec
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # the blocked mask is inherited: undo it
    os.setsid()  # its own process group: what it leaves behind (vLLM's engine core) can be found and ended
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        # PR_SET_PDEATHSIG: die with the supervisor. SIGKILL, not SIGTERM: a backend told to stop gracefully
        # drains; with nobody left to stop it when that hangs, open streams would hang with it.
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except Exception:  # not Linux: best effort
        pass


def _end_group(pgid: int, grace_s: float) -> None:
    """End what the backend left in its process group (a killed vLLM server leaves its engine core running,
    holding memory): after a requested stop wait up to grace_s for it to go by itself, then SIGKILL."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    _log(f"ending what the backend left in its process group {pgid}")
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def exit_code_for(returncode: int, stop_requested: bool) -> int:
    """0 after a stop the worker asked for; otherwise the backend's code (128+N for signal N, 1 for 0)."""
    if stop_requested:
        return 0
    if returncode < 0:
        return 128 - returncode
    return returncode or 1


def supervise(cmd: list[str], drain_timeout_s: float, parent_pid: int | None = None) -> int:
    parent = parent_pid if parent_pid is not None else os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, WAIT_SIGNALS)
    child = subprocess.Popen(cmd, preexec_fn=_child_setup)
    _log(f"backend pid {child.pid} started; stops when worker pid {parent} asks (drain timeout {drain_timeout_s:g} s)")
    stop_requested = False
    first_foreign_at: float | None = None
    forwarded_at: float | None = None

    def forward(sig: int, why: str) -> None:
        nonlocal stop_requested, forwarded_at
        stop_requested = True
        if forwarded_at is None:
            forwarded_at = time.monotonic()
        _log(f"passing {signal.Signals(sig).name} to the backend: {why}")
        try:
            child.send_signal(sig)
        except ProcessLookupError:
            pass

    while True:
        info = signal.sigtimedwait(WAIT_SIGNALS, POLL_S)
        rc = child.poll()
        if rc is not None:
            _end_group(child.pid, grace_s=5.0 if stop_requested else 0.0)
            code = exit_code_for(rc, stop_requested)
            if code:
                _log(f"the backend exited unexpectedly (returncode {rc}); exiting {code}")
            return code
        now = time.monotonic()
        if info is not None and info.si_signo in STOP_SIGNALS:
            sender = info.si_pid
            if sender == parent:
                forward(info.si_signo, f"asked by the worker (pid {sender})")
            elif first_foreign_at is not None or stop_requested:
                forward(info.si_signo, f"second stop signal (from pid {sender})")
            else:
                first_foreign_at = now
                _log(f"{signal.Signals(info.si_signo).name} from pid {sender}: the worker drains its in-flight "
                     "requests first, the backend stops when it asks")
        if not stop_requested and os.getppid() != parent:
            forward(signal.SIGTERM, f"the worker (pid {parent}) is gone")
        if not stop_requested and first_foreign_at is not None and now - first_foreign_at > drain_timeout_s:
            forward(signal.SIGTERM, f"the worker did not ask within the drain timeout ({drain_timeout_s:g} s)")
        if forwarded_at is not None and now - forwarded_at > KILL_AFTER_S:
            _log(f"the backend did not exit {KILL_AFTER_S:g} s after the stop: SIGKILL")
            child.kill()
            forwarded_at = now  # wait for it to be reaped


def supervised_command(cmd: list[str], drain_timeout_s: float) -> list[str]:
    """`cmd` (the backend's argv, `env ...` prefix included) run under the supervisor."""
    return [sys.executable, "-m", "packager.serve.supervise", "--drain-timeout-s", f"{drain_timeout_s:g}", "--", *cmd]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m packager.serve.supervise [--drain-timeout-s S] -- BACKEND ARGV...", file=sys.stderr)
        return 2
    i = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m packager.serve.supervise")
    ap.add_argument("--drain-timeout-s", type=float, default=330.0)
    opts = ap.parse_args(argv[:i])
    cmd = argv[i + 1:]
    if not cmd:
        print("packager supervise: no backend command after --", file=sys.stderr)
        return 2
    return supervise(cmd, opts.drain_timeout_s)


if __name__ == "__main__":
    raise SystemExit(main())
