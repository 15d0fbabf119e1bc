"""Recorded traffic for load tests: conversation files (ShareGPT or OpenAI messages, JSONL or one JSON array,
single-turn or multi-turn with growing history) and Hugging Face datasets from the local cache only (nothing is
downloaded at run time). packager.loadtest.plan registers them as the prompt sources `conversations` and `hf`.

Each request's max_tokens is the recorded answer's length in words (a token estimate, at least 1, at most
output_cap) unless the load test sets max_tokens; the requests of one conversation are consecutive, in turn order.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from packager.core.access import environ_scope
from packager.errors import ConfigError
from packager.fsutil import iter_jsonl
from packager.loadtest.config import ConversationPrompts, HfDatasetPrompts, LoadTestConfig

RequestBody = dict[str, Any]


# ------------------------------------------------------------------- recorded conversations (ShareGPT, OpenAI)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
                  "model": "assistant"}
OPENAI_ROLES = ("system", "user", "assistant")


class RequestPool(list):
    """A prompt source's request bodies plus `notes` about how they were made (shown in the plan's prompt_stats)."""

    def __init__(self, items: Any = (), notes: dict[str, Any] | None = None):
        super().__init__(items)
        self.notes: dict[str, Any] = dict(notes or {})


def normalize_conversation(obj: Any, where: str) -> list[dict[str, Any]]:
    """A ShareGPT {"conversations": [{"from", "value"}]} or OpenAI {"messages": [{"role", "content"}]} object as
    OpenAI messages; ConfigError naming `where` (file and line) for anything else."""
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a JSON object with 'conversations' (ShareGPT) or 'messages' "
                          f"(OpenAI), got {type(obj).__name__}.")
    if "conversations" in obj:
        field, role_key, text_key, roles = "conversations", "from", "value", SHAREGPT_ROLES
    elif "messages" in obj:
        field, role_key, text_key, roles = "messages", "role", "content", {r: r for r in OPENAI_ROLES}
    else:
        raise ConfigError(f"{where}: missing key 'conversations' (ShareGPT) or 'messages' (OpenAI); "
                          f"keys found: {sorted(obj)[:10]}.")
    turns = obj[field]
    if not isinstance(turns, list):
        raise ConfigError(f"{where}, field '{field}': expected a list of turns, got {type(turns).__name__}.")
    out: list[dict[str, Any]] = []
    for j, t in enumerate(turns, 1):
        if not isinstance(t, dict):
            raise ConfigError(f"{where}, {field} turn {j}: expected an object with '{role_key}' and '{text_key}'.")
        for k in (role_key, text_key):
            if k not in t:
                raise ConfigError(f"{where}, {field} turn {j}: missing key '{k}'.")
        role = t[role_key]
        if not isinstance(role, str) or role.lower() not in roles:
            raise ConfigError(f"{where}, {field} turn {j}: unknown role {role!r} in '{role_key}'; known: "
                              f"{', '.join(sorted(set(roles)))}.")
        text = t[text_key]
        if not isinstance(text, (str, list)):
            raise ConfigError(f"{where}, {field} turn {j}, '{text_key}': expected text, got {type(text).__name__}.")
        out.append({"role": roles[role.lower()], "content": text})
    return out


def count_words(x: Any) -> int:
    """Whitespace-separated words of a message content (a string or OpenAI content parts): a token estimate."""
    if isinstance(x, str):
        return len(x.split())
    if isinstance(x, list):
        return sum(count_words(p.get("text", "")) if isinstance(p, dict) else count_words(p) for p in x)
    return 0


def conversation_requests(msgs: list[dict[str, Any]], opts: Any, cfg: LoadTestConfig) -> list[RequestBody]:
    """The requests of one conversation (empty: it has no user turn). `opts`: a _TurnOptions (multi_turn,
    max_turns, max_tokens_from_data, output_cap). Each request's messages are fresh copies."""
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    if not opts.multi_turn:
        users = users[:1]
    elif opts.max_turns is not None:
        users = users[:opts.max_turns]
    out: list[RequestBody] = []
    for i in users:
        if opts.multi_turn:
            history = msgs[:i + 1]
        else:  # the first user turn after the conversation's leading system turns
            lead = 0
            while lead < i and msgs[lead]["role"] == "system":
                lead += 1
            history = msgs[:lead] + [msgs[i]]
        answer = next((m for m in msgs[i + 1:] if m["role"] != "system"), None)
        if cfg.max_tokens:
            n_out = cfg.max_tokens
        elif opts.max_tokens_from_data and answer is not None and answer["role"] == "assistant":
            n_out = max(1, min(opts.output_cap, count_words(answer["content"])))
        else:
            n_out = opts.output_cap
        out.append({"messages": [dict(m) for m in history], "max_tokens": n_out})
    return out


