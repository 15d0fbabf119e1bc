"""Calibration data: bundled corpus split, task suites, user files; deterministic with a sha256."""
from __future__ import annotations

import json

import pytest

from packager.compress.calibration import MIX_PATH, _chunk, load_calibration
from packager.errors import ConfigError


def test_default_mixes_the_bundled_mix_and_the_corpus_calibration_split():
    from packager.evaluate.corpus import split_corpus

    texts, label, sha = load_calibration(None, n_samples=64, seq_len=128)
    assert len(texts) == 64 and len(sha) == 64
    assert label.startswith("default: mix:bundled calibration mix") and "corpus:default calibration split" in label
    calib, held = split_corpus()
    mix = [json.loads(line) for line in MIX_PATH.read_text().splitlines() if line.strip()]
    mix_text = "\n".join(m.get("text") or "\n".join(t["content"] for t in m["messages"]) for m in mix)
    from_corpus = [t for t in texts if any(t.splitlines()[0][:60] in c for c in calib)]
    from_mix = [t for t in texts if t.splitlines()[0][:60] in mix_text]
    # both sources contribute a fair share, and every sample comes from one of them
    assert len(from_corpus) >= 16 and len(from_mix) >= 16
    assert len(set(from_corpus) | set(from_mix)) == 64
    assert any(any(ord(ch) > 0x3000 for ch in t) for t in texts)  # CJK text among them: several languages
    assert all(len(t) <= 128 * 4 for t in texts)
    assert load_calibration("default", 64, 128) == (texts, label, sha)  # deterministic


def test_the_corpus_alone_is_its_calibration_split_only():
    from packager.evaluate.corpus import split_corpus

    texts, label, sha = load_calibration("corpus", n_samples=16, seq_len=128)
    assert len(texts) == 16 and label.startswith("corpus:default calibration split") and len(sha) == 64
    calib, held = split_corpus()
    joined_held = "\n".join(held)
    # every sample comes from the calibration part, none from the held-out part
    for t in texts:
        assert all(len(t) <= 128 * 4 for t in texts)
        first = t.splitlines()[0][:60]
        assert any(first in c for c in calib)
    assert load_calibration("corpus", 16, 128) == (texts, label, sha)  # deterministic
    assert not all(t[:60] in joined_held for t in texts)


def test_sha_changes_with_the_data():
    a = load_calibration(None, 8, 128)[2]
    b = load_calibration(None, 9, 128)[2]
    assert a != b


def test_suite_source():
    texts, label, sha = load_calibration("suite:default", 10, 256)
    assert label.startswith("suite:default") and len(texts) == 10 and len(sha) == 64


def test_txt_and_jsonl_files(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("First passage about deployment of models.\n\nSecond passage about quantization of weights.\n")
    texts, label, _ = load_calibration(str(p), 10, 512)
    assert label == f"file:{p}"
    assert texts == ["First passage about deployment of models.", "Second passage about quantization of weights."]
    texts, _, _ = load_calibration(str(p), 10, 8)  # at most 32 characters per sample: passages are cut
    # (pieces shorter than 16 characters, like "of models.", are dropped)
    assert texts == ["First passage about deployment", "Second passage about", "quantization of weights."]
    assert load_calibration(str(p), 2, 8)[0] == [texts[0], texts[1]]  # n_samples spread, in order
    j = tmp_path / "c.jsonl"
    j.write_text(json.dumps({"text": "A text field of reasonable length."}) + "\n"
                 + json.dumps({"prompt": "What is int8 quantization?", "completion": "Storing weights in 8 bits."}) + "\n")
    texts, label, _ = load_calibration(str(j), 10, 64)
    assert label == f"file:{j}" and texts[0] == "A text field of reasonable length."
    assert texts[1] == "What is int8 quantization?\nStoring weights in 8 bits."


def test_conversations_take_the_chat_template_when_one_is_given(tmp_path):
    j = tmp_path / "c.jsonl"
    j.write_text(json.dumps({"messages": [{"role": "user", "content": "How many legs has a spider?"},
                                          {"role": "assistant", "content": "Eight legs, in four pairs."}]}) + "\n")

    def render(msgs):
        return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in msgs)

    texts, _, sha = load_calibration(str(j), 4, 64, render=render)
    assert texts == ["<|user|>How many legs has a spider?<|end|><|assistant|>Eight legs, in four pairs.<|end|>"]
    plain, _, sha_plain = load_calibration(str(j), 4, 64)
    assert plain == ["How many legs has a spider?\nEight legs, in four pairs."] and sha != sha_plain
    label = load_calibration("mix", 4, 64, render=render)[1]
    assert label.startswith("mix:") and label.endswith(", chat template)")


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_calibration(str(tmp_path / "missing.txt"), 4, 64)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine text here, long enough"}\n{oops\n')
    with pytest.raises(ConfigError, match="line 2"):
        load_calibration(str(bad), 4, 64)
    odd = tmp_path / "data.csv"
    odd.write_text("a,b\n")
    with pytest.raises(ConfigError, match="suffix '.csv'"):
        load_calibration(str(odd), 4, 64)
    with pytest.raises(ConfigError, match="n_samples"):
        load_calibration(None, 0, 64)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(ConfigError, match="holds no text of at least 16 characters"):
        load_calibration(str(empty), 4, 64)
    binary = tmp_path / "weights.txt"
    binary.write_bytes(b"GGUF\x00\x00\x03" + b"a" * 40)
    with pytest.raises(ConfigError, match="not text .*NUL bytes"):
        load_calibration(str(binary), 4, 64)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait, long enough to count".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_calibration(str(latin), 4, 64)


def test_chunking_respects_the_limit():
    text = ("word " * 500).strip() + "\n\n" + "short paragraph"
    chunks = _chunk(text, 100)
    assert all(len(c) <= 100 for c in chunks)
    assert chunks[-1].endswith("short paragraph")
    assert "".join(chunks).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")
