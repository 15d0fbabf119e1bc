"""How prompts reach a model: its chat template (`/v1/chat/completions`) or raw text (`/v1/completions`).

A model with a chat template (instruct and chat models) gets OpenAI chat messages; a base model without one
gets the raw prompt through /v1/completions, since vLLM refuses chat requests for a tokenizer without a
template. Evaluation, fidelity and load tests all go through here, so one run uses one format throughout and
says which (EvalSummary.prompt_format, the load test's plan and result).

    fmt = resolve_format("auto", model_dir=Path("models/base-270m"))            # "completion"
    path, body = request_body(fmt, messages)                                    # "/v1/completions", {"prompt": ...}
    text = answer_text(fmt, resp["choices"][0])

"auto" decides from the model directory when there is one (a template in tokenizer_config.json or
chat_template.jinja, or a user-supplied one: engine.chat_template), and otherwise by asking the endpoint once
(`probe_format`): a chat request that is refused for want of a template means completion.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Protocol

from packager.errors import ConfigError, ServerError

PromptFormat = Literal["chat", "completion"]


class Poster(Protocol):
    """What the probe needs of a client (packager.evaluate.client.OpenAIClient has it): POST a JSON body."""

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]: ...

FORMAT_SETTINGS = ("auto", "chat", "completion")
PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
# Words of the errors an engine answers a chat request with when the model has no chat template (vLLM: "default
# chat template is no longer allowed, so you must provide a chat template ...").
_NO_TEMPLATE_MARKERS = ("chat template", "chat_template")


def model_has_chat_template(model_dir: str | Path) -> bool:
    """True when a Hugging Face model directory carries a chat template (tokenizer_config.json's
    chat_template, chat_template.jinja or chat_template.json). A GGUF file carries its own: True."""
    d = Path(model_dir)
    if d.is_file() or any(d.glob("*.gguf")):
        return True
    if (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file():
        return True
    p = d / "tokenizer_config.json"
    if not p.is_file():
        return False
    try:
        tmpl = json.loads(p.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return False
    return bool(tmpl)


def read_chat_template(spec: str) -> str:
    """The text of a user-supplied chat template: a file path, or the Jinja text itself."""
    p = Path(spec).expanduser()
    looks_like_text = "{" in spec or "\n" in spec
    if not looks_like_text:
        if not p.is_file():
            raise ConfigError(f"Chat template {spec!r} is not a file; give a Jinja template file (e.g. "
                              "chat_template.jinja) or the template text.")
        try:
            return p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"Chat template {p} cannot be read ({type(e).__name__}: {e}).") from None
    return spec


def resolve_format(setting: str, *, model_dir: str | Path | None = None, chat_template: str | None = None,
                   client: Poster | None = None, model: str | None = None) -> PromptFormat:
    """The format a run uses: the setting when it is chat or completion; for auto, chat when a template is
    known (given, or in the model directory), completion when the directory has none, else the endpoint's
    answer to one probe."""
    if setting not in FORMAT_SETTINGS:
        raise ConfigError(f"prompt format {setting!r} is not one of {', '.join(FORMAT_SETTINGS)}.")
    if setting != "auto":
        return setting  # type: ignore[return-value]
    if chat_template:
        return "chat"
    if model_dir is not None:
        return "chat" if model_has_chat_template(model_dir) else "completion"
    if client is not None and model is not None:
        return probe_format(client, model)
    return "chat"


def probe_format(client: Poster, model: str) -> PromptFormat:
    """Ask the endpoint once (a one-token chat request): completion when it refuses chat for want of a chat
    template, else chat (also when the probe fails for another reason: the run's own requests then say why)."""
    try:
        client.post(PATHS["chat"], {"model": model, "messages": [{"role": "user", "content": "Hi"}],
                                    "max_tokens": 1, "temperature": 0.0})
    except ServerError as e:
        text = str(e).lower()
        if any(m in text for m in _NO_TEMPLATE_MARKERS):
            return "completion"
    return "chat"


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """Chat messages as the raw text a base model continues. One user turn (with or without a system turn
    before it) is its text as written; a longer conversation becomes 'User: ... / Assistant: ...' lines that
    end with 'Assistant:' for the model to continue."""
    system = [m["content"] for m in messages if m.get("role") == "system"]
    turns = [m for m in messages if m.get("role") != "system"]
    head = "\n\n".join(s for s in system if s)
    if len(turns) == 1 and turns[0].get("role") == "user":
        body = turns[0].get("content") or ""
        return f"{head}\n\n{body}" if head else body
    names = {"user": "User", "assistant": "Assistant"}
    lines = [f"{names.get(m.get('role', ''), str(m.get('role', '')).title())}: {m.get('content') or ''}"
             for m in turns]
    if not turns or turns[-1].get("role") != "assistant":
        lines.append("Assistant:")
    text = "\n".join(lines)
    return f"{head}\n\n{text}" if head else text


def request_body(fmt: str, messages: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
    """(path, the prompt part of the body) of a request in this format."""
    if fmt == "completion":
        return PATHS["completion"], {"prompt": plain_prompt(messages)}
    return PATHS["chat"], {"messages": messages}


def answer_text(fmt: str, choice: dict[str, Any]) -> str:
    """The generated text of one choice of a non-streamed answer."""
    if fmt == "completion":
        return choice.get("text") or ""
    return (choice.get("message") or {}).get("content") or ""


def describe(fmt: str) -> str:
    """A phrase for reports: how prompts were sent."""
    if fmt == "completion":
        return "raw prompts through /v1/completions (the model has no chat template)"
    return "chat messages through /v1/chat/completions (the model's chat template)"
