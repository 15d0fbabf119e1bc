"""API keys of a bento: where the server reads them, how a request's key is checked, how clients send one.

Server side (a running bento, read from its environment when it starts; never from its build arguments, so a
key is never written into a bento, a config dump, a registry record, a report or a log):

    PACKAGER_API_KEYS        one or several keys, separated by commas or whitespace
    PACKAGER_API_KEYS_FILE   a file of keys, one per line ('#' starts a comment), e.g. a mounted Secret
    PACKAGER_METRICS_TOKEN   optional: /metrics then asks for this bearer token too

Client side (every client packager ships: evaluate, loadtest, monitor, canary, release):

    PACKAGER_API_KEY         the key sent as `Authorization: Bearer KEY`

Keys are compared in constant time (`hmac.compare_digest`), against every configured key whatever matched.
"""
from __future__ import annotations

import contextlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from packager.errors import ConfigError

ENV_API_KEYS = "PACKAGER_API_KEYS"
ENV_API_KEYS_FILE = "PACKAGER_API_KEYS_FILE"
ENV_METRICS_TOKEN = "PACKAGER_METRICS_TOKEN"
ENV_CLIENT_KEY = "PACKAGER_API_KEY"
MIN_KEY_CHARS = 16


def _split(text: str) -> list[str]:
    keys = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        keys += [k for k in re.split(r"[\s,]+", line) if k]
    return keys


def load_api_keys(environ: Mapping[str, str] | None = None) -> list[str]:
    """The keys a bento accepts, from PACKAGER_API_KEYS and PACKAGER_API_KEYS_FILE (both may be set).
    Raises ConfigError for a keys file that cannot be read or a key too short to be a secret."""
    env = os.environ if environ is None else environ
    keys = _split(env.get(ENV_API_KEYS, ""))
    path = env.get(ENV_API_KEYS_FILE, "").strip()
    if path:
        try:
            keys += _split(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{ENV_API_KEYS_FILE}={path} cannot be read ({type(e).__name__}: "
                              f"{getattr(e, 'strerror', None) or e}). Point it at a file of API keys, one per "
                              "line.") from None
    short = [i for i, k in enumerate(keys, 1) if len(k) < MIN_KEY_CHARS]
    if short:
        raise ConfigError(f"API key number {', '.join(map(str, short))} (of {len(keys)}) is shorter than "
                          f"{MIN_KEY_CHARS} characters: too easy to guess. Generate one with "
                          "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`.")
    return list(dict.fromkeys(keys))


def load_metrics_token(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get(ENV_METRICS_TOKEN, "").strip() or None


def generate_key() -> str:
    """A fresh random key (256 bits), for a local run that was given none."""
    return "pk-" + secrets.token_urlsafe(32)


def bearer_token(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an `Authorization: Bearer TOKEN` header among raw ASGI headers, else None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class KeyCheck:
    """Accepts a request whose bearer token equals one of `keys`; the comparison time does not depend on
    which key matched or how much of it did."""

    def __init__(self, keys: Sequence[str]):
        self._keys = [k.encode() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def accepts(self, token: bytes | None) -> bool:
        if token is None:
            return False
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(token, key)
        return ok


def client_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    """The key clients send (PACKAGER_API_KEY), or None."""
    env = os.environ if environ is None else environ
    return env.get(ENV_CLIENT_KEY, "").strip() or None


def client_headers(api_key: str | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`Authorization` for a client request: the given key, else PACKAGER_API_KEY, else nothing."""
    key = api_key or client_api_key(environ)
    return {"Authorization": f"Bearer {key}"} if key else {}


def unauthorized_hint(status: int) -> str:
    """A sentence for a client error message when an endpoint answered 401 or 403, else ''."""
    if status in (401, 403):
        return (f" The endpoint wants an API key: set {ENV_CLIENT_KEY} to one of its keys "
                "(sent as `Authorization: Bearer KEY`).")
    return ""


@contextlib.contextmanager
def use_client_key(key: str | None) -> Iterator[None]:
    """Within the block, clients of this process and the processes it starts (locust) send `key`; the
    previous PACKAGER_API_KEY comes back after it. For a bento this process started itself."""
    if key is None:
        yield
        return
    before = os.environ.get(ENV_CLIENT_KEY)
    os.environ[ENV_CLIENT_KEY] = key
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_CLIENT_KEY, None)
        else:
            os.environ[ENV_CLIENT_KEY] = before
