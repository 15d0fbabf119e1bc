"""A "remote" address for a loopback server: a throwaway network namespace plus two TCP relays.

Integration tests that must talk to a non-loopback host (to exercise the code paths a remote HTTPS/HTTP target
takes) use this instead of any real interface or outside address:

    from fakes.netns import NetnsForward, netns_available

    if (why := netns_available()) is not None:
        pytest.skip(why)
    with FakeOpenAIServer() as srv, NetnsForward(srv.port) as fwd:     # srv listens on 127.0.0.1
        httpx.get(fwd.base_url + "/v1/models")                         # http://10.213.x.y:8000/v1/models

How it works. On enter, NetnsForward creates a network namespace (`pkgt-<pid>-<n>`) and a veth pair whose host
end (10.213.a.b+1/30) stays in the root namespace and whose other end (10.213.a.b+2/30, `.address`) is moved into
the namespace. A relay inside the namespace (`python3 netns.py --ns-side ...`, started with `ip netns exec`)
accepts TCP connections on `.address:.port` and relays each to a unix-domain socket in a temporary directory;
a second relay in the root namespace (`python3 netns.py --host-side ...`) accepts on that socket and relays each
connection to target_host:target_port (a loopback address). Unix sockets on the filesystem cross network
namespaces, so a client in the root namespace reaches the loopback server through the veth, and every packet
stays on loopback, on the veth pair, or inside the namespace. Before the first connection the route to
`.address` is checked to leave through our veth (never through a real interface). The readiness check on
enter opens one connection through the relays and closes it at once, so the target sees one empty connection.

The relays are full-duplex, propagate half-close (an EOF on one side shuts the write side of the other), handle
many connections at once (asyncio) and pass bytes on as they arrive (a streamed response is never buffered).

`.address`, `.port`, `.base_url` and `.url(scheme)` are known from construction, before enter, so a test can
put the address into a TLS certificate (see tls.py) before the target server starts: construct with
target_port=0, make the certificate, start the server, then set `fwd.target_port = srv.port` and enter.

On exit (and on any failure while entering) the relays are killed (process group) and waited for, the veth
pair and the namespace are deleted, and the temporary directory is removed; exiting twice is harmless.
Never use the address after exit: without our veth its route would lead to the default gateway.

Standard library only; never imports packager.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

NS_PREFIX = "pkgt"
DEFAULT_LISTEN_PORT = 8000
SUBNET = ipaddress.ip_network("10.213.0.0/16")
READY_TIMEOUT_S = 20.0
_IP_TIMEOUT_S = 10.0
_KILL_TIMEOUT_S = 5.0

_counter = itertools.count(1)
_lock = threading.Lock()
_live: set[str] = set()  # namespaces this process has created and not yet deleted
_THIS_FILE = os.path.abspath(__file__)


# --------------------------------------------------------------------------------------------------- ip helpers
def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `ip ARGS` (bounded); raise RuntimeError on a non-zero exit when check is true."""
    try:
        cp = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`ip {' '.join(args)}` did not finish within {_IP_TIMEOUT_S:g} s") from None
    if check and cp.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({cp.returncode}): {(cp.stderr or cp.stdout).strip()}")
    return cp


def _netns_names() -> list[str]:
    cp = _ip("netns", "list", check=False)
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host_ifname(pid: int, n: int) -> str:
    return f"pk{pid}h{n}"[:15]


def _peer_ifname(pid: int, n: int) -> str:
    return f"pk{pid}p{n}"[:15]


def _sweep_stale() -> None:
    """Delete namespaces `pkgt-<pid>-<n>` (and their veth host end) left by an earlier run: ours (the pid was
    reused, or this process lost track of it) that we do not hold now, or those of a process that is gone."""
    pat = re.compile(rf"^{NS_PREFIX}-(\d+)-(\d+)$")
    me = os.getpid()
    for name in _netns_names():
        m = pat.match(name)
        if m is None:
            continue
        pid, n = int(m.group(1)), int(m.group(2))
        if pid == me:
            with _lock:
                if name in _live:
                    continue
        elif _pid_alive(pid):
            continue
        _ip("link", "del", _host_ifname(pid, n), check=False)
        _ip("netns", "del", name, check=False)
        for d in Path(tempfile.gettempdir()).glob(f"{name}-*"):  # its relays' socket and logs
            shutil.rmtree(d, ignore_errors=True)


