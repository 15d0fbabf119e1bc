"""Turn a LoadTestConfig into the plan the locustfile executes: a request pool and a list of phases.

Profiles and prompt sources are registered explicitly (PROFILES, PROMPT_SOURCES): a profile kind maps to a
function returning phases; a prompt source kind maps to a function returning request bodies (OpenAI chat
requests without model/stream, which the locustfile sets).

Phase kinds understood by the locustfile (packager/loadtest/locustfile_openai.py):
  closed   {users, duration_s, ramp_s, first_request_warmup}: user i of N starts i/N of ramp_s after the phase's
           start; with first_request_warmup, each user's first request is marked as its warm-up, and a user whose
           first request outlasts the phase sends one more (during the drain), to be judged
  open     {rate_per_s, arrival: poisson|constant, max_in_flight, duration_s}
  schedule {arrivals: [[offset_s, request_index | null], ...], background_rate_per_s, max_in_flight, duration_s}
Each phase also carries `index`, `label` and `load` ({"requests_per_s": x} or {"users": n} or {"burst_size": n}).

Prompt sources: synthetic, suite, jsonl (OpenAI chat requests), conversations (recorded ShareGPT or OpenAI
conversations, single- or multi-turn) and hf (a Hugging Face dataset from the local cache only). The plan's
`prompt_stats` describes the pool: its size and its input-length (words) and max_tokens distributions.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Callable

from packager.core.plugins import Registry
from packager.core.prompt_format import PATHS, plain_prompt
from packager.errors import ConfigError
from packager.fsutil import iter_jsonl
from packager.loadtest.config import (
    BurstProfile,
    ConcurrencyProfile,
    ConversationPrompts,
    HfDatasetPrompts,
    JsonlPrompts,
    LengthDistribution,
    LoadTestConfig,
    RateProfile,
    ReplayProfile,
    SuitePrompts,
    SweepProfile,
    SyntheticPrompts,
)
from packager.loadtest.traffic_data import conversations_requests, count_words, hf_requests

PLAN_VERSION = 1

# Common English words that the bundled SmolLM2 tokenizer (and GPT-2-style BPE tokenizers in general) encodes
# as ONE token each with a leading space; synthetic prompts of n words are therefore about n tokens.
WORDS = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue side "
    "kind head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health person "
    "art war history party result change morning reason research girl guy moment air teacher force education "
    "apple river green blue small large happy quick slow bright dark warm cold music light stone paper table "
    "window garden market street bridge island forest ocean mountain valley summer winter spring autumn cloud "
    "rain snow wind fire earth metal glass wood silver gold bread milk cheese coffee tea sugar salt dinner lunch "
    "breakfast train plane boat road map letter picture song dance movie film player ball field court price "
    "cost value plan step rule test data model report code image sound voice color shape size speed weight "
    "heat energy"
).split()

RequestBody = dict[str, Any]
PROMPT_SOURCES: Registry[Callable[[Any, LoadTestConfig], list[RequestBody]]] = Registry("prompt source")
PROFILES: Registry[Callable[[Any, LoadTestConfig, list[RequestBody]], list[dict]]] = Registry("traffic profile")


# --------------------------------------------------------------------------------- prompt sources
def sample_length(d: LengthDistribution, rng: random.Random) -> int:
    lo = d.min if d.min is not None else 1
    hi = d.max if d.max is not None else None
    if d.dist == "constant":
        v = d.mean
    elif d.dist == "uniform":
        v = rng.randint(lo, hi)  # type: ignore[arg-type]
    else:
        v = int(round(rng.gauss(d.mean, d.std)))
    v = max(lo, v)
    if hi is not None:
        v = min(hi, v)
    return v


def synthetic_text(n_words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


@PROMPT_SOURCES.register("synthetic")
def synthetic_requests(src: SyntheticPrompts, cfg: LoadTestConfig) -> list[RequestBody]:
    rng = random.Random(cfg.seed)
    n = min(src.unique_prompts, cfg.max_requests)
    out: list[RequestBody] = []
    for _ in range(n):
        n_in = sample_length(src.input_tokens, rng)
        n_out = cfg.max_tokens or sample_length(src.output_tokens, rng)
        out.append(synthetic_body(n_in, n_out, src.force_output_tokens, rng))
    return out


def synthetic_body(n_in: int, n_out: int, force: bool, rng: random.Random) -> RequestBody:
    body: RequestBody = {"messages": [{"role": "user", "content": synthetic_text(n_in, rng)}], "max_tokens": n_out}
    if force:
        body["ignore_eos"] = True
        body["min_tokens"] = n_out
    return body


@PROMPT_SOURCES.register("suite")
def suite_requests(src: SuitePrompts, cfg: LoadTestConfig) -> list[RequestBody]:
    from packager.evaluate.suite import load_suite

    suite = load_suite(src.suite)
    return [{"messages": it.chat_messages(), "max_tokens": cfg.max_tokens or it.max_tokens} for it in suite.items]


_OVERRIDDEN = ("model", "stream", "stream_options")


@PROMPT_SOURCES.register("jsonl")
def jsonl_requests(src: JsonlPrompts, cfg: LoadTestConfig) -> list[RequestBody]:
    p = Path(src.path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Request file {p} does not exist; give a JSONL file of OpenAI chat requests.") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"Request file {p} cannot be read as UTF-8 text: {e}.") from None
    out: list[RequestBody] = []
    for lineno, obj in iter_jsonl(text, str(p)):
        if not isinstance(obj, dict):
            raise ConfigError(f"{p}, line {lineno}: expected a JSON object (a chat request), got {type(obj).__name__}.")
        msgs = obj.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in msgs):
            raise ConfigError(f"{p}, line {lineno}, field 'messages': expected a non-empty list of "
                              "{'role': ..., 'content': ...} objects.")
        if obj.get("n", 1) != 1:
            raise ConfigError(f"{p}, line {lineno}, field 'n': only n=1 is supported (got {obj['n']!r}).")
        body = {k: v for k, v in obj.items() if k not in _OVERRIDDEN}
        if "max_completion_tokens" in body and "max_tokens" not in body:
            body["max_tokens"] = body.pop("max_completion_tokens")
        if cfg.max_tokens:
            body["max_tokens"] = cfg.max_tokens
        mt = body.get("max_tokens")
        if mt is not None and (not isinstance(mt, int) or mt < 1):
            raise ConfigError(f"{p}, line {lineno}, field 'max_tokens': expected a positive integer, got {mt!r}.")
        out.append(body)
    if not out:
        raise ConfigError(f"Request file {p} holds no requests.")
    return out


PROMPT_SOURCES.register("conversations")(conversations_requests)
PROMPT_SOURCES.register("hf")(hf_requests)


# --------------------------------------------------------------------------------------- profiles
def closed_phase(users: int, duration_s: float, cfg: LoadTestConfig) -> dict:
    """A closed-loop phase; its users start over the first `cfg.ramp_fraction` of it (none for one user), and with a
    ramp each user's first request is its warm-up (packager.loadtest.metrics.summarize_phase)."""
    ramp = round(cfg.ramp_fraction * duration_s, 6) if users > 1 else 0.0
    return {"kind": "closed", "users": users, "duration_s": duration_s, "ramp_s": ramp,
            "first_request_warmup": cfg.ramp_fraction > 0, "label": f"{users} users", "load": {"users": users}}


