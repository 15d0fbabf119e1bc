"""Calibration data for compression stages (GPTQ, SmoothQuant, pruning importance, distillation).

`load_calibration(spec, n_samples, seq_len, render=None) -> (texts, source_label, sha256)`:
  * None or "default": the bundled mix (packager/data/calibration_mix.jsonl: conversations and texts of
    chat, instructions, arithmetic, number-heavy tables, code, extraction into JSON, classification,
    rewriting, summaries, short reasoning and prose, about a fifth in eleven languages other than
    English; written for this purpose, independent of the task suites) interleaved with the calibration
    split of the bundled corpus (packager.evaluate.corpus: Python's own documentation, prose with code),
    never its held-out part that perplexity is measured on. Chat-shaped data matters: a served model
    reads its chat template's special tokens, which are among the largest activations it sees;
  * "mix": the bundled mix alone; "corpus": the corpus calibration split alone;
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
from typing import Callable

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


def _cuts(texts: list[str], max_chars: int) -> list[str]:
    return [c for t in texts for c in _chunk(t, max_chars) if len(c) >= MIN_SAMPLE_CHARS]


def _spread(items: list[str], n: int) -> list[str]:
    """n items evenly spread over the list, in order (all of them when there are fewer)."""
    if n <= 0:
        return []
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


MIX_PATH = Path(__file__).resolve().parent.parent / "data" / "calibration_mix.jsonl"
Render = Callable[[list[dict[str, str]]], str]


def _texts_from_file(p: Path, render: Render | None = None) -> list[str]:
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"Calibration file {p} does not exist. Give a .txt or .jsonl file, 'suite:NAME', or 'default'.") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"Calibration file {p} is not UTF-8 text (byte {e.start}).") from None
    except (IsADirectoryError, PermissionError) as e:
        raise ConfigError(f"Calibration file {p} cannot be read: {e.strerror}.") from None
    if "\x00" in raw:
        raise ConfigError(f"Calibration file {p} is not text (it holds NUL bytes, at offset {raw.index(chr(0))}); "
                          "give a .txt file of passages separated by blank lines, or a .jsonl file.")
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
            msgs = obj.get("messages")
            if render is not None and isinstance(msgs, list) and msgs and all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs):
                texts.append(render(msgs))
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


def _corpus_texts() -> tuple[list[str], str]:
    try:
        from packager.evaluate.corpus import corpus_sha256, split_corpus
    except ImportError:
        raise ConfigError(
            "The bundled calibration corpus (packager.evaluate.corpus) is not available in this install; "
            "pass --calibration FILE (.txt or .jsonl) or --calibration suite:NAME."
        ) from None
    raw, _held = split_corpus()
    return raw, f"corpus:default calibration split (corpus sha256 {corpus_sha256()[:12]})"


def _mix_label(render: Render | None) -> str:
    sha = sha256_bytes(MIX_PATH.read_bytes())[:12]
    return f"mix:bundled calibration mix (sha256 {sha}{', chat template' if render else ''})"


def _interleave(a: list[str], b: list[str]) -> list[str]:
    out: list[str] = []
    for i in range(max(len(a), len(b))):
        out += [x[i] for x in (a, b) if i < len(x)]
    return out


def load_calibration(spec: str | None, n_samples: int = 128, seq_len: int = 512,
                     render: Render | None = None) -> tuple[list[str], str, str]:
    """(texts, source label, sha256 of the texts) for a calibration spec; see the module docstring."""
    if n_samples < 1:
        raise ConfigError(f"n_samples must be >= 1, got {n_samples}.")
    if seq_len < 8:
        raise ConfigError(f"seq_len must be >= 8 tokens, got {seq_len}.")
    s = (spec or "default").strip()
    max_chars = seq_len * CHARS_PER_TOKEN
    if s == "default":
        corpus, clabel = _corpus_texts()
        mix = _texts_from_file(MIX_PATH, render)
        # half the samples from each source (each spread over its source), interleaved
        mix_cuts, corpus_cuts = _cuts(mix, max_chars), _cuts(corpus, max_chars)
        n_mix = max(n_samples - len(corpus_cuts), (n_samples + 1) // 2)
        raw = _interleave(_spread(mix_cuts, n_mix), _spread(corpus_cuts, n_samples - n_mix))
        label = f"default: {_mix_label(render)} + {clabel}"
    elif s == "corpus":
        raw, label = _corpus_texts()
    elif s == "mix":
        raw, label = _texts_from_file(MIX_PATH, render), _mix_label(render)
    elif s.startswith("suite:"):
        ref = s[len("suite:"):]
        if not ref:
            raise ConfigError("Calibration spec 'suite:' names no suite; use suite:default or suite:PATH.jsonl.")
        raw, label = _texts_from_suite(ref)
    else:
        p = Path(s).expanduser()
        raw = _texts_from_file(p, render)
        label = f"file:{p}"
    chunks = _cuts(raw, max_chars)
    if not chunks:
        raise ConfigError(f"The calibration source {label} holds no text of at least {MIN_SAMPLE_CHARS} characters.")
    texts = _spread(chunks, n_samples)
    digest = sha256_bytes(json.dumps(texts, ensure_ascii=False).encode("utf-8"))
    return texts, label, digest
