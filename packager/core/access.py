"""How packager's clients reach an endpoint: its API key, extra headers and TLS verification.

Every client packager ships reads this one place: evaluate, loadtest (and its locust processes), monitor,
canary, release. The CLI sets it from its flags (`configure_client`); it travels to the locust processes in
their environment, never in a file, so a key or a header never lands in a plan, a result, a report or a log:

    PACKAGER_API_KEY          the key, sent as `Authorization: Bearer KEY`
    PACKAGER_CLIENT_HEADERS   extra headers, a JSON object {"Name": "value"}
    PACKAGER_CA_BUNDLE        a PEM file of CA certificates that https targets are verified with
    PACKAGER_TLS_VERIFY       "0": https targets are not verified (--insecure); anything else verifies

The locustfile reads the same variables by name (it cannot import packager).
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from packager.errors import ConfigError

ENV_CLIENT_KEY = "PACKAGER_API_KEY"
ENV_CLIENT_HEADERS = "PACKAGER_CLIENT_HEADERS"
ENV_CA_BUNDLE = "PACKAGER_CA_BUNDLE"
ENV_TLS_VERIFY = "PACKAGER_TLS_VERIFY"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
# Headers the client sets itself: a user value would break the request rather than add to it.
_RESERVED = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass(frozen=True)
class ClientAccess:
    """What a client sends and checks; `describe()` says it without the secrets."""

    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    ca_bundle: str | None = None
    verify: bool = True


def parse_header(text: str) -> tuple[str, str]:
    """'Name: value' -> ('Name', 'value'); ConfigError for anything that is not one valid header."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        raise ConfigError(f"--header {text!r} is not 'Name: value' (e.g. --header 'X-Team: ml-platform').")
    if not _TOKEN.match(name):
        raise ConfigError(f"--header {text!r}: {name!r} is not a valid header name (letters, digits and "
                          "!#$%&'*+.^_`|~- only).")
    if any(c in value for c in "\r\n\0"):
        raise ConfigError(f"--header {name}: the value holds a line break or NUL, which would split the request.")
    if name.lower() in _RESERVED:
        raise ConfigError(f"--header {name}: packager's client sets this header itself; drop it.")
    return name, value


def read_key_file(path: Path) -> str:
    """The key in a file: its first line that is neither empty nor a '#' comment."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--api-key-file {path} cannot be read ({type(e).__name__}: "
                          f"{getattr(e, 'strerror', None) or e}).") from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise ConfigError(f"--api-key-file {path} holds no key (only empty lines or '#' comments).")


def resolve_access(api_key_env: str | None = None, api_key_file: Path | None = None,
                   headers: Sequence[str] = (), ca_bundle: Path | None = None, insecure: bool = False,
                   environ: Mapping[str, str] | None = None) -> ClientAccess:
    """The client access from CLI flags; every mistake is a ConfigError before any request is sent.

    The key comes from `api_key_file`, else the variable named by `api_key_env`, else PACKAGER_API_KEY."""
    env = os.environ if environ is None else environ
    if api_key_env is not None and api_key_file is not None:
        raise ConfigError("Give the API key one way: --api-key-env NAME or --api-key-file PATH, not both.")
    key: str | None
    if api_key_file is not None:
        key = read_key_file(api_key_file)
    elif api_key_env is not None:
        name = api_key_env.strip().lstrip("$")
        key = env.get(name, "").strip() or None
        if key is None:
            raise ConfigError(f"--api-key-env {name}: that environment variable is not set or empty. Export it "
                              f"(export {name}=...) or give --api-key-file.")
    else:
        key = env.get(ENV_CLIENT_KEY, "").strip() or None
    extra: dict[str, str] = {}
    for h in headers:
        name, value = parse_header(h)
        if name.lower() == "authorization" and key:
            raise ConfigError("--header Authorization and an API key both set Authorization; give one of them.")
        if name.lower() in {k.lower() for k in extra}:
            raise ConfigError(f"--header {name} is given twice; give each header once.")
        extra[name] = value
    if ca_bundle is not None and insecure:
        raise ConfigError("--ca-bundle verifies TLS and --insecure turns verification off; give one of them.")
    bundle = None
    if ca_bundle is not None:
        p = Path(ca_bundle)
        if not p.is_file():
            raise ConfigError(f"--ca-bundle {p} is not a file; give a PEM file of CA certificates.")
        try:
            ssl.create_default_context(cafile=str(p))
        except (ssl.SSLError, OSError, ValueError) as e:
            raise ConfigError(f"--ca-bundle {p} holds no usable CA certificate ({e}).") from None
        bundle = str(p.resolve())
    return ClientAccess(api_key=key, headers=extra, ca_bundle=bundle, verify=not insecure)


_ENV_NAMES = (ENV_CLIENT_KEY, ENV_CLIENT_HEADERS, ENV_CA_BUNDLE, ENV_TLS_VERIFY)


def _set_environ(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextlib.contextmanager
def environ_scope(values: Mapping[str, str | None]) -> Iterator[None]:
    """Within the block these environment variables hold these values (None: unset); their previous values
    come back after it, also after an error."""
    before = {name: os.environ.get(name) for name in values}
    try:
        _set_environ(values)
        yield
    finally:
        _set_environ(before)


@contextlib.contextmanager
def access_scope(access: ClientAccess) -> Iterator[ClientAccess]:
    """Within the block, `access` is what every client of this process, and of the processes it starts
    (locust), uses; the previous settings come back after it, also after an error."""
    values = dict(zip(_ENV_NAMES, (access.api_key, json.dumps(access.headers) if access.headers else None,
                                   access.ca_bundle, None if access.verify else "0")))
    with environ_scope(values):
        yield access


def current_access(environ: Mapping[str, str] | None = None) -> ClientAccess:
    """The access clients use now, from the environment (see the module doc)."""
    env = os.environ if environ is None else environ
    try:
        headers = json.loads(env.get(ENV_CLIENT_HEADERS) or "{}")
    except ValueError:
        raise ConfigError(f"{ENV_CLIENT_HEADERS} is not a JSON object of headers.") from None
    if not isinstance(headers, dict):
        raise ConfigError(f"{ENV_CLIENT_HEADERS} is not a JSON object of headers.")
    return ClientAccess(api_key=env.get(ENV_CLIENT_KEY, "").strip() or None,
                        headers={str(k): str(v) for k, v in headers.items()},
                        ca_bundle=env.get(ENV_CA_BUNDLE) or None, verify=env.get(ENV_TLS_VERIFY, "1") != "0")


def client_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    """The key clients send (PACKAGER_API_KEY), or None."""
    return current_access(environ).api_key


def client_headers(api_key: str | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers of a client request: the extra headers, and `Authorization` for the given key, else
    PACKAGER_API_KEY, else none."""
    access = current_access(environ)
    key = api_key or access.api_key
    out = dict(access.headers)
    if key:
        out["Authorization"] = f"Bearer {key}"
    return out