@PROFILES.register("concurrency")
def concurrency_phases(p: ConcurrencyProfile, cfg: LoadTestConfig, pool: list[RequestBody]) -> list[dict]:
    return [closed_phase(p.users, p.duration_s, cfg)]


@PROFILES.register("rate")
def rate_phases(p: RateProfile, cfg: LoadTestConfig, pool: list[RequestBody]) -> list[dict]:
    return [{"kind": "open", "rate_per_s": p.requests_per_s, "arrival": p.arrival, "max_in_flight": p.max_in_flight,
             "duration_s": p.duration_s, "label": f"{p.requests_per_s:g} req/s ({p.arrival})",
             "load": {"requests_per_s": p.requests_per_s}}]


@PROFILES.register("sweep")
def sweep_phases(p: SweepProfile, cfg: LoadTestConfig, pool: list[RequestBody]) -> list[dict]:
    out = []
    for v in p.values:
        if p.mode == "rate":
            out.append({"kind": "open", "rate_per_s": v, "arrival": p.arrival, "max_in_flight": p.max_in_flight,
                        "duration_s": p.step_duration_s, "label": f"{v:g} req/s", "load": {"requests_per_s": v}})
        else:
            out.append(closed_phase(int(v), p.step_duration_s, cfg))
    return out


@PROFILES.register("burst")
def burst_phases(p: BurstProfile, cfg: LoadTestConfig, pool: list[RequestBody]) -> list[dict]:
    arrivals = [[round(b * p.interval_s, 6), None] for b in range(p.bursts) for _ in range(p.burst_size)]
    label = f"bursts {p.bursts}x{p.burst_size} every {p.interval_s:g}s"
    if p.background_requests_per_s:
        label += f" + {p.background_requests_per_s:g} req/s"
    return [{"kind": "schedule", "arrivals": arrivals, "background_rate_per_s": p.background_requests_per_s,
             "max_in_flight": p.max_in_flight, "duration_s": p.interval_s * p.bursts, "label": label,
             "load": {"burst_size": p.burst_size, "requests_per_s": p.burst_size / p.interval_s
                      + p.background_requests_per_s}}]


