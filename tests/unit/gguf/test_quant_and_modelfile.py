"""Quant types by name; the Ollama Modelfile from the model's chat template (rendered, not copied)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from packager.errors import ConfigError
from packager.gguf.modelfile import (CHATML_GO_TEMPLATE, detect_chat_template, generation_parameters,
                                     render_modelfile, ChatTemplateInfo)
from packager.gguf.quant import QUANT_TYPES, parse_quants

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PLAIN_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_LIKE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _model_dir(tmp_path: Path, template: str | None, *, as_jinja_file: bool = True, bos: str = "<|im_start|>",
               eos: str = "<|im_end|>") -> Path:
    d = tmp_path / "m"
    d.mkdir()
    tok = {"bos_token": bos, "eos_token": {"content": eos}}
    if template is not None and as_jinja_file:
        (d / "chat_template.jinja").write_text(template)
    elif template is not None:
        tok["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(tok))
    return d


# ----- quant types --------------------------------------------------------------------------------------------
def test_quant_names_are_case_and_dash_insensitive_kept_in_order_and_deduplicated():
    qs = parse_quants(["Q8_0", "q4-k-m", "q8_0"])
    assert [q.name for q in qs] == ["q8_0", "q4_k_m"]
    assert qs[0].ftype_constant == "LLAMA_FTYPE_MOSTLY_Q8_0" and not qs[0].is_float
    assert parse_quants(["bf16"])[0].is_float


def test_unknown_quant_type_names_the_value_and_the_known_ones():
    with pytest.raises(ConfigError, match=r"Unknown GGUF quantization type 'q4_k_xl'\. Known: .*q4_k_m.*q8_0"):
        parse_quants(["q8_0", "q4_k_xl"])
    with pytest.raises(ConfigError, match="IQ4_XS are not supported"):
        parse_quants(["iq4_xs"])
    with pytest.raises(ConfigError, match="No GGUF quantization type given"):
        parse_quants([])


def test_ftype_constants_are_those_of_the_installed_llama_cpp():
    llama_cpp = pytest.importorskip("llama_cpp")
    assert QUANT_TYPES.get("q8_0").ftype() == llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0 == 7
    assert QUANT_TYPES.get("q4_k_m").ftype() == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M == 15
    for name in QUANT_TYPES.names():  # every registered type exists in this llama_cpp
        assert isinstance(QUANT_TYPES.get(name).ftype(), int)


# ----- chat template -> Modelfile ------------------------------------------------------------------------------
def test_smollm2_template_is_chatml_with_its_default_system_prompt(tmp_path):
    info = detect_chat_template(_model_dir(tmp_path, SMOLLM2_TEMPLATE))
    assert info.style == "chatml" and info.source == "chat_template.jinja"
    assert info.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert info.stop == ("<|im_start|>", "<|im_end|>")
    text = render_modelfile(info, title="smol-q8_0")
    lines = text.splitlines()
    assert lines[0] == "# smol-q8_0" and "FROM ./model.gguf" in lines
    assert f'TEMPLATE """{CHATML_GO_TEMPLATE}"""' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in lines
    assert lines[-2:] == ['PARAMETER stop "<|im_start|>"', 'PARAMETER stop "<|im_end|>"']


def test_chatml_go_template_has_every_role_marker_and_balanced_actions():
    t = CHATML_GO_TEMPLATE
    for piece in ("<|im_start|>system\n{{ .System }}<|im_end|>\n", "<|im_start|>user\n{{ .Content }}<|im_end|>\n",
                  "<|im_start|>assistant\n{{ .Content }}", "{{ if $last }}<|im_start|>assistant\n"):
        assert piece in t
    opens = t.count("{{- if") + t.count("{{ if") + t.count("{{- range")
    assert opens == t.count("{{ end }}") + t.count("{{- end }}")


def test_template_in_tokenizer_config_without_default_system(tmp_path):
    info = detect_chat_template(_model_dir(tmp_path, PLAIN_CHATML, as_jinja_file=False))
    assert (info.style, info.default_system, info.source) == ("chatml", None, "tokenizer_config.json")
    assert "SYSTEM" not in render_modelfile(info)


def test_non_chatml_template_is_left_to_ollama_with_the_eos_as_stop(tmp_path):
    info = detect_chat_template(_model_dir(tmp_path, LLAMA3_LIKE, bos="<|begin_of_text|>", eos="<|eot_id|>"))
    assert info.style == "other" and info.stop == ("<|eot_id|>",)
    text = render_modelfile(info)
    assert "TEMPLATE" not in text and "# not a ChatML template" in text
    assert 'PARAMETER stop "<|eot_id|>"' in text


def test_model_without_chat_template(tmp_path):
    info = detect_chat_template(_model_dir(tmp_path, None))
    assert info.style == "none" and info.stop == ("<|im_end|>",)


def test_a_user_template_stands_in_for_a_base_model_without_one(tmp_path):
    info = detect_chat_template(_model_dir(tmp_path, None), PLAIN_CHATML)
    assert (info.style, info.source) == ("chatml", "user-supplied chat template")
    assert "TEMPLATE" in render_modelfile(info)


def test_triple_quotes_cannot_go_into_a_modelfile():
    info = ChatTemplateInfo("chatml", default_system='say """hi"""', stop=("<|im_end|>",))
    with pytest.raises(ConfigError, match="cannot quote"):
        render_modelfile(info)


def test_generation_defaults_become_parameters(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.2, "top_p": 0.9, "do_sample": True}))
    assert generation_parameters(tmp_path) == {"temperature": 0.2, "top_p": 0.9}
    assert "PARAMETER temperature 0.2" in render_modelfile(ChatTemplateInfo("none"), parameters={"temperature": 0.2})
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.2, "do_sample": False}))
    assert generation_parameters(tmp_path) == {}