def tls_verify(environ: Mapping[str, str] | None = None) -> ssl.SSLContext | bool:
    """httpx's `verify=`: False with --insecure, a context of the CA bundle, else True (the system's CAs)."""
    access = current_access(environ)
    if not access.verify:
        return False
    if access.ca_bundle:
        return ssl.create_default_context(cafile=access.ca_bundle)
    return True


def http_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for an httpx client: the headers and TLS verification of `current_access`."""
    return {"headers": client_headers(environ=environ), "verify": tls_verify(environ)}


def unauthorized_hint(status: int) -> str:
    """A sentence for a client error message when an endpoint answered 401 or 403, else ''."""
    if status in (401, 403):
        return (" The endpoint wants an API key: give one with --api-key-env NAME or --api-key-file PATH, or set "
                f"{ENV_CLIENT_KEY} (sent as `Authorization: Bearer KEY`).")
    return ""


@contextlib.contextmanager
def use_client_key(key: str | None) -> Iterator[None]:
    """Within the block, clients of this process and the processes it starts (locust) send `key`; the
    previous PACKAGER_API_KEY comes back after it. For a bento this process started itself."""
    if key is None:
        yield
        return
    with environ_scope({ENV_CLIENT_KEY: key}):
        yield


# ------------------------------------------------------------------------------------------------ targets
def normalize_target(url: str) -> str:
    """The base URL of an OpenAI-compatible target (scheme, host, port and path, no trailing slash or /v1);
    ConfigError for anything that is not an http(s) URL with a host. Any host is accepted."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError as e:
        raise ConfigError(f"Target {url!r} is not a valid URL ({e}); give e.g. https://llm.example.com or "
                          "http://127.0.0.1:8000.") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"Target {url!r} is not an http(s) URL with a host; give e.g. https://llm.example.com "
                          "or http://127.0.0.1:8000.")
    if parts.query or parts.fragment:
        raise ConfigError(f"Target {url!r} carries a query or fragment; give the server's base URL only.")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")).rstrip("/")


def is_local_host(url: str) -> bool:
    """True when the URL's host is this machine's loopback (127.0.0.0/8, ::1 or localhost)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def where_line(url: str, access: ClientAccess | None = None) -> str:
    """One line naming where requests go: this machine or a remote host, plain or TLS, with or without a key."""
    access = access or current_access()
    parts = urlsplit(url)
    where = "this machine (loopback)" if is_local_host(url) else f"REMOTE host {parts.hostname}"
    tls = ("TLS, not verified" if not access.verify else "TLS") if parts.scheme == "https" else "plain http"
    key = "with an API key" if access.api_key else "no API key"
    extra = f", headers {', '.join(sorted(access.headers))}" if access.headers else ""
    return f"{url} on {where}, {tls}, {key}{extra}"