def read_trace(path: str) -> list[dict]:
    """A JSONL trace: {"timestamp_s": float, "input_tokens": int, "output_tokens": int} or "messages" instead
    of input_tokens. Lines are sorted by timestamp; the first is time zero."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Trace file {p} does not exist; give a JSONL file with timestamp_s, input_tokens "
                          "and output_tokens on every line.") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"Trace file {p} cannot be read as UTF-8 text: {e}.") from None
    rows = []
    for lineno, obj in iter_jsonl(text, str(p)):
        if not isinstance(obj, dict):
            raise ConfigError(f"{p}, line {lineno}: expected a JSON object.")
        ts = obj.get("timestamp_s")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
            raise ConfigError(f"{p}, line {lineno}, field 'timestamp_s': expected a number of seconds, got {ts!r}.")
        out_t = obj.get("output_tokens")
        if not isinstance(out_t, int) or isinstance(out_t, bool) or out_t < 1:
            raise ConfigError(f"{p}, line {lineno}, field 'output_tokens': expected a positive integer, got {out_t!r}.")
        if "messages" in obj:
            if not isinstance(obj["messages"], list) or not obj["messages"]:
                raise ConfigError(f"{p}, line {lineno}, field 'messages': expected a non-empty list.")
        else:
            in_t = obj.get("input_tokens")
            if not isinstance(in_t, int) or isinstance(in_t, bool) or in_t < 1:
                raise ConfigError(f"{p}, line {lineno}, field 'input_tokens': expected a positive integer, "
                                  f"got {in_t!r} (or give 'messages').")
        extra = set(obj) - {"timestamp_s", "input_tokens", "output_tokens", "messages", "id"}
        if extra:
            raise ConfigError(f"{p}, line {lineno}: unknown field(s) {sorted(extra)}; allowed: timestamp_s, "
                              "input_tokens, output_tokens, messages, id.")
        rows.append(obj)
    if not rows:
        raise ConfigError(f"Trace file {p} holds no requests.")
    rows.sort(key=lambda r: r["timestamp_s"])
    return rows


@PROFILES.register("replay")
def replay_phases(p: ReplayProfile, cfg: LoadTestConfig, pool: list[RequestBody]) -> list[dict]:
    """Appends one request per trace line to `pool` (their lengths come from the trace)."""
    rows = read_trace(p.trace)
    t0 = rows[0]["timestamp_s"]
    rng = random.Random(cfg.seed + 1)
    arrivals = []
    skipped = 0
    for r in rows:
        off = (r["timestamp_s"] - t0) / p.speedup
        if off >= cfg.max_duration_s:
            skipped += 1
            continue
        n_out = cfg.max_tokens or r["output_tokens"]
        if "messages" in r:
            body: RequestBody = {"messages": r["messages"], "max_tokens": n_out, "ignore_eos": True,
                                 "min_tokens": n_out}
        else:
            body = synthetic_body(r["input_tokens"], n_out, True, rng)
        arrivals.append([round(off, 6), len(pool)])
        pool.append(body)
    last = arrivals[-1][0] if arrivals else 0.0
    duration = min(cfg.max_duration_s, last + 1e-3)
    return [{"kind": "schedule", "arrivals": arrivals, "background_rate_per_s": 0.0, "max_in_flight": p.max_in_flight,
             "duration_s": duration, "label": f"replay x{p.speedup:g} ({len(arrivals)} requests)",
             "load": {"requests_per_s": len(arrivals) / duration if duration > 0 else 0.0},
             "trace_requests_beyond_max_duration": skipped}]


def source_label(cfg: LoadTestConfig) -> str:
    """Where the plan's requests come from, in words."""
    if isinstance(cfg.profile, ReplayProfile):
        return f"replay trace {cfg.profile.trace}"
    src = cfg.prompts
    if isinstance(src, ConversationPrompts):
        return f"conversations {src.path} ({'multi-turn' if src.multi_turn else 'single-turn'})"
    if isinstance(src, HfDatasetPrompts):
        extra = f", config {src.config_name}" if src.config_name else ""
        return f"Hugging Face dataset {src.dataset} (split {src.split}{extra})"
    if isinstance(src, JsonlPrompts):
        return f"requests file {src.path}"
    if isinstance(src, SuitePrompts):
        return f"suite {src.suite}"
    return "synthetic prompts"


