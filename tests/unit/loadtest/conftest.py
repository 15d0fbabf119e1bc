"""Fixtures of the load-test unit tests: the local OpenAI fake (a thread of this process) and a runner helper.

The tests run the REAL locustfile in locust subprocesses (locust is never imported here)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fakes.fake_openai import FakeOpenAIServer


@pytest.fixture
def fake_server():
    """A fresh fake with known delays; tests change them with srv.configure(...)."""
    with FakeOpenAIServer(ttft_ms=50, itl_ms=10, output_tokens=8) as srv:
        yield srv


def _run(url: str, out: Path, **lt):
    """run_loadtest with small synthetic prompts (8 in, 8 out) unless the caller says otherwise."""
    from packager.config import PricingConfig, SLOConfig
    from packager.loadtest.config import LoadTestConfig
    from packager.loadtest.runner import run_loadtest

    slo = lt.pop("slo", SLOConfig())
    pricing = lt.pop("pricing", PricingConfig(instance=None))
    lt.setdefault("prompts", {"kind": "synthetic", "input_tokens": {"mean": 8}, "output_tokens": {"mean": 8}})
    lt.setdefault("max_duration_s", 30)
    lt.setdefault("drain_timeout_s", 10)
    cfg = LoadTestConfig.model_validate(lt)
    return run_loadtest(url, cfg, slo, pricing, out)


@pytest.fixture
def run_lt():
    """run_lt(url, out_dir, **loadtest_fields) -> LoadTestResult."""
    return _run
