"""Traffic from data: recorded conversations (ShareGPT / OpenAI, single- and multi-turn), Hugging Face datasets from
the local cache only (a fake `datasets` module here: nothing is ever downloaded), the plan's prompt_stats, the
--prompts specs, and one real locust run against the fake server with multi-turn conversations."""
from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from packager.cli.loadtest import build_loadtest_dict, parse_prompts
from packager.core.formatting import DASH
from packager.errors import ConfigError
from packager.loadtest.config import LoadTestConfig, parse_loadtest_config
from packager.loadtest.plan import build_plan, prompt_stats
from packager.loadtest.runner import read_records

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = "loadtests/examples/conversations.jsonl"


def _plan(prompts: dict, **lt) -> dict:
    return build_plan(LoadTestConfig.model_validate({"prompts": prompts, **lt}), "http://127.0.0.1:9", "m")


def _write_jsonl(path: Path, objs: list) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def _sg(*turns: tuple[str, str]) -> dict:
    return {"conversations": [{"from": f, "value": v} for f, v in turns]}


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _asst(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _sys(text: str) -> dict:
    return {"role": "system", "content": text}


CONVS = [
    _sg(("system", "be brief"), ("human", "hello there"), ("gpt", "hi how are you"), ("human", "fine thanks"),
        ("gpt", "good")),
    {"messages": [_user("one two three"), _asst("four five"), _user("six")]},  # last turn has no recorded answer
]


# ------------------------------------------------------------------------------------------ conversations
def test_single_turn_reads_sharegpt_and_openai_lines_and_the_array_form(tmp_path):
    src = _write_jsonl(tmp_path / "c.jsonl", CONVS)
    plan = _plan({"kind": "conversations", "path": str(src)})
    expected = [
        {"messages": [_sys("be brief"), _user("hello there")], "max_tokens": 4},
        {"messages": [_user("one two three")], "max_tokens": 2},
    ]
    assert plan["requests"] == expected
    arr = tmp_path / "c.json"
    arr.write_text(json.dumps(CONVS, indent=2))  # one JSON array over many lines, as ShareGPT dumps often are
    assert _plan({"kind": "conversations", "path": str(arr)})["requests"] == expected
    assert plan["prompt_stats"]["conversations"] == 2 and plan["prompt_stats"]["skipped_without_user_turn"] == 0


def test_multi_turn_grows_the_recorded_history_turn_by_turn(tmp_path):
    src = _write_jsonl(tmp_path / "c.jsonl", CONVS)
    plan = _plan({"kind": "conversations", "path": str(src), "multi_turn": True, "output_cap": 50})
    assert plan["requests"] == [
        {"messages": [_sys("be brief"), _user("hello there")], "max_tokens": 4},
        {"messages": [_sys("be brief"), _user("hello there"), _asst("hi how are you"), _user("fine thanks")],
         "max_tokens": 1},
        {"messages": [_user("one two three")], "max_tokens": 2},
        {"messages": [_user("one two three"), _asst("four five"), _user("six")], "max_tokens": 50},  # no answer
    ]
    # the requests share no message objects: changing one leaves the others alone
    assert plan["requests"][0]["messages"][0] is not plan["requests"][1]["messages"][0]
    capped = _plan({"kind": "conversations", "path": str(src), "multi_turn": True, "max_turns": 1})
    assert [len(b["messages"]) for b in capped["requests"]] == [2, 1]


def test_conversations_without_a_user_turn_are_skipped_and_counted(tmp_path):
    src = _write_jsonl(tmp_path / "c.jsonl", [_sg(("system", "x"), ("gpt", "only an answer")), CONVS[1],
                                              {"conversations": []}])
    plan = _plan({"kind": "conversations", "path": str(src)})
    assert plan["requests"] == [{"messages": [_user("one two three")], "max_tokens": 2}]
    assert plan["prompt_stats"]["skipped_without_user_turn"] == 2 and plan["prompt_stats"]["conversations"] == 1
    none_left = _write_jsonl(tmp_path / "n.jsonl", [_sg(("gpt", "a")), {"messages": [_sys("s")]}])
    with pytest.raises(ConfigError, match=r"holds no conversation with a user turn \(2 skipped"):
        _plan({"kind": "conversations", "path": str(none_left)})


@pytest.mark.parametrize("bad,match", [
    ({"conversations": [{"from": "human"}]}, r"line 2, conversations turn 1: missing key 'value'"),
    ({"conversations": [{"value": "hi"}]}, r"line 2, conversations turn 1: missing key 'from'"),
    (_sg(("human", "a"), ("robot", "b")), r"line 2, conversations turn 2: unknown role 'robot'"),
    ({"messages": [{"role": "tool", "content": "x"}]}, r"line 2, messages turn 1: unknown role 'tool'"),
    ({"messages": [{"role": "user"}]}, r"line 2, messages turn 1: missing key 'content'"),
    ({"messages": "hello"}, r"line 2, field 'messages': expected a list"),
    ({"prompt": "hello"}, r"line 2: missing key 'conversations' \(ShareGPT\) or 'messages' \(OpenAI\)"),
    ([1, 2], r"line 2: expected a JSON object"),
])
def test_bad_lines_name_the_file_and_the_line(tmp_path, bad, match):
    src = _write_jsonl(tmp_path / "c.jsonl", [CONVS[1], bad])
    with pytest.raises(ConfigError, match=match) as e:
        _plan({"kind": "conversations", "path": str(src)})
    assert str(src) in str(e.value)


def test_bad_json_missing_file_and_bad_array_items_are_named(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps(CONVS[1]) + "\n{not json\n")
    with pytest.raises(ConfigError, match=r"c.jsonl, line 2: not valid JSON"):
        _plan({"kind": "conversations", "path": str(src)})
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps([CONVS[1], {"messages": [{"role": "user"}]}]))
    with pytest.raises(ConfigError, match=r"a.json, array item 2, messages turn 1: missing key 'content'"):
        _plan({"kind": "conversations", "path": str(arr)})
    arr.write_text('[\n  {"messages": []},\n  oops\n]')
    with pytest.raises(ConfigError, match=r"a.json, line 3: the file starts with '\[' but is not one valid JSON array"):
        _plan({"kind": "conversations", "path": str(arr)})
    with pytest.raises(ConfigError, match=r"Conversation file .*nope.jsonl does not exist"):
        _plan({"kind": "conversations", "path": str(tmp_path / "nope.jsonl")})