def _dist(values: list[float]) -> dict[str, float | None]:
    from packager.loadtest.metrics import percentile

    return {"mean": sum(values) / len(values) if values else None, "p50": percentile(values, 50),
            "p90": percentile(values, 90), "p99": percentile(values, 99), "max": max(values) if values else None}


def body_input_words(body: RequestBody) -> int:
    """Words of every message content of a request (or of its prompt): an estimate of its input tokens."""
    if "messages" in body:
        return sum(count_words(m.get("content")) for m in body["messages"] if isinstance(m, dict))
    return count_words(body.get("prompt"))


def prompt_stats(pool: list[RequestBody], source: str, notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request pool's size and length distributions: input words (a token estimate) and max_tokens
    (over the requests that set it: `max_tokens.count`), each with mean, p50, p90, p99 and max."""
    mts = [float(b["max_tokens"]) for b in pool if isinstance(b.get("max_tokens"), (int, float))]
    return {"source": source, "count": len(pool),
            "input_words": _dist([float(body_input_words(b)) for b in pool]),
            "max_tokens": {"count": len(mts), **_dist(mts)}, **(notes or {})}


def build_plan(cfg: LoadTestConfig, target_url: str, model: str, prompt_format: str = "chat") -> dict:
    """The JSON plan for the locustfile. `prompt_format` completion sends each request's messages as one raw
    prompt to /v1/completions (a base model without a chat template; packager.core.prompt_format)."""
    if cfg.profile.kind == "replay":
        pool: list[RequestBody] = []  # the trace defines every request
    else:
        pool = PROMPT_SOURCES.get(cfg.prompts.kind)(cfg.prompts, cfg)
    notes = dict(getattr(pool, "notes", {}))  # a RequestPool's notes, shown in prompt_stats
    pool = list(pool)
    phases = PROFILES.get(cfg.profile.kind)(cfg.profile, cfg, pool)
    if cfg.temperature is not None:
        for b in pool:
            b["temperature"] = cfg.temperature
    if not pool:
        raise ConfigError("The load plan has no requests (empty prompt source or trace).")
    for i, ph in enumerate(phases):
        ph["index"] = i
    stats = prompt_stats(pool, source_label(cfg), notes)  # of the chat messages, before any completion prompt
    endpoint = PATHS["completion" if prompt_format == "completion" else "chat"]
    if prompt_format == "completion":
        pool[:] = [_as_completion(b) for b in pool]
    shares = max(1, cfg.workers)
    return {
        "plan_version": PLAN_VERSION,
        "target_url": target_url,
        "endpoint": endpoint,
        "prompt_format": prompt_format,
        "model": model,
        "requests": pool,
        "phases": phases,
        "max_requests": cfg.max_requests,
        "drain_timeout_s": cfg.drain_timeout_s,
        "request_timeout_s": cfg.request_timeout_s,
        "seed": cfg.seed,
        "pool_offset": cfg.pool_offset,
        "shares": shares,
        "prompt_stats": stats,
    }


def _as_completion(body: RequestBody) -> RequestBody:
    """A chat request as a /v1/completions request: its messages as one raw prompt, other fields kept."""
    if "messages" not in body:
        return body
    out = {k: v for k, v in body.items() if k != "messages"}
    out["prompt"] = plain_prompt(body["messages"])
    return out


def planned_wall_s(plan: dict) -> float:
    """Upper bound of a plan's wall time: every phase's dispatch plus its drain timeout."""
    return sum(float(ph["duration_s"]) + float(plan["drain_timeout_s"]) for ph in plan["phases"])
