"""The Ollama Modelfile of a GGUF artifact: chat template in Go-template form, stop tokens, defaults.

The Hugging Face chat template (Jinja, from tokenizer_config.json or chat_template.jinja) is not copied
as text: it is *rendered* on sample conversations and compared with the ChatML layout
(`<|im_start|>role\\ncontent<|im_end|>\\n`). When it is ChatML (SmolLM2, Qwen, ...) the Modelfile gets
the equivalent Go template and, if the Jinja template inserts a system prompt when the conversation has
none (SmolLM2 does), that prompt as `SYSTEM`. Any other template gets no TEMPLATE line: Ollama then
derives one from the `tokenizer.chat_template` that llama.cpp's converter writes into the GGUF, and the
Modelfile says so in a comment.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.errors import ConfigError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# ChatML in Ollama's Go-template form. System messages of the request (or SYSTEM) arrive as .System;
# the last assistant message is left open so a client can continue it, as Ollama's own templates do.
CHATML_GO_TEMPLATE = (
    '{{- if .System }}<|im_start|>system\n'
    '{{ .System }}<|im_end|>\n'
    '{{ end }}'
    '{{- range $i, $_ := .Messages }}'
    '{{- $last := eq (len (slice $.Messages $i)) 1 }}'
    '{{- if eq .Role "user" }}<|im_start|>user\n'
    '{{ .Content }}<|im_end|>\n'
    '{{ if $last }}<|im_start|>assistant\n'
    '{{ end }}'
    '{{- else if eq .Role "assistant" }}<|im_start|>assistant\n'
    '{{ .Content }}{{ if not $last }}<|im_end|>\n'
    '{{ end }}'
    '{{- end }}'
    '{{- end }}'
)


@dataclass(frozen=True)
class ChatTemplateInfo:
    """What the model's chat template is, as far as Ollama needs to know."""

    style: str  # "chatml", "other" or "none" (the model has no chat template)
    default_system: str | None = None  # system prompt the template inserts when there is none
    stop: tuple[str, ...] = ()
    eos_token: str | None = None
    source: str | None = None  # the file the template came from
    notes: list[str] = field(default_factory=list)

    def as_record(self) -> dict[str, Any]:
        return {"style": self.style, "default_system": self.default_system, "stop": list(self.stop),
                "eos_token": self.eos_token, "source": self.source, "notes": list(self.notes)}


def _token_text(v: Any) -> str | None:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) and v else None


def read_chat_template(model_dir: Path) -> tuple[str | None, str | None, dict[str, Any]]:
    """(template text, file it came from, tokenizer_config) of a Hugging Face model directory."""
    model_dir = Path(model_dir)
    tok_cfg: dict[str, Any] = {}
    p = model_dir / "tokenizer_config.json"
    if p.is_file():
        try:
            tok_cfg = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p} is not valid JSON ({e.msg}, line {e.lineno}); fix or regenerate it.") from None
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(), jinja.name, tok_cfg
    tmpl = tok_cfg.get("chat_template")
    if isinstance(tmpl, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
        tmpl = named.get("default") or next(iter(named.values()), None)
    if isinstance(tmpl, str) and tmpl.strip():
        return tmpl, p.name, tok_cfg
    return None, None, tok_cfg


def _render(template: str, messages: list[dict[str, str]], bos: str, eos: str) -> str:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg: str) -> None:
        raise TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token=bos,
                                            eos_token=eos)


def _chatml(messages: list[dict[str, str]]) -> str:
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages) + f"{IM_START}assistant\n"