def read_conversation_file(path: str) -> list[tuple[str, Any]]:
    """(where, object) for each conversation of a JSONL file, or of a file holding one JSON array."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Conversation file {p} does not exist; give a JSONL file of ShareGPT "
                          "{'conversations': [...]} or OpenAI {'messages': [...]} objects.") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"Conversation file {p} cannot be read as UTF-8 text: {e}.") from None
    if text.lstrip().startswith("["):
        try:
            arr = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}, line {e.lineno}: the file starts with '[' but is not one valid JSON array "
                              f"({e.msg} at column {e.colno}).") from None
        return [(f"{p}, array item {k}", obj) for k, obj in enumerate(arr, 1)]
    return [(f"{p}, line {lineno}", obj) for lineno, obj in iter_jsonl(text, str(p))]


def _conversation_pool(items: Any, opts: Any, cfg: LoadTestConfig, what: str,
                       max_conversations: int | None = None) -> RequestPool:
    """Requests of (where, raw conversation object) items, up to cfg.max_requests requests and max_conversations
    conversations with a user turn (items after that are not read)."""
    pool = RequestPool()
    used = skipped = 0
    for where, obj in items:
        if (max_conversations is not None and used >= max_conversations) or len(pool) >= cfg.max_requests:
            break
        reqs = conversation_requests(normalize_conversation(obj, where), opts, cfg)
        if not reqs:
            skipped += 1
            continue
        used += 1
        pool.extend(reqs[:cfg.max_requests - len(pool)])
    if not pool:
        raise ConfigError(f"{what} holds no conversation with a user turn ({skipped} skipped without one).")
    pool.notes.update({"conversations": used, "skipped_without_user_turn": skipped,
                       "multi_turn": bool(opts.multi_turn)})
    return pool


def conversations_requests(src: ConversationPrompts, cfg: LoadTestConfig) -> list[RequestBody]:
    return _conversation_pool(read_conversation_file(src.path), src, cfg, f"Conversation file {src.path}",
                              src.max_conversations)


# ------------------------------------------------------------------- Hugging Face datasets (local cache only)
HF_COLUMNS = ("messages", "conversations", "prompt", "instruction", "question", "text")
_HF_OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
_HF_OFFLINE_FLAGS = (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                     ("datasets.config", "HF_DATASETS_OFFLINE"))


def _env_offline(datasets_rule: bool) -> bool:
    """Offline mode as huggingface_hub (datasets_rule: as datasets) reads it from the environment at import."""
    def true(v: str | None) -> bool:
        return (v or "").upper() in ("1", "ON", "YES", "TRUE")

    hub = true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))
    ds = os.environ.get("HF_DATASETS_OFFLINE")
    return true(ds) if datasets_rule and ds is not None else hub


def _hf_cache_hint(src: HfDatasetPrompts) -> str:
    args = repr(src.dataset) + (f", {src.config_name!r}" if src.config_name else "") + f", split={src.split!r}"
    return ("packager loadtest never downloads anything at run time: put the dataset in the local Hugging Face "
            "cache beforehand, on a machine with network access and the same HF_HOME / HF_DATASETS_CACHE, with "
            f"`python -c \"import datasets; datasets.load_dataset({args})\"`, or give a local dataset directory "
            "(data files, or one written by Dataset.save_to_disk).")


def _read_split(datasets: Any, src: HfDatasetPrompts, limit: int) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, the first `limit` rows) of the split, from a save_to_disk folder or the cache."""
    local = Path(src.dataset)
    saved_to_disk = local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists())
    try:
        if saved_to_disk:
            ds: Any = datasets.load_from_disk(str(local))
            if not hasattr(ds, "column_names") or isinstance(ds.column_names, dict):  # a DatasetDict
                if src.split not in ds:
                    raise ConfigError(f"Local dataset {local} has no split {src.split!r}; splits: "
                                      f"{', '.join(sorted(ds))}.")
                ds = ds[src.split]
        else:
            ds = datasets.load_dataset(src.dataset, src.config_name, split=src.split)
        columns = list(ds.column_names)
        rows: list[dict[str, Any]] = []
        for row in ds:
            if len(rows) >= limit:
                break
            rows.append(dict(row))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds (ConnectionError, FileNotFoundError, ...)
        cfg_part = f", config {src.config_name!r}" if src.config_name else ""
        raise ConfigError(f"Hugging Face dataset {src.dataset!r} (split {src.split!r}{cfg_part}) cannot be "
                          f"loaded from the local cache: {type(e).__name__}: {str(e)[:300]}. "
                          + _hf_cache_hint(src)) from None
    return columns, rows


