"""The engine-argument search's pure parts (packager.engines.tune): what is tried, in which order, how a candidate
changes the engine settings, and how the winner is chosen against packager's own arguments."""
from __future__ import annotations

import pytest

from packager.config import EngineConfig
from packager.engines.tune import (
    DEFAULTS_LABEL,
    EngineCandidate,
    EngineTrial,
    apply,
    candidates,
    choose,
    search_load,
)


def test_llamacpp_candidates_start_with_packagers_and_change_one_thing_each():
    c = candidates("llamacpp", EngineConfig(), cpus=4)
    assert c[0].label == DEFAULTS_LABEL and c[0].extra_args == [] and c[0].max_num_seqs is None
    assert [x.label for x in c[1:]] == ["--threads 3", "--ubatch-size 256", "--ubatch-size 1024",
                                        "--flash-attn on", "--ubatch-size 128"]
    assert all(len(x.extra_args) == 2 and x.label == " ".join(x.extra_args) for x in c[1:])
    # with 2 CPUs one thread fewer halves the compute: not tried
    assert [x.label for x in candidates("llamacpp", EngineConfig(), cpus=2)][1] == "--ubatch-size 256"
    assert candidates("llamacpp", EngineConfig(), cpus=16)[1].extra_args == ["--threads", "15"]


def test_vllm_candidates_vary_the_batch():
    c = candidates("vllm", EngineConfig(max_num_seqs=64), cpus=2)
    assert [x.label for x in c] == [DEFAULTS_LABEL, "max_num_seqs 32", "max_num_seqs 128",
                                    "--max-num-batched-tokens 2048", "--max-num-batched-tokens 8192"]
    assert [x.label for x in candidates("vllm", EngineConfig(max_num_seqs=1), cpus=2)][:2] == [DEFAULTS_LABEL,
                                                                                                "max_num_seqs 2"]
    assert candidates("other", EngineConfig(), cpus=2) == [EngineCandidate(label=DEFAULTS_LABEL)]


def test_several_api_servers_are_tried_on_a_gpu_host_with_the_cpus_for_them():
    gpu = EngineConfig(target="gpu", max_num_seqs=256)
    c = candidates("vllm", gpu, cpus=16)
    first = c[1]  # the first change tried: it was the knee on a GPU
    assert (first.label, first.api_server_count, first.extra_args) == ("api_server_count 4", 4, [])
    assert [x.label for x in c[2:]] == ["max_num_seqs 128", "max_num_seqs 512", "--max-num-batched-tokens 2048",
                                        "--max-num-batched-tokens 8192"]
    assert candidates("vllm", gpu, cpus=8)[1].api_server_count == 2
    # not with 4 CPUs, not on a CPU target, not when the deployment already runs as many
    for eng, cpus in ((gpu, 4), (EngineConfig(), 16), (gpu.model_copy(update={"api_server_count": 4}), 16)):
        assert all(c.api_server_count is None for c in candidates("vllm", eng, cpus=cpus))
    got = apply(gpu, first)  # the bento is built with the winner's settings
    assert got.api_server_count == 4 and got.max_num_seqs == 256 and gpu.api_server_count == 1


def test_apply_adds_after_the_users_own_arguments_and_leaves_the_input_alone():
    eng = EngineConfig(extra_args=["--seed", "1"], max_num_seqs=64)
    assert apply(eng, None) is eng and apply(eng, EngineCandidate(label=DEFAULTS_LABEL)) is eng
    got = apply(eng, EngineCandidate(label="x", max_num_seqs=32, extra_args=["--ubatch-size", "256"]))
    assert got.extra_args == ["--seed", "1", "--ubatch-size", "256"] and got.max_num_seqs == 32
    assert eng.extra_args == ["--seed", "1"] and eng.max_num_seqs == 64


def _t(label: str, tps: float | None, slo: bool | None = True, error: str | None = None) -> EngineTrial:
    return EngineTrial(candidate=EngineCandidate(label=label), output_tokens_per_s=tps, meets_slo=slo, error=error)


def test_packagers_arguments_stay_unless_beaten_by_more_than_the_noise():
    base = _t(DEFAULTS_LABEL, 100.0)
    chosen, why = choose([base, _t("a", 102.9)], min_gain=0.03)
    assert chosen.label == DEFAULTS_LABEL and "+2.9%" in why and "below the 3% a change must gain" in why
    chosen, why = choose([base, _t("a", 103.1), _t("b", 110.0)], min_gain=0.03)
    assert chosen.label == "b" and why == "b: 110.0 output tok/s against 100.0 with packager's arguments (+10.0%)"
    chosen, why = choose([_t(DEFAULTS_LABEL, 120.0), _t("a", 110.0)], min_gain=0.03)
    assert chosen.label == DEFAULTS_LABEL and why == "packager's arguments gave the most output tokens/s (120.0)"


def test_the_slo_comes_before_speed():
    # faster but missing the SLO loses to slower within it
    chosen, _ = choose([_t(DEFAULTS_LABEL, 100.0), _t("fast", 200.0, slo=False)], min_gain=0.03)
    assert chosen.label == DEFAULTS_LABEL
    # packager's missed it and one met it: that one, whatever the gain
    chosen, why = choose([_t(DEFAULTS_LABEL, 100.0, slo=False), _t("ok", 90.0)], min_gain=0.03)
    assert chosen.label == "ok" and "met the SLO" in why
    # none met it: the fastest of all, judged against packager's as usual
    chosen, _ = choose([_t(DEFAULTS_LABEL, 100.0, slo=False), _t("f", 150.0, slo=False)], min_gain=0.03)
    assert chosen.label == "f"


def test_failed_trials_are_not_chosen_and_nothing_measured_keeps_the_defaults():
    chosen, why = choose([_t(DEFAULTS_LABEL, None, error="ServerError: did not start"), _t("a", 90.0)], 0.03)
    assert chosen.label == "a" and "could not be measured" in why
    chosen, why = choose([_t("a", None, error="boom")], 0.03)
    assert chosen is None and "keeps packager's arguments" in why
    assert choose([], 0.03)[0] is None


@pytest.mark.parametrize("explicit,values,fallback,want", [
    (8.0, [1, 4, 16], 2.0, 8.0),
    (None, [1, 4, 16], 2.0, 16),
    (None, None, 2.0, 2.0),
])
def test_search_load(explicit, values, fallback, want):
    assert search_load(explicit, values, fallback) == want