def detect_chat_template(model_dir: Path, template_text: str | None = None) -> ChatTemplateInfo:
    """Classify the model's chat template, or `template_text` given by the user in its place (`--chat-template`),
    by rendering it (see the module docstring)."""
    template, source, tok_cfg = read_chat_template(model_dir)
    if template_text:
        template, source = template_text, "user-supplied chat template"
    eos = _token_text(tok_cfg.get("eos_token"))
    bos = _token_text(tok_cfg.get("bos_token")) or ""
    if template is None:
        return ChatTemplateInfo("none", stop=(eos,) if eos else (), eos_token=eos,
                                notes=["the model has no chat template; Ollama will send raw prompts"])
    user_only = [{"role": "user", "content": "U1"}]
    full = [{"role": "system", "content": "S0"}, {"role": "user", "content": "U1"},
            {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
    try:
        out_user, out_full = _render(template, user_only, bos, eos or ""), _render(template, full, bos, eos or "")
    except Exception as e:  # a template that needs features the sandbox lacks: leave it to Ollama
        return ChatTemplateInfo("other", stop=(eos,) if eos else (), eos_token=eos, source=source,
                                notes=[f"the chat template could not be rendered ({type(e).__name__}: {e})"])
    # A template may start with the BOS token text (llama.cpp adds BOS itself from the GGUF metadata).
    if bos and "bos_token" in template:
        out_user, out_full = out_user.removeprefix(bos), out_full.removeprefix(bos)
    if out_full == _chatml(full):
        default_system = None
        if out_user != _chatml(user_only):
            prefix = out_user.removesuffix(_chatml(user_only))
            head = f"{IM_START}system\n"
            if prefix != out_user and prefix.startswith(head) and prefix.endswith(f"{IM_END}\n"):
                default_system = prefix[len(head):-len(IM_END) - 1]
            else:
                return ChatTemplateInfo("other", stop=(eos,) if eos else (), eos_token=eos, source=source,
                                        notes=["ChatML-like, but a conversation without a system message renders "
                                               "differently; left to Ollama's own detection"])
        stop = tuple(dict.fromkeys([IM_START, IM_END] + ([eos] if eos else [])))
        return ChatTemplateInfo("chatml", default_system=default_system, stop=stop, eos_token=eos, source=source)
    return ChatTemplateInfo("other", stop=(eos,) if eos else (), eos_token=eos, source=source,
                            notes=["not a ChatML template; Ollama derives its template from the GGUF's "
                                   "tokenizer.chat_template"])


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise ConfigError(f"The {what} contains '\"\"\"', which an Ollama Modelfile cannot quote: {text[:80]!r}.")
    return f'"""{text}"""'


def render_modelfile(info: ChatTemplateInfo, *, gguf_name: str = "model.gguf", title: str = "",
                     parameters: dict[str, Any] | None = None) -> str:
    """The Modelfile text: `ollama create NAME -f Modelfile` in the artifact directory."""
    lines = []
    if title:
        lines.append(f"# {title}")
    lines += ["# Create the Ollama model with: ollama create <name> -f Modelfile  (in this directory)",
              f"FROM ./{gguf_name}"]
    if info.style == "chatml":
        lines.append(f"TEMPLATE {_quoted(CHATML_GO_TEMPLATE, 'chat template')}")
        if info.default_system:
            lines.append(f"SYSTEM {_quoted(info.default_system, 'default system prompt')}")
    else:
        for n in info.notes:
            lines.append(f"# {n}")
    for s in info.stop:
        lines.append(f"PARAMETER stop {json.dumps(s)}")
    for k, v in (parameters or {}).items():
        lines.append(f"PARAMETER {k} {v}")
    return "\n".join(lines) + "\n"


def generation_parameters(model_dir: Path) -> dict[str, Any]:
    """Sampling defaults from generation_config.json that Ollama understands (temperature, top_p, top_k)."""
    p = Path(model_dir) / "generation_config.json"
    if not p.is_file():
        return {}
    try:
        gc = json.loads(p.read_text())
    except json.JSONDecodeError:
        return {}
    out: dict[str, Any] = {}
    if gc.get("do_sample") is False:
        return out
    for key in ("temperature", "top_p", "top_k"):
        v = gc.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out