def _used_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks of the root namespace's addresses and routes (all tables), default routes excepted."""
    nets: list[ipaddress.IPv4Network] = []
    for line in _ip("-4", "-o", "addr", "show", check=False).stdout.splitlines():
        m = re.search(r"\binet (\S+)", line)
        if m:
            nets.append(ipaddress.ip_interface(m.group(1)).network)
    for line in _ip("-4", "route", "show", "table", "all", check=False).stdout.splitlines():
        for tok in line.split()[:2]:
            if tok == "default":
                break
            try:
                nets.append(ipaddress.ip_network(tok, strict=False))  # type: ignore[arg-type]
                break
            except ValueError:
                continue
    return nets


def _pick_block(pid: int, n: int) -> ipaddress.IPv4Network:
    """A /30 of SUBNET for instance n of process pid that overlaps no address or route of the root namespace."""
    blocks = (SUBNET.num_addresses // 4) - 1  # block 0 (10.213.0.0/30) is never used
    used = _used_networks()
    for k in range(256):
        idx = 1 + (pid * 7919 + n * 104729 + k * 31) % blocks
        net = ipaddress.ip_network(f"{SUBNET.network_address + idx * 4}/30")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net  # type: ignore[return-value]
    raise RuntimeError(f"no free /30 in {SUBNET} for a test namespace")


@functools.lru_cache(maxsize=1)
def netns_available() -> str | None:
    """None when network namespaces can be used here (root, `ip` present, a throwaway namespace with a veth pair
    can be created and deleted); otherwise a one-line reason, for pytest.skip."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    name = f"{NS_PREFIX}-{os.getpid()}-probe"
    try:
        _ip("netns", "del", name, check=False)
        _ip("netns", "add", name)
        try:
            # Both veth ends inside the throwaway namespace: the root namespace is never touched.
            _ip("-n", name, "link", "add", "pkprobe0", "type", "veth", "peer", "name", "pkprobe1")
        finally:
            _ip("netns", "del", name)
    except (RuntimeError, OSError) as e:
        _ip("netns", "del", name, check=False)
        return f"cannot create a network namespace with a veth pair: {str(e).splitlines()[0] if str(e) else e!r}"
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- NetnsForward
class NetnsForward:
    """A non-loopback address (`.address`, inside a network namespace this object creates) whose port `.port`
    leads to target_host:target_port on loopback. Use it as a context manager; see the module docstring."""

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", listen_port: int | None = None):
        if not _is_loopback(target_host):
            raise ValueError(f"target_host must be a loopback address, got {target_host!r}")
        if not 0 <= int(target_port) < 65536:
            raise ValueError(f"target_port out of range: {target_port!r}")
        self.target_host = target_host
        self.target_port = int(target_port)
        self.port = int(listen_port) if listen_port is not None else DEFAULT_LISTEN_PORT
        if not 0 < self.port < 65536:
            raise ValueError(f"listen_port out of range: {listen_port!r}")
        pid = os.getpid()
        self._n = next(_counter)
        self.name = f"{NS_PREFIX}-{pid}-{self._n}"
        self.host_ifname = _host_ifname(pid, self._n)
        self.peer_ifname = _peer_ifname(pid, self._n)
        self.network = _pick_block(pid, self._n)
        hosts = list(self.network.hosts())
        self.host_address = str(hosts[0])  # .1, root namespace
        self.address = str(hosts[1])  # .2, inside the namespace
        self._tmp: str | None = None
        self.unix_path: str | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self._entered = False

    # ---- addresses
    @property
    def base_url(self) -> str:
        return self.url("http")

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{self.address}:{self.port}"

    def __repr__(self) -> str:
        return (f"NetnsForward({self.name}: {self.address}:{self.port} -> {self.target_host}:{self.target_port}, "
                f"{'up' if self._entered else 'down'})")

    # ---- lifecycle
    def __enter__(self) -> "NetnsForward":
        if self._entered:
            raise RuntimeError(f"{self!r} is already entered")
        try:
            self._setup()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._teardown()

    def _setup(self) -> None:
        if not 0 < int(self.target_port) < 65536:
            raise ValueError(f"set target_port before entering (got {self.target_port!r})")
        _sweep_stale()
        # A namespace of this exact name (ours from an earlier run with the same pid) goes first.
        _ip("link", "del", self.host_ifname, check=False)
        _ip("netns", "del", self.name, check=False)
        with _lock:
            _live.add(self.name)
        self._entered = True
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_ifname, "type", "veth", "peer", "name", self.peer_ifname, "netns", self.name)
        plen = str(self.network.prefixlen)
        _ip("addr", "add", f"{self.host_address}/{plen}", "dev", self.host_ifname)
        _ip("link", "set", self.host_ifname, "up")
        _ip("-n", self.name, "addr", "add", f"{self.address}/{plen}", "dev", self.peer_ifname)
        _ip("-n", self.name, "link", "set", self.peer_ifname, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")
        self._check_route()

        self._tmp = tempfile.mkdtemp(prefix=f"{self.name}-")
        self.unix_path = os.path.join(self._tmp, "relay.sock")
        deadline = time.monotonic() + READY_TIMEOUT_S
        parent = str(os.getpid())
        self._spawn("host", [sys.executable, _THIS_FILE, "--host-side", "--unix", self.unix_path,
                             "--target-host", self.target_host, "--target-port", str(self.target_port),
                             "--parent-pid", parent])
        self._wait_ready("host", deadline)
        self._spawn("ns", ["ip", "netns", "exec", self.name, sys.executable, _THIS_FILE, "--ns-side",
                           "--listen-host", self.address, "--listen-port", str(self.port),
                           "--unix", self.unix_path, "--parent-pid", parent])
        self._wait_ready("ns", deadline)
        self._wait_connect(deadline)

    def _check_route(self) -> None:
        """Refuse to go on unless the root namespace routes .address through our veth (not a real interface)."""
        cp = _ip("-4", "-o", "route", "get", self.address, check=False)
        if cp.returncode != 0 or f" dev {self.host_ifname} " not in f" {cp.stdout} ":
            raise RuntimeError(f"the route to {self.address} does not use {self.host_ifname}: "
                               f"{(cp.stdout or cp.stderr).strip()!r}")

    def _spawn(self, which: str, argv: list[str]) -> None:
        assert self._tmp is not None
        log = Path(self._tmp) / f"{which}-side.log"
        self.logs[which] = log
        with open(log, "wb") as f:
            self.procs[which] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                                 start_new_session=True)

    def _log_text(self, which: str) -> str:
        p = self.logs.get(which)
        try:
            return p.read_text(errors="replace")[-4000:] if p is not None else ""
        except OSError:
            return ""

    def _failure(self, what: str) -> RuntimeError:
        parts = [what]
        for which in ("ns", "host"):
            proc = self.procs.get(which)
            rc = proc.poll() if proc is not None else None
            parts.append(f"--- {which}-side relay (exit status {rc}) log:\n{self._log_text(which) or '(empty)'}")
        return RuntimeError("\n".join(parts))

    def _wait_ready(self, which: str, deadline: float) -> None:
        while True:
            if '"relay_ready"' in self._log_text(which):
                return
            if self.procs[which].poll() is not None:
                raise self._failure(f"the {which}-side relay of {self.name} exited before it was ready")
            if time.monotonic() > deadline:
                raise self._failure(f"the {which}-side relay of {self.name} was not ready within "
                                    f"{READY_TIMEOUT_S:g} s")
            time.sleep(0.01)

    def _wait_connect(self, deadline: float) -> None:
        self._check_route()
        last: Exception | None = None
        while time.monotonic() < deadline:
            for which, proc in self.procs.items():
                if proc.poll() is not None:
                    raise self._failure(f"the {which}-side relay of {self.name} exited")
            try:
                with socket.create_connection((self.address, self.port), timeout=1.0):
                    return
            except OSError as e:
                last = e
                time.sleep(0.02)
        raise self._failure(f"{self.address}:{self.port} did not accept connections within "
                            f"{READY_TIMEOUT_S:g} s (last error: {last!r})")

    def _teardown(self) -> None:
        for which in ("ns", "host"):
            proc = self.procs.pop(which, None)
            if proc is not None:
                _stop_process(proc)
        if self._entered:
            _ip("link", "del", self.host_ifname, check=False)
            _ip("netns", "del", self.name, check=False)
            with _lock:
                _live.discard(self.name)
            self._entered = False
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL it; wait (bounded) either way."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            proc.send_signal(sig)
        try:
            proc.wait(_KILL_TIMEOUT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything the relay left in its group
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(_KILL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass


# -------------------------------------------------------------------------------------------- the relays
_CHUNK = 65536


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes as they arrive; at EOF shut the write side of the other connection (half-close)."""
    while True:
        data = await reader.read(_CHUNK)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if transport is not None and not transport.is_closing():
        transport.abort()


async def _relay(cr: asyncio.StreamReader, cw: asyncio.StreamWriter, open_upstream, label: str) -> None:
    try:
        ur, uw = await asyncio.wait_for(open_upstream(), 10)
    except (OSError, asyncio.TimeoutError) as e:
        _log(f"{label}: cannot open the upstream connection: {e!r}")
        _abort(cw)
        return
    tasks = [asyncio.create_task(_pump(cr, uw)), asyncio.create_task(_pump(ur, cw))]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if failed:  # a reset or error on either side: reset the other side too
            for t in pending:
                t.cancel()
            _abort(cw)
            _abort(uw)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        for w in (cw, uw):
            try:
                w.close()
            except Exception:  # closing a broken transport
                pass
        for w in (cw, uw):
            try:
                await asyncio.wait_for(w.wait_closed(), 5)
            except (Exception, asyncio.CancelledError):
                pass


async def _watch_parent(parent_pid: int) -> None:
    while _pid_alive(parent_pid):
        await asyncio.sleep(0.5)
    _log(f"parent {parent_pid} is gone; exiting")


async def _serve_relay(args: argparse.Namespace) -> None:
    if args.ns_side:
        async def upstream():
            return await asyncio.open_unix_connection(args.unix)

        async def handle(r, w):
            await _relay(r, w, upstream, "ns-side")

        server = await asyncio.start_server(handle, args.listen_host, args.listen_port, backlog=1024,
                                            reuse_address=True)
        where: dict[str, Any] = {"listen": f"{args.listen_host}:{args.listen_port}", "unix": args.unix}
    else:
        async def upstream():
            return await asyncio.open_connection(args.target_host, args.target_port)

        async def handle(r, w):
            await _relay(r, w, upstream, "host-side")

        server = await asyncio.start_unix_server(handle, args.unix, backlog=1024)
        where = {"unix": args.unix, "target": f"{args.target_host}:{args.target_port}"}
    print(json.dumps({"relay_ready": True, "side": "ns" if args.ns_side else "host", "pid": os.getpid(), **where}),
          flush=True)
    async with server:
        if args.parent_pid:
            await _watch_parent(args.parent_pid)
        else:
            await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="TCP <-> unix-socket relays of NetnsForward (tests only).")
    side = p.add_mutually_exclusive_group(required=True)
    side.add_argument("--ns-side", action="store_true", help="listen on TCP (inside the namespace), relay to --unix")
    side.add_argument("--host-side", action="store_true", help="listen on --unix, relay to a loopback TCP target")
    p.add_argument("--unix", required=True, help="the unix-domain socket between the two relays")
    p.add_argument("--listen-host")
    p.add_argument("--listen-port", type=int)
    p.add_argument("--target-host", default="127.0.0.1")
    p.add_argument("--target-port", type=int)
    p.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    a = p.parse_args(argv)
    if a.ns_side and (not a.listen_host or not a.listen_port):
        p.error("--ns-side needs --listen-host and --listen-port")
    if a.host_side:
        if not a.target_port:
            p.error("--host-side needs --target-port")
        if not _is_loopback(a.target_host):
            p.error(f"--target-host must be a loopback address, got {a.target_host!r}")
    try:
        asyncio.run(_serve_relay(a))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