def test_max_tokens_comes_from_the_recorded_answer_within_1_and_output_cap(tmp_path):
    long_answer = " ".join(["w"] * 30)
    src = _write_jsonl(tmp_path / "c.jsonl", [_sg(("human", "q1"), ("gpt", "")),  # empty answer: the floor, 1
                                              _sg(("human", "q2"), ("gpt", long_answer)),  # capped at output_cap
                                              _sg(("human", "q3"), ("gpt", "three words here")),
                                              _sg(("human", "q4"))])  # no answer: output_cap

    def mt(**kw) -> list[int]:
        return [b["max_tokens"] for b in _plan({"kind": "conversations", "path": str(src), **kw})["requests"]]

    assert mt(output_cap=20) == [1, 20, 3, 20]
    assert mt() == [1, 30, 3, 1024]
    assert mt(max_tokens_from_data=False, output_cap=7) == [7, 7, 7, 7]
    plan = _plan({"kind": "conversations", "path": str(src)}, max_tokens=5)  # --max-tokens overrides the data
    assert [b["max_tokens"] for b in plan["requests"]] == [5, 5, 5, 5]


def test_max_requests_and_max_conversations_bound_the_pool(tmp_path):
    src = _write_jsonl(tmp_path / "c.jsonl", CONVS * 3)  # 6 conversations, 12 multi-turn requests
    multi = {"kind": "conversations", "path": str(src), "multi_turn": True}
    assert len(_plan(multi)["requests"]) == 12
    plan = _plan(multi, max_requests=3)
    assert [len(b["messages"]) for b in plan["requests"]] == [2, 4, 1]  # cut inside the second conversation
    assert plan["prompt_stats"]["count"] == 3
    assert len(_plan({**multi, "max_conversations": 1})["requests"]) == 2
    assert len(_plan({"kind": "conversations", "path": str(src)}, max_requests=4)["requests"]) == 4


