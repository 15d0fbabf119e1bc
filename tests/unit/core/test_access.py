"""packager.core.access: the key, extra headers and TLS settings every client uses, and target URLs."""
from __future__ import annotations

import os
import ssl

import pytest

from packager.core.access import (
    ENV_CA_BUNDLE,
    ENV_CLIENT_HEADERS,
    ENV_CLIENT_KEY,
    ENV_TLS_VERIFY,
    ClientAccess,
    access_scope,
    client_headers,
    current_access,
    http_options,
    is_local_host,
    parse_header,
    read_key_file,
    resolve_access,
    tls_verify,
    where_line,
)
from packager.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in (ENV_CLIENT_KEY, ENV_CLIENT_HEADERS, ENV_CA_BUNDLE, ENV_TLS_VERIFY):
        monkeypatch.delenv(name, raising=False)


def test_parse_header():
    assert parse_header("X-Team:  ml-platform ") == ("X-Team", "ml-platform")
    assert parse_header("X-Empty:") == ("X-Empty", "")
    assert parse_header("X-Url: https://a.b/c?d=e:f") == ("X-Url", "https://a.b/c?d=e:f")
    for bad, msg in (("no colon", "is not 'Name: value'"), (": value", "is not 'Name: value'"),
                     ("Bad Name: v", "not a valid header name"), ("X-A: a\r\nX-B: b", "line break"),
                     ("Host: other", "sets this header itself"), ("content-length: 3", "sets this header itself")):
        with pytest.raises(ConfigError, match=msg):
            parse_header(bad)


def test_key_file_takes_the_first_real_line(tmp_path):
    f = tmp_path / "key"
    f.write_text("# the staging key\n\n  sk-staging-123456789  \nsecond\n")
    assert read_key_file(f) == "sk-staging-123456789"
    f.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="holds no key"):
        read_key_file(f)
    with pytest.raises(ConfigError, match="cannot be read"):
        read_key_file(tmp_path / "missing")


def test_resolve_access_sources_and_conflicts(tmp_path):
    env = {"MY_KEY": " sk-from-env ", ENV_CLIENT_KEY: "sk-default"}
    assert resolve_access(environ=env).api_key == "sk-default"
    assert resolve_access(api_key_env="MY_KEY", environ=env).api_key == "sk-from-env"
    assert resolve_access(api_key_env="$MY_KEY", environ=env).api_key == "sk-from-env"
    f = tmp_path / "k"
    f.write_text("sk-from-file\n")
    assert resolve_access(api_key_file=f, environ=env).api_key == "sk-from-file"
    assert resolve_access(environ={}).api_key is None
    with pytest.raises(ConfigError, match="not set or empty"):
        resolve_access(api_key_env="NOPE", environ=env)
    with pytest.raises(ConfigError, match="not both"):
        resolve_access(api_key_env="MY_KEY", api_key_file=f, environ=env)
    with pytest.raises(ConfigError, match="both set Authorization"):
        resolve_access(headers=["Authorization: Basic abc"], environ=env)
    assert resolve_access(headers=["Authorization: Basic abc"], environ={}).headers == {"Authorization": "Basic abc"}
    with pytest.raises(ConfigError, match="given twice"):
        resolve_access(headers=["X-A: 1", "x-a: 2"], environ={})
    with pytest.raises(ConfigError, match="is not a file"):
        resolve_access(ca_bundle=tmp_path / "none.pem", environ={})
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="no usable CA certificate"):
        resolve_access(ca_bundle=bad, environ={})
    with pytest.raises(ConfigError, match="give one of them"):
        resolve_access(ca_bundle=bad, insecure=True, environ={})


def test_scope_sets_and_restores_every_setting(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CLIENT_KEY, "before")
    access = ClientAccess(api_key="sk-inside", headers={"X-Team": "ml"}, ca_bundle=None, verify=False)
    with pytest.raises(RuntimeError):
        with access_scope(access):
            assert client_headers() == {"X-Team": "ml", "Authorization": "Bearer sk-inside"}
            assert tls_verify() is False
            assert current_access() == access
            assert http_options() == {"headers": {"X-Team": "ml", "Authorization": "Bearer sk-inside"},
                                      "verify": False}
            raise RuntimeError("boom")
    assert os.environ[ENV_CLIENT_KEY] == "before"
    assert ENV_CLIENT_HEADERS not in os.environ and ENV_TLS_VERIFY not in os.environ
    with access_scope(ClientAccess()):
        assert ENV_CLIENT_KEY not in os.environ and client_headers() == {}
        assert tls_verify() is True
    assert os.environ[ENV_CLIENT_KEY] == "before"


def test_ca_bundle_gives_a_verifying_context():
    bundle = ssl.get_default_verify_paths().cafile
    if not bundle or not os.path.isfile(bundle):
        pytest.skip("no system CA file to stand in for a bundle")
    with access_scope(resolve_access(ca_bundle=bundle, environ={})):
        ctx = tls_verify()
        assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_bad_header_variable_is_a_clear_error():
    with pytest.raises(ConfigError, match="JSON object"):
        current_access({ENV_CLIENT_HEADERS: "[1, 2]"})


@pytest.mark.parametrize("url,local", [
    ("http://127.0.0.1:8000", True), ("http://127.9.9.9", True), ("http://localhost:3000", True),
    ("http://[::1]:80", True), ("http://10.1.2.3", False), ("https://llm.example.com", False),
    ("http://127.0.0.1.nip.io", False), ("http://localhost.example.com", False),
])
def test_is_local_host(url, local):
    assert is_local_host(url) is local


def test_where_line_names_the_host_and_never_the_secrets():
    access = ClientAccess(api_key="sk-secret-value", headers={"X-Tenant": "secret-tenant"}, verify=False)
    line = where_line("https://llm.example.com", access)
    assert "REMOTE host llm.example.com" in line and "TLS, not verified" in line and "with an API key" in line
    assert "X-Tenant" in line and "sk-secret-value" not in line and "secret-tenant" not in line
    assert "this machine (loopback), plain http, no API key" in where_line("http://127.0.0.1:1", ClientAccess())
