"""API keys of a bento: loading them from the environment, checking a request's bearer token, client headers."""
from __future__ import annotations

import os

import pytest

from packager.core.access import ENV_CLIENT_KEY, client_headers, unauthorized_hint, use_client_key
from packager.errors import ConfigError
from packager.serve.auth import (
    ENV_API_KEYS,
    ENV_API_KEYS_FILE,
    MIN_KEY_CHARS,
    KeyCheck,
    bearer_token,
    generate_key,
    load_api_keys,
    load_metrics_token,
)

K1 = "key-one-aaaaaaaaaaaa"
K2 = "key-two-bbbbbbbbbbbb"
K3 = "key-three-cccccccccc"


# --- load_api_keys ---------------------------------------------------------------------------------------

def test_no_keys_configured_is_an_empty_list():
    assert load_api_keys({}) == []
    assert load_api_keys({ENV_API_KEYS: "  ", ENV_API_KEYS_FILE: ""}) == []


@pytest.mark.parametrize("value", [f"{K1},{K2}", f"{K1} {K2}", f" {K1} ,\n {K2}, ", f"{K1}\t{K2}"])
def test_keys_from_env_split_on_commas_and_whitespace(value):
    assert load_api_keys({ENV_API_KEYS: value}) == [K1, K2]


def test_keys_from_file_one_per_line_with_comments(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"# the bento's keys\n{K1}\n\n   \n{K2}  # team b\n# {K3} revoked\n", encoding="utf-8")
    assert load_api_keys({ENV_API_KEYS_FILE: str(f)}) == [K1, K2]


def test_keys_from_env_and_file_together(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"{K2}\n{K3}\n", encoding="utf-8")
    assert load_api_keys({ENV_API_KEYS: K1, ENV_API_KEYS_FILE: str(f)}) == [K1, K2, K3]


def test_duplicate_keys_are_kept_once_in_first_seen_order(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"{K2}\n{K1}\n{K2}\n", encoding="utf-8")
    assert load_api_keys({ENV_API_KEYS: f"{K1},{K2},{K1}", ENV_API_KEYS_FILE: str(f)}) == [K1, K2]


def test_key_of_exactly_the_minimum_length_is_accepted():
    key = "k" * MIN_KEY_CHARS
    assert load_api_keys({ENV_API_KEYS: key}) == [key]


def test_short_key_is_refused_naming_its_number():
    short = "s" * (MIN_KEY_CHARS - 1)
    with pytest.raises(ConfigError) as e:
        load_api_keys({ENV_API_KEYS: f"{K1},{short},{K2}"})
    msg = str(e.value)
    assert "API key number 2 (of 3)" in msg
    assert f"shorter than {MIN_KEY_CHARS} characters" in msg
    assert short not in msg  # the message never shows a key


def test_several_short_keys_are_all_named(tmp_path):
    f = tmp_path / "keys"
    f.write_text("tiny\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"API key number 1, 3 \(of 3\)"):
        load_api_keys({ENV_API_KEYS: f"short,{K1}", ENV_API_KEYS_FILE: str(f)})


def test_missing_keys_file_is_refused_naming_the_variable(tmp_path):
    missing = tmp_path / "nope" / "keys"
    with pytest.raises(ConfigError) as e:
        load_api_keys({ENV_API_KEYS: K1, ENV_API_KEYS_FILE: str(missing)})
    msg = str(e.value)
    assert msg.startswith(f"{ENV_API_KEYS_FILE}={missing} cannot be read")
    assert "FileNotFoundError" in msg


def test_keys_file_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=ENV_API_KEYS_FILE):
        load_api_keys({ENV_API_KEYS_FILE: str(tmp_path)})


def test_keys_file_that_is_not_utf8_is_refused(tmp_path):
    f = tmp_path / "keys"
    f.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=r"PACKAGER_API_KEYS_FILE=.* cannot be read \(UnicodeDecodeError"):
        load_api_keys({ENV_API_KEYS_FILE: str(f)})


def test_load_api_keys_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv(ENV_API_KEYS, f"{K3} {K1}")
    monkeypatch.delenv(ENV_API_KEYS_FILE, raising=False)
    assert load_api_keys() == [K3, K1]


def test_metrics_token():
    assert load_metrics_token({}) is None
    assert load_metrics_token({"PACKAGER_METRICS_TOKEN": "   "}) is None
    assert load_metrics_token({"PACKAGER_METRICS_TOKEN": " tok-123 "}) == "tok-123"


# --- KeyCheck --------------------------------------------------------------------------------------------

def test_keycheck_accepts_each_configured_key():
    check = KeyCheck([K1, K2, K3])
    assert len(check) == 3 and bool(check) is True
    assert [check.accepts(k.encode()) for k in (K1, K2, K3)] == [True, True, True]


@pytest.mark.parametrize("token", [None, b"", b"wrong-key-dddddddddd", K1[:-1].encode(), K1[:4].encode(),
                                   (K1 + "x").encode(), K1.upper().encode(), (K1 + K2).encode()])
def test_keycheck_refuses_anything_else(token):
    assert KeyCheck([K1, K2]).accepts(token) is False


