import json

import pytest

from packager.errors import ConfigError
from packager.evaluate.suite import load_suite, parse_suite_text


def line(**kw):
    base = {"id": "a", "prompt": "What is 1+1?", "reference": "2", "scorer": "exact"}
    base.update(kw)
    return json.dumps(base)


def test_parses_items_skipping_blank_and_comment_lines():
    text = "\n".join(["# comment", line(id="a"), "", line(id="b", tags=["arithmetic"], max_tokens=4)])
    items = parse_suite_text(text, "s.jsonl")
    assert [i.id for i in items] == ["a", "b"]
    assert items[1].tags == ["arithmetic"] and items[1].max_tokens == 4
    assert items[0].chat_messages() == [{"role": "user", "content": "What is 1+1?"}]


def test_messages_and_system():
    it = parse_suite_text(line(prompt=None, messages=[{"role": "user", "content": "hi"}], system="be brief"), "s")[0]
    assert it.chat_messages() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize("bad,needle", [
    ("{not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object"),
    (line(scorer="bleu"), "line 2, field 'scorer'"),
    (line(prompt=None), "line 2, field '(item)': give exactly one of 'prompt' or 'messages'"),
    (line(unknown=1), "line 2, field 'unknown'"),
    (line(scorer="choice", choices=["x", "y"], reference="z"), "'reference' must be one of 'choices'"),
    (line(scorer="regex", reference="(unclosed"), "not a valid regex"),
    (line(max_tokens=0), "field 'max_tokens'"),
    (line(id="first"), "'first' repeats line 1"),
])
def test_bad_lines_name_file_line_and_field(bad, needle):
    text = line(id="first") + "\n" + bad
    with pytest.raises(ConfigError) as e:
        parse_suite_text(text, "my.jsonl")
    assert "my.jsonl" in str(e.value)
    assert needle in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_suite(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n# only a comment\n")
    with pytest.raises(ConfigError, match="holds no items"):
        load_suite(tmp_path / "empty.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_suite(tmp_path / "bin.jsonl")


def test_suite_hash_changes_with_content(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(line(id="a") + "\n")
    h1 = load_suite(p).sha256
    p.write_text(line(id="b") + "\n")
    assert load_suite(p).sha256 != h1
