"""A local OpenAI-compatible server as a child process: a free port, start, readiness, and a stop that takes
its whole process group with it (LocalServer); the engines (engines/vllm.py, engines/llamacpp.py) build on it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from packager.errors import ServerError
from packager.fsutil import tail


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None, log: Path | None, timeout_s: float,
               path: str = "/health", what: str = "server") -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(
                f"The {what} exited with code {proc.returncode} before it was ready. Last lines of its log"
                f"{f' ({log})' if log else ''}:\n{tail(log) if log else ''}"
            )
        try:
            r = httpx.get(url + path, timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(1.0)
    raise ServerError(
        f"The {what} at {url} was not ready after {timeout_s:.0f}s (last answer: {last}). Last lines of its log"
        f"{f' ({log})' if log else ''}:\n{tail(log) if log else ''}"
    )


def stop_process(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM to the process group of `proc`, SIGKILL after `grace_s`; then every process it had started, inside
    its group or not, is given what is left of `grace_s` to end and is killed after. Why the second part: a child
    in a session of its own is out of reach of the group's signals. BentoML's worker is one. When its arbiter was
    killed while the worker was still draining (a release interrupted during a load test), the worker and the
    vLLM engine under it were left running, holding their memory and ports."""
    if proc.poll() is not None:
        return
    deadline = time.monotonic() + grace_s
    tree = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    _end_strays(tree, deadline)


def _descendants(pid: int) -> list:
    """psutil handles of every process under `pid` now (a handle knows its process's start time: a pid reused
    later is never signalled)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _end_strays(tree: list, deadline: float) -> None:
    """Wait until `deadline` for the processes of `tree` to end by themselves, then SIGKILL those still running and
    wait up to 10 s more. A zombie counts as ended (its parent may never reap it)."""
    import psutil

    alive = _wait_ended(tree, deadline)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:  # it ended meanwhile
            pass
    _wait_ended(alive, time.monotonic() + 10)


def _wait_ended(procs: list, deadline: float) -> list:
    """Poll until every process of `procs` has ended or `deadline` passes; those still running."""
    alive = _running(procs)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = _running(alive)
    return alive


def _running(procs: list) -> list:
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


class LocalServer:
    """A local server process on loopback, as a context manager: started in its own session with its output
    in a log file, ready when `readiness_path` answers 200, stopped with its whole process group.

    Subclasses set `what`, `readiness_path`, `log_prefix` and implement `launch_spec() -> (argv, env)`
    (and may check prerequisites there); `timeout_s` is how long `start` waits for readiness.
    """

    what = "server"
    readiness_path = "/health"
    log_prefix = "packager-server-"
    stop_grace_s = 20.0

    def __init__(self, port: int | None = None, log_path: Path | None = None, timeout_s: float = 900.0):
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix=self.log_prefix, suffix=".log")[1])
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch_spec(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def launch(self) -> subprocess.Popen:
        """Start the process without waiting for readiness."""
        cmd, env = self.launch_spec()
        with open(self.log_path, "w") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self.proc

    def start(self):
        self.launch()
        try:
            wait_ready(self.base_url, self.proc, self.log_path, self.timeout_s, path=self.readiness_path,
                       what=self.what)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace_s=self.stop_grace_s)
            self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