def _load_hf_rows(src: HfDatasetPrompts, limit: int) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, the first `limit` rows) of the dataset split, read with the Hub and datasets offline:
    the two environment variables are set for the call, and so are the offline flags that huggingface_hub and
    datasets read from them when imported; all are restored afterwards (the flags after the variables, as
    they follow them)."""
    saved_flags: list[tuple[Any, str, Any]] = []
    preloaded = {name for name, _ in _HF_OFFLINE_FLAGS if name in sys.modules}
    try:
        with environ_scope(dict.fromkeys(_HF_OFFLINE_ENV, "1")):
            try:
                import datasets  # lazily: an optional dependency, heavy to import
            except ImportError:
                raise ConfigError(f"Hugging Face dataset {src.dataset!r} needs the `datasets` package, which is not "
                                  "installed (pip install datasets). " + _hf_cache_hint(src)) from None
            for mod_name, attr in _HF_OFFLINE_FLAGS:
                mod = sys.modules.get(mod_name)
                if mod is not None and hasattr(mod, attr):
                    saved_flags.append((mod, attr, getattr(mod, attr) if mod_name in preloaded else None))
                    setattr(mod, attr, True)
            columns, rows = _read_split(datasets, src, limit)
    finally:
        for mod, attr, value in reversed(saved_flags):  # imported in the window: as the restored variables say
            setattr(mod, attr, value if value is not None else _env_offline(mod.__name__ == "datasets.config"))
    return columns, rows


def _as_conversation(value: Any) -> Any:
    """A dataset cell holding a list of turns as a conversation object: OpenAI turns (with 'role') as
    {"messages": ...}, anything else as ShareGPT {"conversations": ...} (an empty cell: no turn, so skipped);
    normalize_conversation checks it."""
    if not isinstance(value, list):
        return {"conversations": [] if value is None else value}
    first = value[0] if value else None
    return {"messages" if isinstance(first, dict) and "role" in first else "conversations": value}


def hf_requests(src: HfDatasetPrompts, cfg: LoadTestConfig) -> list[RequestBody]:
    limit = src.max_rows if src.max_rows is not None else cfg.max_requests
    columns, rows = _load_hf_rows(src, limit)
    what = f"Hugging Face dataset {src.dataset} (split {src.split})"
    if src.column is not None:
        if src.column not in columns:
            raise ConfigError(f"{what} has no column {src.column!r}; columns: {', '.join(columns)}.")
        col = src.column
    else:
        found = [c for c in HF_COLUMNS if c in columns]
        if not found:
            raise ConfigError(f"{what}: none of the columns {', '.join(HF_COLUMNS)} found (columns: "
                              f"{', '.join(columns)}); name the one to use with `column`.")
        col = found[0]
    if any(isinstance(r.get(col), list) for r in rows):  # a messages / conversations column
        items = [(f"{what}, row {i}, column {col!r}", _as_conversation(r.get(col))) for i, r in enumerate(rows)]
        pool = _conversation_pool(items, src, cfg, what)
    else:
        pool = RequestPool()
        skipped = 0
        for r in rows:
            text = r.get(col)
            if not isinstance(text, str) or not text.strip():
                skipped += 1
                continue
            pool.append({"messages": [{"role": "user", "content": text}],
                         "max_tokens": cfg.max_tokens or src.output_cap})
            if len(pool) >= cfg.max_requests:
                break
        if not pool:
            raise ConfigError(f"{what}: column {col!r} holds no text in the {len(rows)} row(s) read.")
        pool.notes["skipped_rows_without_text"] = skipped
    pool.notes.update({"rows_read": len(rows), "column": col})
    return pool