def test_the_example_file_parses_both_ways():
    path = str(REPO / EXAMPLE)
    single = _plan({"kind": "conversations", "path": path})["requests"]
    multi = _plan({"kind": "conversations", "path": path, "multi_turn": True})["requests"]
    assert 5 <= len(single) <= 6 < len(multi)
    assert all(b["messages"][-1]["role"] == "user" for b in single + multi)


# ---------------------------------------------------------------------------- Hugging Face (a fake datasets)
class _FakeDataset:
    def __init__(self, rows: list[dict]):
        self._rows = rows
        self.column_names = list(rows[0]) if rows else []

    def __iter__(self):
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


@pytest.fixture
def fake_datasets(monkeypatch):
    """A fake `datasets` module in sys.modules: `tables[(name, config, split)]` are the cached datasets; every call
    records the offline variables it saw."""
    mod = types.ModuleType("datasets")
    mod.tables = {}  # type: ignore[attr-defined]
    mod.calls = []  # type: ignore[attr-defined]
    config = types.ModuleType("datasets.config")  # its offline flags, read from the environment at import
    config.HF_HUB_OFFLINE = config.HF_DATASETS_OFFLINE = False  # type: ignore[attr-defined]

    def load_dataset(path, name=None, split=None, **kw):
        mod.calls.append({"path": path, "name": name, "split": split,  # type: ignore[attr-defined]
                          "env": {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")},
                          "flags": (config.HF_HUB_OFFLINE, config.HF_DATASETS_OFFLINE)})  # type: ignore[attr-defined]
        try:
            return _FakeDataset(mod.tables[(path, name, split)])  # type: ignore[attr-defined]
        except KeyError:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)") from None

    mod.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", mod)
    monkeypatch.setitem(sys.modules, "datasets.config", config)
    mod.config = config  # type: ignore[attr-defined]
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    return mod


