"""The bounds of one inference request, applied by the gateway (packager/serve/gateway.py) before it takes a
slot: the work it asks for (n x prompts), its max_tokens (a default, a ceiling), and for streams, the usage
report the gateway needs. Values are read the way the backend's request models read them (pydantic, lax), so
`n: "64"` or `max_tokens: 5000.0` cannot slip past a bound the backend would then not see.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RequestLimits:
    """Bounds of one inference request (bento args of the same names; None: no bound).

    max_tokens_default  max_tokens set on a request that gives none (nor max_completion_tokens)
    max_tokens_limit    a larger max_tokens (or max_completion_tokens) is refused with 400
    max_stream_s        a stream still running after this many seconds is ended (outcome `timeout`)
    """

    max_tokens_default: int | None = 1024
    max_tokens_limit: int | None = None
    max_stream_s: float | None = 900.0


class Prepared:
    """An inference request as the gateway relays it: the body to send, whether it streams, the slots it
    takes (`units`: n x prompts) and, when it is refused, why (`problem`, a 400 message)."""

    def __init__(self, body: bytes, stream: bool = False, strip_usage: bool = False, units: int = 1,
                 units_text: str = "", problem: str | None = None):
        self.body, self.stream, self.strip_usage = body, stream, strip_usage
        self.units, self.units_text, self.problem = units, units_text, problem


def _as_int(value: Any) -> int | None:
    """An integer as the backend's request model reads it (pydantic, lax): 3, 3.0 and "3" are 3; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return None
        return int(f) if f.is_integer() else None
    return None


def _as_bool(value: Any) -> bool | None:
    """A boolean as pydantic (lax) reads it: true/false, 1/0, "true"/"false", "yes"/"no", ...; else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "t", "yes", "y", "on"):
            return True
        if v in ("0", "false", "f", "no", "n", "off"):
            return False
    return None


def _count(value: Any, default: int = 1) -> int:
    v = _as_int(value)
    return v if v is not None and v >= 1 else default


def _prompts(prompt: Any) -> int:
    """Prompts in a completions request: a string or a list of token ids is one; a list of either, its length."""
    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        return len(prompt)
    return 1


def prepare_inference(body: bytes, path: str, limits: RequestLimits) -> Prepared:
    """Parse an inference request once: count its work, bound its max_tokens, ask a stream for its usage.
    A body that is not a JSON object is relayed as it is (the backend answers 400 with its own message)."""
    try:
        req = json.loads(body) if body else None
    except (ValueError, RecursionError):  # not JSON, or nested too deeply
        req = None
    if not isinstance(req, dict):
        return Prepared(body)
    changed = False
    chat = path.endswith("/chat/completions")
    n = max(_count(req.get("n")), _count(req.get("best_of")))
    prompts = 1 if chat else _prompts(req.get("prompt"))
    units_text = f"n={n} x {prompts} prompts" if prompts > 1 else f"n={n}"
    # chat reads max_completion_tokens and max_tokens; completions only max_tokens
    keys = [k for k in (("max_tokens", "max_completion_tokens") if chat else ("max_tokens",))
            if req.get(k) is not None]
    for k in keys:
        v = _as_int(req[k])
        if limits.max_tokens_limit is not None and v is not None and v > limits.max_tokens_limit:
            return Prepared(body, problem=f"{k}={req[k]} is above this bento's limit of {limits.max_tokens_limit} "
                                          "(bento arg max_tokens_limit).")
    if not keys and limits.max_tokens_default is not None:
        req["max_tokens"] = limits.max_tokens_default
        changed = True
    stream = strip_usage = False
    if _as_bool(req.get("stream")):
        stream = True
        opts = req.get("stream_options") or {}
        if not opts.get("include_usage"):
            req["stream_options"] = {**opts, "include_usage": True}
            strip_usage = changed = True
    return Prepared(json.dumps(req).encode() if changed else body, stream, strip_usage, n * prompts, units_text)
