"""The test fixtures for "remote" targets: the fake's access checks, HTTPS and keep-alive timeout (tests/fakes/
fake_openai.py, tls.py) and the network-namespace relay (tests/fakes/netns.py). Fast; no packager imports."""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest
from fakes.fake_openai import FakeOpenAIServer
from fakes.netns import NetnsForward, netns_available
from fakes.tls import make_tls_files

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}]}


def _post(srv: FakeOpenAIServer, headers: dict[str, str] | None = None, **kw) -> httpx.Response:
    return httpx.post(srv.base_url + "/v1/chat/completions", json=CHAT, headers=headers or {}, timeout=5, **kw)


def test_api_key_is_required_on_every_route_but_health_and_control():
    with FakeOpenAIServer(ttft_ms=0, itl_ms=0, output_tokens=2, require_api_key="sk-test") as srv:
        r = _post(srv)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "AuthenticationError"
        assert _post(srv, {"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(srv.base_url + "/v1/models", timeout=5).status_code == 401
        assert httpx.get(srv.base_url + "/metrics", timeout=5).status_code == 401
        assert httpx.get(srv.base_url + "/health", timeout=5).status_code == 200
        assert httpx.get(srv.base_url + "/ready", timeout=5).status_code == 200
        ok = _post(srv, {"Authorization": "Bearer sk-test"})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == " tok tok"
        st = srv.stats()  # /_fake/* is exempt
        assert st["requests_unauthorized"] == 4
        assert st["requests_total"] == 1
        assert "authorization" in st["headers_seen"] and st["headers_seen"] == sorted(st["headers_seen"])
        srv.configure(require_api_key="")
        assert _post(srv).status_code == 200
        assert "authorization" not in srv.stats()["headers_seen"]


def test_required_header_and_its_validation():
    with FakeOpenAIServer(ttft_ms=0, itl_ms=0, output_tokens=1, require_header="X-Tenant: acme") as srv:
        r = _post(srv)
        assert r.status_code == 400 and "x-tenant" in r.json()["error"]["message"].lower()
        assert _post(srv, {"X-Tenant": "other"}).status_code == 400
        assert _post(srv, {"x-tenant": "acme"}).status_code == 200
        st = srv.stats()
        assert st["requests_unauthorized"] == 2 and "x-tenant" in st["headers_seen"]
        with pytest.raises(Exception, match="400"):
            srv.configure(require_header="no colon here")
        srv.configure(require_api_key="k")  # both checks: the key is checked first
        assert _post(srv, {"X-Tenant": "acme"}).status_code == 401
        assert _post(srv, {"Authorization": "Bearer k"}).status_code == 400
        assert _post(srv, {"Authorization": "Bearer k", "X-Tenant": "acme"}).status_code == 200


def test_defaults_are_unchanged():
    with FakeOpenAIServer(ttft_ms=0, itl_ms=0, output_tokens=1) as srv:
        assert srv.base_url.startswith("http://127.0.0.1:")
        assert _post(srv).status_code == 200
        st = srv.stats()
        assert st["requests_unauthorized"] == 0
        assert st["settings"]["keepalive_timeout_s"] == 75.0 and st["settings"]["require_api_key"] == ""


def test_https_fake_verifies_with_the_ca_and_fails_without(tmp_path):
    tls = make_tls_files(tmp_path)
    assert tls.ca.exists() and tls.cert.exists() and tls.key.exists()
    with FakeOpenAIServer(ttft_ms=0, itl_ms=0, output_tokens=1, ssl_context=tls.server_context()) as srv:
        assert srv.base_url.startswith("https://127.0.0.1:")
        verify = ssl.create_default_context(cafile=str(tls.ca))
        assert httpx.get(srv.base_url + "/v1/models", verify=verify, timeout=5).status_code == 200
        assert _post(srv, verify=verify).status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(srv.base_url + "/v1/models", timeout=5)  # the system's trust store does not know our CA
        local = srv.base_url.replace("127.0.0.1", "localhost")  # the DNS SAN
        assert httpx.get(local + "/health", verify=verify, timeout=5).status_code == 200
        assert srv.stats()["requests_total"] == 2  # control calls over https


def test_process_mode_https_with_key_and_header(tmp_path):
    tls = make_tls_files(tmp_path)
    with FakeOpenAIServer(mode="process", ttft_ms=0, itl_ms=0, output_tokens=1, certfile=tls.cert,
                          keyfile=tls.key, require_api_key="-dash-key", require_header="X-A: b c") as srv:
        assert srv.base_url.startswith("https://")
        verify = tls.client_context()
        assert _post(srv, verify=verify).status_code == 401
        assert _post(srv, {"Authorization": "Bearer -dash-key", "X-A": "b c"}, verify=verify).status_code == 200
        assert srv.stats()["settings"]["require_header"] == "X-A: b c"


def _read_response(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def _idle_connection_closed(srv: FakeOpenAIServer, idle_s: float, where: tuple[str, int] | None = None) -> bool:
    with socket.create_connection(where or ("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = _read_response(s)
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower()
        time.sleep(idle_s)
        s.settimeout(0.2)
        try:
            return s.recv(1) == b""
        except socket.timeout:
            return False


def test_keepalive_timeout_closes_an_idle_connection_without_telling_the_client():
    with FakeOpenAIServer(keepalive_timeout_s=0.05) as srv:
        assert _idle_connection_closed(srv, 0.5)
    with FakeOpenAIServer() as srv:  # the default (75 s) keeps it open
        assert not _idle_connection_closed(srv, 0.5)


# ------------------------------------------------------------------------------------------------ netns
def _need_netns() -> None:
    why = netns_available()
    if why is not None:
        pytest.skip(why)


def _gone(fwd: NetnsForward) -> None:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert fwd.name not in names.split()
    link = subprocess.run(["ip", "link", "show", fwd.host_ifname], capture_output=True, text=True, timeout=10)
    assert link.returncode != 0


def test_netns_forward_rejects_a_non_loopback_target():
    with pytest.raises(ValueError, match="loopback"):
        NetnsForward(80, target_host="192.0.2.1")


def test_netns_forward_relays_a_streamed_chat_completion_promptly():
    _need_netns()
    with FakeOpenAIServer(ttft_ms=0, itl_ms=40, output_tokens=8) as srv:
        fwd = NetnsForward(srv.port)
        assert fwd.base_url == f"http://{fwd.address}:{fwd.port}" and fwd.url("https").startswith("https://10.213.")
        with fwd:
            procs = list(fwd.procs.values())
            body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
            arrivals: list[float] = []
            events: list[str] = []
            with httpx.stream("POST", fwd.base_url + "/v1/chat/completions", json=body, timeout=10) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        arrivals.append(time.perf_counter())
                        events.append(line[6:])
            assert events[-1] == "[DONE]"
            usage = json.loads(events[-2])["usage"]
            assert usage["completion_tokens"] == 8
            content = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:9]]
            assert content == [" tok"] * 8
            # Not buffered: the 8 tokens come 40 ms apart, so the stream takes ~280 ms from first to last token.
            assert arrivals[8] - arrivals[1] > 0.2
            assert srv.stats()["requests_by_path"]["/v1/chat/completions"] == 1

            # Many connections at once.
            results: list[int] = []

            def one() -> None:
                results.append(httpx.post(fwd.base_url + "/v1/chat/completions", json=CHAT, timeout=10).status_code)

            srv.configure(itl_ms=0, ttft_ms=100)
            threads = [threading.Thread(target=one) for _ in range(40)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)  # each request is bounded by its own 10 s timeout
            # all answered, and relayed side by side (not one at a time): no clock reading, which a loaded
            # machine could push past any bound
            assert results == [200] * 40
            assert srv.stats()["max_in_flight_seen"] > 1
        assert all(p.poll() is not None for p in procs)
        _gone(fwd)
        fwd.__exit__(None, None, None)  # twice is harmless
        _gone(fwd)


def test_netns_forward_passes_on_the_close_of_an_idle_keepalive_connection():
    _need_netns()
    with FakeOpenAIServer(keepalive_timeout_s=0.05) as srv, NetnsForward(srv.port) as fwd:
        assert _idle_connection_closed(srv, 0.5, (fwd.address, fwd.port))
    _gone(fwd)


def test_netns_forward_propagates_half_close():
    """The client shuts its write side; the server reads to EOF, answers, and closes; the client reads to EOF."""
    _need_netns()
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:  # one connection after the other, until told to stop
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:  # includes the accept timeout
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(b"got " + str(len(data)).encode())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with NetnsForward(lsock.getsockname()[1], listen_port=9000) as fwd:
            assert fwd.port == 9000
            # (The relay's readiness probe was a connection too: the server saw it open and close at once.)
            with socket.create_connection((fwd.address, fwd.port), timeout=5) as c:
                c.sendall(b"x" * 100_000)
                c.shutdown(socket.SHUT_WR)
                reply = b""
                while chunk := c.recv(65536):
                    reply += chunk
            assert reply == b"got 100000"
        _gone(fwd)
    finally:
        stop.set()
        t.join(5)
        lsock.close()


def test_netns_forward_https_with_a_certificate_for_the_namespace_address(tmp_path):
    _need_netns()
    fwd = NetnsForward(0)  # the address is known at once; the target port is set before enter
    tls = make_tls_files(tmp_path, hosts=(fwd.address,))
    with FakeOpenAIServer(ttft_ms=0, itl_ms=0, output_tokens=2, ssl_context=tls.server_context(),
                          require_api_key="sk-remote") as srv:
        fwd.target_port = srv.port
        with fwd:
            url = fwd.url("https") + "/v1/chat/completions"
            auth = {"Authorization": "Bearer sk-remote"}
            r = httpx.post(url, json=CHAT, headers=auth, verify=tls.client_context(), timeout=5)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
            assert httpx.post(url, json=CHAT, verify=tls.client_context(), timeout=5).status_code == 401
            with pytest.raises(httpx.ConnectError):
                httpx.post(url, json=CHAT, headers=auth, timeout=5)
    _gone(fwd)
