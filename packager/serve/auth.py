"""API keys of a bento: where the server reads them, how a request's key is checked, how clients send one.

Server side (a running bento, read from its environment when it starts; never from its build arguments, so a
key is never written into a bento, a config dump, a registry record, a report or a log):

    PACKAGER_API_KEYS        one or several keys, separated by commas or whitespace
    PACKAGER_API_KEYS_FILE   a file of keys, one per line ('#' starts a comment), e.g. a mounted Secret
    PACKAGER_METRICS_TOKEN   optional: /metrics then asks for this bearer token too

Client side (every client packager ships: evaluate, loadtest, monitor, canary, release): packager.core.access
(PACKAGER_API_KEY, sent as `Authorization: Bearer KEY`, extra headers and TLS verification).

Keys are compared in constant time (`hmac.compare_digest`), against every configured key whatever matched.
"""
from __future__ import annotations

import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Mapping, Sequence

from packager.errors import ConfigError

ENV_API_KEYS = "PACKAGER_API_KEYS"
ENV_API_KEYS_FILE = "PACKAGER_API_KEYS_FILE"
ENV_METRICS_TOKEN = "PACKAGER_METRICS_TOKEN"
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
