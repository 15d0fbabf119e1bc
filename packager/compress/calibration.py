"""Calibration data for compression stages (GPTQ, SmoothQuant, pruning importance, distillation).

`load_calibration(spec, n_samples, seq_len) -> (texts, source_label, sha256)`:
  * None or "default": the calibration split of the bundled corpus (packager.evaluate.corpus), never
    the held-out part that perplexity is measured on;
  * "suite:NAME_OR_PATH": the prompts and references of a task suite (built-in name or JSONL path);
  * a path to a .txt file (blank-line separated passages) or a .jsonl file (one object per line with a
    "text" field, or "prompt"/"messages" plus optional "reference"/"completion"/"response").

Texts are cut into samples of about `seq_len` tokens (estimated at 4 characters per token, at paragraph
or line boundaries) and `n_samples` of them are taken evenly spread over the source, deterministically.
The sha256 covers exactly the texts returned, so a stage record identifies the data it used.
"""
from __future__ import annotations

import json
from pathlib import Path

from packager.errors import ConfigError
from packager.fsutil import sha256_bytes

CHARS_PER_TOKEN = 4
MIN_SAMPLE_CHARS = 16


def _split_long(par: str, max_chars: int) -> list[str]:
    """Hard-split one over-long paragraph at line, then word boundaries."""
    out, cur = [], ""
    for line in par.split("\n"):
        words = line.split(" ")
        for i, w in enumerate(words):
            piece = w if i == 0 else " " + w
            if cur and len(cur) + len(piece) > max_chars:
                out.append(cur.strip())
                cur = w
            else:
                cur += piece
        cur += "\n"
    if cur.strip():
        out.append(cur.strip())
    return out


def _chunk(text: str, max_chars: int) -> list[str]:
    """Split text into pieces of at most ~max_chars, packing whole paragraphs where they fit."""
    pieces: list[str] = []
    for par in text.strip().split("\n\n"):
        par = par.strip()
        if par:
            pieces += [par] if len(par) <= max_chars else _split_long(par, max_chars)
    out: list[str] = []
    cur = ""
    for piece in pieces:
        if cur and len(cur) + 2 + len(piece) > max_chars:
            out.append(cur)
            cur = piece
        else:
            cur = f"{cur}\n\n{piece}" if cur else piece
    if cur:
        out.append(cur)
    return out


def _spread(items: list[str], n: int) -> list[str]:
    """n items evenly spread over the list, in order (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _texts_from_suite(ref: str) -> tuple[list[str], str]:
    from packager.evaluate.suite import load_suite

    suite = load_suite(ref)
    texts = []
    for it in suite.items:
        msgs = "\n".join(m["content"] for m in it.chat_messages())
        refs = it.references()
        texts.append(msgs + ("\n" + refs[0] if refs and it.scorer != "regex" else ""))
    return texts, f"suite:{suite.name} ({suite.source}, sha256 {suite.sha256[:12]})"


def _texts_from_file(p: Path) -> list[str]:
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"Calibration file {p} does not exist. Give a .txt or .jsonl file, 'suite:NAME', or 'default'.") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"Calibration file {p} is not UTF-8 text (byte {e.start}).") from None
    except (IsADirectoryError, PermissionError) as e:
        raise ConfigError(f"Calibration file {p} cannot be read: {e.strerror}.") from None
    if p.suffix == ".jsonl":
        texts = []
        for lineno, line in enumerate(raw.splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{p}, line {lineno}: not valid JSON ({e.msg}).") from None
            if isinstance(obj, str):
                texts.append(obj)
                continue
            if not isinstance(obj, dict):
                raise ConfigError(f"{p}, line {lineno}: expected an object or a string, got {type(obj).__name__}.")
            if isinstance(obj.get("text"), str):
                texts.append(obj["text"])
                continue
            parts = []
            if isinstance(obj.get("prompt"), str):
                parts.append(obj["prompt"])
            if isinstance(obj.get("messages"), list):
                parts += [str(m.get("content", "")) for m in obj["messages"] if isinstance(m, dict)]
            for k in ("completion", "response", "reference"):
                if isinstance(obj.get(k), str):
                    parts.append(obj[k])
                    break
            if not parts:
                raise ConfigError(f"{p}, line {lineno}: no 'text', 'prompt' or 'messages' field.")
            texts.append("\n".join(parts))
        return texts
    if p.suffix in (".txt", ".md", ""):
        return [t for t in raw.split("\n\n") if t.strip()]
    raise ConfigError(f"Calibration file {p} has suffix {p.suffix!r}; "
                      "use .txt (passages separated by blank lines) or .jsonl.")


def load_calibration(spec: str | None, n_samples: int = 128, seq_len: int = 512) -> tuple[list[str], str, str]:
    """(texts, source label, sha256 of the texts) for a calibration spec; see the module docstring."""
    if n_samples < 1:
        raise ConfigError(f"n_samples must be >= 1, got {n_samples}.")
    if seq_len < 8:
        raise ConfigError(f"seq_len must be >= 8 tokens, got {seq_len}.")
    s = (spec or "default").strip()
    if s == "default":
        try:
            from packager.evaluate.corpus import corpus_sha256, split_corpus
        except ImportError:
            raise ConfigError(
                "The bundled calibration corpus (packager.evaluate.corpus) is not available in this install; "
                "pass --calibration FILE (.txt or .jsonl) or --calibration suite:NAME."
            ) from None
        raw, _held = split_corpus()
        label = f"corpus:default calibration split (corpus sha256 {corpus_sha256()[:12]})"
    elif s.startswith("suite:"):
        ref = s[len("suite:"):]
        if not ref:
            raise ConfigError("Calibration spec 'suite:' names no suite; use suite:default or suite:PATH.jsonl.")
        raw, label = _texts_from_suite(ref)
    else:
        p = Path(s).expanduser()
        raw = _texts_from_file(p)
        label = f"file:{p}"
    max_chars = seq_len * CHARS_PER_TOKEN
    chunks = [c for t in raw for c in _chunk(t, max_chars) if len(c) >= MIN_SAMPLE_CHARS]
    if not chunks:
        raise ConfigError(f"The calibration source {label} holds no text of at least {MIN_SAMPLE_CHARS} characters.")
    texts = _spread(chunks, n_samples)
    digest = sha256_bytes(json.dumps(texts, ensure_ascii=False).encode("utf-8"))
    return texts, label, digest