def test_hf_auto_detects_the_column_offline_and_restores_the_environment(fake_datasets):
    fake_datasets.tables[("org/prompts", None, "train")] = [
        {"id": 1, "text": "ignored text", "question": "q", "prompt": "say hello to the world"},
        {"id": 2, "text": "x", "question": "q", "prompt": ""},  # no text: skipped
        {"id": 3, "text": "x", "question": "q", "prompt": "count to three"},
    ]
    plan = _plan({"kind": "hf", "dataset": "org/prompts", "output_cap": 32})
    assert plan["requests"] == [{"messages": [_user("say hello to the world")], "max_tokens": 32},
                                {"messages": [_user("count to three")], "max_tokens": 32}]
    st = plan["prompt_stats"]
    assert st["column"] == "prompt" and st["rows_read"] == 3 and st["skipped_rows_without_text"] == 1
    assert st["source"] == "Hugging Face dataset org/prompts (split train)"
    assert fake_datasets.calls[-1]["env"] == {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    assert fake_datasets.calls[-1]["flags"] == (True, True)
    assert os.environ.get("HF_DATASETS_OFFLINE") is None and os.environ["HF_HUB_OFFLINE"] == "0"
    assert (fake_datasets.config.HF_HUB_OFFLINE, fake_datasets.config.HF_DATASETS_OFFLINE) == (False, False)


def test_hf_explicit_column_config_split_and_max_rows(fake_datasets):
    fake_datasets.tables[("org/qa", "small", "test")] = [{"prompt": f"p{i}", "question": f"question {i}"}
                                                         for i in range(10)]
    plan = _plan({"kind": "hf", "dataset": "org/qa", "config_name": "small", "split": "test", "column": "question",
                  "max_rows": 4}, max_tokens=9)
    assert plan["requests"] == [{"messages": [_user(f"question {i}")], "max_tokens": 9} for i in range(4)]
    assert fake_datasets.calls[-1]["name"] == "small" and fake_datasets.calls[-1]["split"] == "test"
    assert len(_plan({"kind": "hf", "dataset": "org/qa", "config_name": "small", "split": "test"},
                     max_requests=3)["requests"]) == 3
    with pytest.raises(ConfigError, match=r"has no column 'answer'; columns: prompt, question"):
        _plan({"kind": "hf", "dataset": "org/qa", "config_name": "small", "split": "test", "column": "answer"})


def test_hf_conversation_columns_are_read_like_conversation_files(fake_datasets):
    fake_datasets.tables[("org/chat", None, "train")] = [
        {"messages": [_user("hi there"), _asst("hello you two"), _user("bye")], "conversations": None},
        {"messages": [_asst("no user turn")], "conversations": None},
    ]
    fake_datasets.tables[("org/sharegpt", None, "train")] = [
        {"conversations": CONVS[0]["conversations"], "prompt": "not used"}]
    plan = _plan({"kind": "hf", "dataset": "org/chat", "multi_turn": True})
    assert plan["requests"] == [{"messages": [_user("hi there")], "max_tokens": 3},
                                {"messages": [_user("hi there"), _asst("hello you two"), _user("bye")],
                                 "max_tokens": 1024}]
    assert plan["prompt_stats"]["skipped_without_user_turn"] == 1 and plan["prompt_stats"]["column"] == "messages"
    plan = _plan({"kind": "hf", "dataset": "org/sharegpt"})
    assert plan["requests"] == [{"messages": [_sys("be brief"), _user("hello there")], "max_tokens": 4}]


def test_hf_not_cached_or_not_installed_says_nothing_is_downloaded(fake_datasets, monkeypatch):
    with pytest.raises(ConfigError) as e:
        _plan({"kind": "hf", "dataset": "org/missing", "split": "validation"})
    msg = str(e.value)
    assert "'org/missing' (split 'validation') cannot be loaded from the local cache" in msg
    assert "OfflineModeIsEnabled" in msg and "never downloads anything at run time" in msg
    assert "datasets.load_dataset('org/missing', split='validation')" in msg
    assert os.environ["HF_HUB_OFFLINE"] == "0"  # restored after a failure too
    fake_datasets.tables[("org/t", None, "train")] = [{"title": "x"}]
    with pytest.raises(ConfigError, match=r"none of the columns messages, conversations, prompt, instruction, "
                                          r"question, text found \(columns: title\)"):
        _plan({"kind": "hf", "dataset": "org/t"})
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(ConfigError, match=r"needs the `datasets` package, which is not installed") as e:
        _plan({"kind": "hf", "dataset": "org/t"})
    assert "never downloads anything at run time" in str(e.value)


# -------------------------------------------------------------------------------------- prompt_stats, CLI
def test_prompt_stats_of_a_tiny_pool():
    pool = [{"messages": [_user("a b"), _asst("c")], "max_tokens": 10},
            {"messages": [_user("a b c d e f")], "max_tokens": 20},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x y z"}]}]},  # no max_tokens
            {"prompt": "one two three four", "max_tokens": 40}]
    st = prompt_stats(pool, "somewhere", {"note": 1})
    assert st["source"] == "somewhere" and st["count"] == 4 and st["note"] == 1
    assert st["input_words"] == {"mean": 4.0, "p50": 3.5, "p90": pytest.approx(5.4), "p99": pytest.approx(5.94),
                                 "max": 6.0}
    assert st["max_tokens"] == {"count": 3, "mean": pytest.approx(70 / 3), "p50": 20.0, "p90": pytest.approx(36.0),
                                "p99": pytest.approx(39.6), "max": 40.0}
    assert prompt_stats([], "x")["input_words"]["p50"] is None


def test_every_plan_carries_prompt_stats_and_the_summary_line_shows_them():
    from packager.loadtest.render import _prompt_stats_line

    plan = _plan({"kind": "synthetic", "input_tokens": {"mean": 7}, "output_tokens": {"mean": 5},
                  "unique_prompts": 3})
    st = plan["prompt_stats"]
    assert st["count"] == 3 and st["input_words"]["max"] == 7 and st["max_tokens"]["p50"] == 5
    assert _prompt_stats_line(st) == "Requests from synthetic prompts: 3 unique, input ~7/7/7 words, max_tokens 5/5/5."
    line = _prompt_stats_line({"source": "hf [x]", "count": 2, "input_words": {"p50": 1.4, "p90": 2, "max": 3},
                               "max_tokens": {"count": 0, "p50": None}, "skipped_without_user_turn": 2})
    assert line.startswith(f"Requests from hf \\[x]: 2 unique, input ~1/2/3 words, max_tokens {DASH}/{DASH}/{DASH} ")
    assert "2 conversation(s) without a user turn skipped" in line


def test_parse_prompts_understands_the_new_specs():
    assert parse_prompts("conversations:data/c.jsonl") == {"kind": "conversations", "path": "data/c.jsonl",
                                                           "multi_turn": False}
    assert parse_prompts("conversations-multi:c.json") == {"kind": "conversations", "path": "c.json",
                                                           "multi_turn": True}
    assert parse_prompts("hf:org/name") == {"kind": "hf", "dataset": "org/name"}
    assert parse_prompts("hf:org/name:test") == {"kind": "hf", "dataset": "org/name", "split": "test"}
    assert parse_prompts("hf:org/name:train[:100]") == {"kind": "hf", "dataset": "org/name", "split": "train[:100]"}
    for bad in ("conversations", "conversations:", "hf:", "hf::test", "sharegpt:x"):
        with pytest.raises(ConfigError, match="conversations-multi:PATH' or 'hf:DATASET"):
            parse_prompts(bad)
    # a config file's other fields survive a --prompts of the same kind
    lt = build_loadtest_dict({"prompts": {"kind": "conversations", "path": "a", "max_turns": 2}}, None, {}, None,
                             None, None, "conversations-multi:b", None, None, {})
    cfg = parse_loadtest_config(lt)
    assert cfg.prompts.kind == "conversations" and cfg.prompts.path == "b"
    assert cfg.prompts.multi_turn and cfg.prompts.max_turns == 2
    with pytest.raises(ConfigError, match=r"prompts.hf.column"):
        parse_loadtest_config({"prompts": {"kind": "hf", "dataset": "d", "column": 3}})


# ------------------------------------------------------------------------------- end to end through locust
def test_multi_turn_conversations_through_locust_and_the_cli(fake_server, tmp_path, monkeypatch):
    from packager.cli import app

    monkeypatch.chdir(REPO)
    fake_server.configure(ttft_ms=5, itl_ms=1, output_tokens=4)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("loadtest:\n  drain_timeout_s: 5\n  request_timeout_s: 10\n")  # bounds the locust process
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["loadtest", "--target", fake_server.base_url, "--config", str(cfg),
                                 "--profile", "rate", "--rate", "10", "--duration", "2", "--set", "arrival=constant",
                                 "--prompts", f"conversations-multi:{EXAMPLE}", "--max-duration", "10",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"Requests from conversations {EXAMPLE} (multi-turn): 10 unique" in " ".join(r.output.split())
    plan = json.loads((out / "plan.json").read_text())
    res = json.loads((out / "loadtest.json").read_text())
    pool = plan["requests"]
    # the pool: every user turn of the example, each with the recorded history before it (conv-2 has three)
    expected_pool = _plan({"kind": "conversations", "path": EXAMPLE, "multi_turn": True})["requests"]
    assert [b["messages"] for b in pool] == [b["messages"] for b in expected_pool]
    egg = [b["messages"] for b in pool if b["messages"][0]["role"] == "system"]
    assert [[m["role"] for m in ms] for ms in egg] == [
        ["system", "user"], ["system", "user", "assistant", "user"],
        ["system", "user", "assistant", "user", "assistant", "user"]]
    assert egg[1] == egg[2][:4] and egg[0] == egg[1][:2]
    # every request sent was recorded; the result carries the pool's stats
    reqs, _, _ = read_records(out / "records.jsonl")
    sent = res["phases"][0]["requests_sent"]
    assert len(reqs) == sent == 20 and res["phases"][0]["requests_ok"] == sent
    assert res["prompt_stats"] == plan["prompt_stats"] and res["prompt_stats"]["count"] == len(pool) == 10
    # what the server saw (its usage counts the words of every message): the growing prompts of the pool, in
    # round-robin order; /_fake/stats shows no messages, so the records' server-side counts stand for them
    words = [sum(len(m["content"].split()) for m in b["messages"]) for b in pool]
    seen = [q["input_tokens"] for q in sorted(reqs, key=lambda q: q["t_start_unix"])]
    assert seen == [words[i % len(pool)] for i in range(sent)]
    assert words[1] < words[2] < words[3]  # conv-2's three turns: each request carries more history
