"""packager.core.prompt_format: chat or raw completion prompts, chosen per model or endpoint."""
from __future__ import annotations

import json

import pytest

from packager.core.prompt_format import (
    answer_text,
    model_has_chat_template,
    plain_prompt,
    probe_format,
    read_chat_template,
    request_body,
    resolve_format,
)
from packager.errors import ConfigError, ServerError


def test_model_has_chat_template(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    assert not model_has_chat_template(d)
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    assert not model_has_chat_template(d)
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert model_has_chat_template(d)
    (d / "tokenizer_config.json").write_text("{not json")
    assert not model_has_chat_template(d)
    (d / "chat_template.jinja").write_text("{{ messages }}")
    assert model_has_chat_template(d)
    g = tmp_path / "g"
    g.mkdir()
    (g / "model.gguf").write_bytes(b"GGUF")
    assert model_has_chat_template(g)


def test_plain_prompt_shapes():
    assert plain_prompt([{"role": "user", "content": "The capital of France is"}]) == "The capital of France is"
    assert plain_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]) == \
        "Be brief.\n\nHi"
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "How are you?"}]
    assert plain_prompt(conv) == "User: Hi\nAssistant: Hello.\nUser: How are you?\nAssistant:"


def test_request_body_and_answer_text():
    msgs = [{"role": "user", "content": "Say x"}]
    assert request_body("chat", msgs) == ("/v1/chat/completions", {"messages": msgs})
    assert request_body("completion", msgs) == ("/v1/completions", {"prompt": "Say x"})
    assert answer_text("chat", {"message": {"content": "x"}}) == "x"
    assert answer_text("chat", {"message": {"content": None}}) == ""
    assert answer_text("completion", {"text": " x"}) == " x"


def test_read_chat_template(tmp_path):
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert read_chat_template(str(f)).startswith("{% for")
    assert read_chat_template("{{ messages[0].content }}") == "{{ messages[0].content }}"
    with pytest.raises(ConfigError, match="is not a file"):
        read_chat_template(str(tmp_path / "missing.jinja"))


class _Client:
    def __init__(self, error: str | None):
        self.error = error
        self.calls = 0

    def post(self, path, body):
        self.calls += 1
        assert path == "/v1/chat/completions" and body["max_tokens"] == 1
        if self.error:
            raise ServerError(self.error)
        return {"choices": [{"message": {"content": "x"}}]}


def test_resolve_and_probe(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "tokenizer_config.json").write_text("{}")
    assert resolve_format("chat", model_dir=base) == "chat"
    assert resolve_format("auto", model_dir=base) == "completion"
    assert resolve_format("auto", model_dir=base, chat_template="t.jinja") == "chat"
    refused = _Client("POST /v1/chat/completions answered HTTP 400: As of transformers v4.44, default chat template "
                      "is no longer allowed, so you must provide a chat template if the tokenizer does not define one.")
    assert resolve_format("auto", client=refused, model="m") == "completion" and refused.calls == 1
    ok = _Client(None)
    assert probe_format(ok, "m") == "chat"  # type: ignore[arg-type]
    # another failure is not a verdict on the format: chat, and the run's own requests say what is wrong
    assert probe_format(_Client("POST /v1/chat/completions answered HTTP 500: boom"), "m") == "chat"  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not one of"):
        resolve_format("chatty")
