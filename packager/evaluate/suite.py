"""Task suites: JSONL a person can write by hand, one item per line.

    {"id": "arith-001", "prompt": "What is 7 + 5? Answer with the number only.", "reference": "12",
     "scorer": "exact", "tags": ["arithmetic"], "max_tokens": 8}

Fields: `id` (unique), `prompt` or `messages` (OpenAI chat messages; exactly one of the two), optional
`system`, `reference` (a string or a list of acceptable strings; regexes for the `regex` scorer),
`scorer` (exact, contains, regex, choice, f1, rouge_l, json_fields: the reference is a JSON object of
expected fields), `choices` (required by `choice`), `tags`,
`max_tokens` (default 32). Blank lines and lines starting with `#` are skipped. A bad line raises
ConfigError naming the file, the line number and the field.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from packager.errors import ConfigError
from packager.fsutil import iter_jsonl, sha256_bytes

BUILTIN_SUITES = {"default": "suite_default.jsonl", "behaviour": "suite_behaviour.jsonl"}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class SuiteItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    system: str | None = None
    reference: str | list[str]
    scorer: Literal["exact", "contains", "regex", "choice", "f1", "rouge_l", "json_fields"]
    choices: list[str] | None = None
    tags: list[str] = Field(default_factory=list)
    max_tokens: int = Field(32, ge=1, le=4096)

    @model_validator(mode="after")
    def _check(self) -> "SuiteItem":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("'prompt' is empty")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' is empty")
        if not self.references():
            raise ValueError("'reference' is empty")
        if self.scorer == "choice":
            if not self.choices or len(self.choices) < 2:
                raise ValueError("scorer 'choice' needs 'choices' with at least two options")
            if not any(r in self.choices for r in self.references()):
                raise ValueError("'reference' must be one of 'choices'")
        if self.scorer == "regex":
            import re

            for r in self.references():
                try:
                    re.compile(r)
                except re.error as e:
                    raise ValueError(f"'reference' {r!r} is not a valid regex: {e}") from None
        if self.scorer == "json_fields":
            import json

            for r in self.references():
                try:
                    obj = json.loads(r)
                except ValueError:
                    obj = None
                if not isinstance(obj, dict) or not obj:
                    raise ValueError(f"scorer 'json_fields' needs each 'reference' to be a JSON object with at least "
                                     f"one key, got {r!r}")
        return self

    def references(self) -> list[str]:
        refs = [self.reference] if isinstance(self.reference, str) else list(self.reference)
        return [r for r in refs if r.strip()]

    def chat_messages(self) -> list[dict[str, str]]:
        msgs: list[dict[str, str]] = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        if self.messages is not None:
            msgs += [m.model_dump() for m in self.messages]
        else:
            msgs.append({"role": "user", "content": self.prompt or ""})
        return msgs

    @property
    def category(self) -> str:
        return self.tags[0] if self.tags else "untagged"


class Suite(BaseModel):
    name: str
    source: str
    sha256: str
    items: list[SuiteItem]

    def tags(self) -> list[str]:
        return sorted({t for it in self.items for t in it.tags})


def _field_of(err: ErrorDetails) -> str:
    loc = ".".join(str(x) for x in err["loc"])
    return loc or "(item)"


def parse_suite_text(text: str, where: str) -> list[SuiteItem]:
    items: list[SuiteItem] = []
    seen: dict[str, int] = {}
    for lineno, data in iter_jsonl(text, where):
        if not isinstance(data, dict):
            raise ConfigError(f"{where}, line {lineno}: expected a JSON object, got {type(data).__name__}.")
        try:
            item = SuiteItem.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            msg = err["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{where}, line {lineno}, field '{_field_of(err)}': {msg}.") from None
        if item.id in seen:
            raise ConfigError(f"{where}, line {lineno}, field 'id': {item.id!r} repeats line {seen[item.id]}; "
                              "ids must be unique.")
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise ConfigError(f"{where} holds no items.")
    return items


def load_suite(ref: str | Path) -> Suite:
    """Load a built-in suite by name ('default', 'behaviour') or a JSONL file by path."""
    ref_s = str(ref)
    if ref_s in BUILTIN_SUITES:
        data = resources.files("packager.data").joinpath(BUILTIN_SUITES[ref_s]).read_bytes()
        where, name = f"built-in suite '{ref_s}'", ref_s
    else:
        p = Path(ref_s)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"Suite file {p} does not exist. Built-in suites: {', '.join(BUILTIN_SUITES)}.") from None
        except (IsADirectoryError, PermissionError) as e:
            raise ConfigError(f"Suite file {p} cannot be read: {e.strerror}.") from None
        where, name = str(p), p.stem
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not UTF-8 text (byte {e.start}).") from None
    return Suite(name=name, source=where, sha256=sha256_bytes(data), items=parse_suite_text(text, where))