def test_empty_keycheck_is_falsy_and_accepts_nothing():
    check = KeyCheck([])
    assert not check and len(check) == 0
    assert check.accepts(b"") is False
    assert check.accepts(K1.encode()) is False


# --- bearer_token ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,value", [
    (b"authorization", b"Bearer tok-1"),
    (b"Authorization", b"bearer tok-1"),
    (b"AUTHORIZATION", b"BEARER tok-1"),
    (b"authorization", b"  BeArEr   tok-1  "),
])
def test_bearer_token_scheme_and_header_name_are_case_insensitive(name, value):
    assert bearer_token([(b"content-type", b"application/json"), (name, value)]) == b"tok-1"


@pytest.mark.parametrize("value", [b"Basic dXNlcjpwYXNz", b"Token tok-1", b"Bearer", b"Bearer    ", b"tok-1",
                                   b"Bearertok-1", b""])
def test_bearer_token_other_schemes_or_no_token_is_none(value):
    assert bearer_token([(b"authorization", value)]) is None


def test_bearer_token_without_the_header_is_none():
    assert bearer_token([]) is None
    assert bearer_token([(b"x-api-key", b"tok-1"), (b"host", b"bento")]) is None


def test_bearer_token_keeps_the_token_bytes_as_sent():
    assert bearer_token([(b"authorization", b"Bearer AbC-_.~+/=")]) == b"AbC-_.~+/="


# --- client side ----------------------------------------------------------------------------------------

def test_client_headers_explicit_key_beats_environment():
    assert client_headers("explicit", {ENV_CLIENT_KEY: "from-env"}) == {"Authorization": "Bearer explicit"}


def test_client_headers_from_given_environment():
    assert client_headers(None, {ENV_CLIENT_KEY: " from-env "}) == {"Authorization": "Bearer from-env"}


def test_client_headers_from_os_environ(monkeypatch):
    monkeypatch.setenv(ENV_CLIENT_KEY, "os-env-key")
    assert client_headers() == {"Authorization": "Bearer os-env-key"}


def test_client_headers_without_any_key_is_empty(monkeypatch):
    monkeypatch.delenv(ENV_CLIENT_KEY, raising=False)
    assert client_headers() == {}
    assert client_headers(None, {}) == {}
    assert client_headers("", {ENV_CLIENT_KEY: "   "}) == {}


def test_unauthorized_hint():
    for status in (401, 403):
        hint = unauthorized_hint(status)
        assert ENV_CLIENT_KEY in hint and "Authorization: Bearer KEY" in hint
    assert unauthorized_hint(200) == "" and unauthorized_hint(404) == "" and unauthorized_hint(429) == ""


def test_use_client_key_restores_the_previous_value(monkeypatch):
    monkeypatch.setenv(ENV_CLIENT_KEY, "before")
    with use_client_key("during"):
        assert os.environ[ENV_CLIENT_KEY] == "during"
        assert client_headers() == {"Authorization": "Bearer during"}
    assert os.environ[ENV_CLIENT_KEY] == "before"


def test_use_client_key_removes_the_variable_when_none_was_set(monkeypatch):
    monkeypatch.delenv(ENV_CLIENT_KEY, raising=False)
    with use_client_key("during"):
        assert os.environ[ENV_CLIENT_KEY] == "during"
    assert ENV_CLIENT_KEY not in os.environ


def test_use_client_key_restores_even_after_an_error(monkeypatch):
    monkeypatch.setenv(ENV_CLIENT_KEY, "before")
    with pytest.raises(RuntimeError):
        with use_client_key("during"):
            raise RuntimeError("boom")
    assert os.environ[ENV_CLIENT_KEY] == "before"


def test_use_client_key_none_leaves_the_environment_alone(monkeypatch):
    monkeypatch.setenv(ENV_CLIENT_KEY, "before")
    with use_client_key(None):
        assert os.environ[ENV_CLIENT_KEY] == "before"
    assert os.environ[ENV_CLIENT_KEY] == "before"


def test_generate_key_gives_distinct_long_keys_that_load():
    keys = [generate_key() for _ in range(50)]
    assert len(set(keys)) == 50
    assert all(len(k) >= 40 for k in keys)
    assert all(k.startswith("pk-") for k in keys)
    assert load_api_keys({ENV_API_KEYS: ",".join(keys)}) == keys  # accepted by the server as they are
    assert KeyCheck(keys).accepts(keys[17].encode())


def test_keys_in_the_environment_never_reach_the_run_configuration():
    """PACKAGER_API_KEYS and friends share the PACKAGER_ prefix of configuration overrides: they must not become
    configuration (which is written into results, reports and registry records)."""
    from packager.config import env_overrides, load_config

    secret = "pk-" + "s" * 40
    env = {"PACKAGER_API_KEYS": secret, "PACKAGER_API_KEY": secret, "PACKAGER_METRICS_TOKEN": secret,
           "PACKAGER_API_KEYS_FILE": "/nonexistent"}
    assert env_overrides(env) == {}
    assert secret not in load_config(environ=env).model_dump_json()
