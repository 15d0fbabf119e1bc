"""The release's step cache keys and files stay what existing run directories hold (a rerun must find them), and
the up-front estimate and default load test stay as they were. The pinned values were computed by the release
module before it became a package."""
from __future__ import annotations

import hashlib
import json

from packager.config import EngineConfig, EvalConfig, PricingConfig, RunConfig, SLOConfig


def test_cache_key_derivation_is_pinned():
    from packager.release import cache_key

    assert cache_key("eval", "abc", {"b": 2, "a": [1, None]}, None) == "ce9a2e0d42ce2796"
    assert cache_key("register", "sqlite:///x.db", "name", None) == "886a3a5506767891"
    assert cache_key("results", "3", "2026-01-01T00:00:00+00:00", 1767225600.5) == "5e031304bd31e4d9"
    # settings objects enter the key as their str() (json's default=str), keys sorted
    parts = ("eval", "d1", "suite-sha", EvalConfig(), EngineConfig(), SLOConfig(), PricingConfig(), 0.75)
    want = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert cache_key(*parts) == want


def test_step_cache_file_format_hit_and_miss(tmp_path):
    from packager.release import StepCache

    c = StepCache(tmp_path)
    assert c.get("evaluate", "k1") is None  # no file
    c.put("evaluate", "k1", {"score": 0.5, "l": [1, 2]})
    assert (tmp_path / "evaluate.done.json").read_text() == (
        '{\n  "key": "k1",\n  "result": {\n    "score": 0.5,\n    "l": [\n      1,\n      2\n    ]\n  }\n}')
    assert c.get("evaluate", "k1") == {"score": 0.5, "l": [1, 2]}
    assert c.get("evaluate", "k2") is None  # other inputs: a miss
    c.put("evaluate", "k2", True)
    assert c.get("evaluate", "k1") is None and c.get("evaluate", "k2") is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluate.done.json"]  # nothing left behind


def test_estimate_and_default_loadtest():
    from packager.loadtest.config import parse_loadtest_config
    from packager.release import default_loadtest, estimate_seconds
    from packager.release.estimate import evaluate_seconds, searches

    recipes = ["w8a8-int8", "gptq-w4a16", "gguf-q4_k_m", "recipes/mine.yaml", "fp8-dynamic"]
    # baseline: evaluation 20 + 430 items x 0.2 + 557 corpus answers x 0.3; a variant reads the answers (x 0.1),
    # its reading stopping once settled (gate.settle_fidelity): taken as 150 answers
    assert evaluate_seconds(RunConfig(), baseline=True) == 273 and evaluate_seconds(RunConfig(), baseline=False) == 121
    # a GGUF's answers are read by llama.cpp in-process: 0.37 s a prompt instead of vLLM's 0.1
    assert evaluate_seconds(RunConfig(), baseline=False, gguf=True) == 162
    # a reading that cannot stop reads every answer: no KL test, settling off, or no noise floor to set the limit
    for gate in ({"max_kl_vs_noise": None}, {"settle_fidelity": False}, {"noise_floor": False}):
        whole = RunConfig.model_validate({"gate": gate})
        assert evaluate_seconds(whole, baseline=False) == 162 and evaluate_seconds(whole, baseline=True) == 273
        assert evaluate_seconds(whole, baseline=False, gguf=True) == 312
    # a limit given to the evaluation itself stops it too; a corpus capped below 150 is read whole
    given = RunConfig.model_validate({"gate": {"settle_fidelity": False}, "eval": {"fidelity_stop_kl": 0.01}})
    assert evaluate_seconds(given, baseline=False) == 121
    capped = RunConfig.model_validate({"eval": {"fidelity_max_prompts": 60}})
    assert evaluate_seconds(capped, baseline=False) == round(20 + 86 + 60 * 0.1)
    # baseline: register 10 + vLLM start 110 + load test 70 + evaluation 273 + noise floor 60
    baseline = 10 + 110 + 70 + 273 + 60
    assert estimate_seconds(RunConfig(), [], 70.0) == baseline
    # each variant: compression (w8a8 330, gptq 660, gguf 70, unknown 120, fp8 30) + register 10 + start (llama.cpp
    # 15, vLLM 110) + load test 70 + evaluation; the GGUF one also its engine-argument search (180 s budget)
    variants = (330 + 10 + 110 + 70 + 121) + (660 + 10 + 110 + 70 + 121) + (70 + 10 + 180 + 15 + 70 + 162) \
        + (120 + 10 + 110 + 70 + 121) + (30 + 10 + 110 + 70 + 121)
    assert estimate_seconds(RunConfig(), recipes, 70.0) == baseline + variants
    every = RunConfig.model_validate({"engine_search": {"engines": ["llamacpp", "vllm"], "budget_s": 30,
                                                        "scope": "variant"}})
    assert estimate_seconds(every, recipes, 70.0) == baseline + variants - 180 + 30 * 6  # every one, baseline too
    # scope engine (the default): the first variant of each engine only, here the baseline (vLLM) and the GGUF
    per_engine = RunConfig.model_validate({"engine_search": {"engines": ["llamacpp", "vllm"], "budget_s": 30}})
    assert estimate_seconds(per_engine, recipes, 70.0) == baseline + variants - 180 + 30 * 2
    # a model 10x the bundled one's size: compression, the evaluation's items and answers and the noise floor
    # take 10x as long; engine starts, searches, load tests and the fixed parts do not
    ten = 10 + 110 + 70 + round(20 + 10 * (430 * 0.2 + 557 * 0.3)) + 10 * 60
    assert estimate_seconds(RunConfig(), [], 70.0, scale=10.0) == ten
    assert estimate_seconds(RunConfig(), ["w8a8-int8"], 70.0, scale=10.0) == \
        ten + 10 * 330 + 10 + 110 + 70 + (20 + 10 * 101)
    two_gguf = ["gguf-q8_0", "w8a8-int8", "gguf-q4_k_m"]
    assert searches(RunConfig(), [None, *two_gguf]) == [False, True, False, False]
    assert searches(every, [None, *two_gguf]) == [True] * 4
    off = RunConfig.model_validate({"engine_search": {"enabled": False}})
    assert estimate_seconds(off, recipes, 70.0) == baseline + variants - 180
    no_floor = RunConfig.model_validate({"gate": {"noise_floor": False}, "engine_search": {"enabled": False}})
    # and without a noise floor every variant reads the whole corpus: 41 s more through vLLM, 150 s through llama.cpp
    assert estimate_seconds(no_floor, recipes, 70.0) == baseline + variants - 180 - 60 + 4 * 41 + 150
    assert estimate_seconds(no_floor, [], 70.0) == baseline - 60
    small = RunConfig.model_validate({"eval": {"max_items": 30, "fidelity_max_prompts": 48}})
    assert evaluate_seconds(small, baseline=True) == round(20 + 30 * 0.2 + 48 * 0.3)
    no_corpus = RunConfig.model_validate({"eval": {"fidelity_corpus": None}})
    assert evaluate_seconds(no_corpus, baseline=True) == evaluate_seconds(no_corpus, baseline=False) == 106
    lt = parse_loadtest_config(default_loadtest(), "loadtest")
    assert lt.profile.kind == "sweep" and list(lt.profile.values) == [1, 4, 16]
    assert lt.profile.planned_dispatch_s() == 60 and lt.max_duration_s == 120 and lt.max_requests == 5000
    # then the capacity search between the steps: at most 5 probes of 10 s, placed by the SLO ratios
    assert lt.knee.enabled and (lt.knee.probe_duration_s, lt.knee.budget_s, lt.knee.max_probes) == (10, 50, 5)
    assert lt.knee.guided
    # output lengths that let users drift out of lockstep (bench_lockstep); no warm-up (see default_loadtest)
    out = lt.prompts.output_tokens
    assert (out.dist, out.min, out.max) == ("uniform", 32, 96) and lt.warmup_s == 0


def test_reexported_names():
    import packager.release as release

    for name in ("run_release", "check_expected_load", "default_loadtest", "estimate_seconds", "load_summary_from",
                 "cache_key", "StepCache", "console", "BASELINE", "Variant", "ReleaseRunner"):
        assert hasattr(release, name), name
    assert release.BASELINE == "baseline"


def test_importing_the_release_loads_no_heavy_library():
    import subprocess
    import sys

    heavy = ["torch", "vllm", "bentoml", "mlflow", "locust", "transformers", "gptqmodel", "gevent"]
    code = ("import sys, json, packager.release, packager.release.steps, packager.release.runner; "
            f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_default_release_fits_its_own_budget_on_each_target():
    """With no recipes given a release takes its target's defaults, and its up-front estimate on 2 cores (with the
    release's own default load test) is within the default time budget, so a default release skips no variant."""
    from packager.config import DEFAULT_RECIPES
    from packager.loadtest.config import parse_loadtest_config
    from packager.release import default_loadtest, estimate_seconds
    from packager.release.estimate import loadtest_seconds

    lt_s = loadtest_seconds(parse_loadtest_config(default_loadtest(), "loadtest"))
    assert lt_s == 60 + 10 + 50 + 5 * 5  # the sweep's dispatch, drained, and the capacity search's budget
    for target in ("cpu", "gpu"):
        cfg = RunConfig.model_validate({"engine": {"target": target}})
        assert cfg.recipes == list(DEFAULT_RECIPES[target])
        assert estimate_seconds(cfg, cfg.recipes, lt_s) <= cfg.time_budget_s, target
    assert not any(r.startswith("gguf") for r in DEFAULT_RECIPES["gpu"])  # llama.cpp serves on CPUs only
    assert RunConfig.model_validate({"recipes": []}).recipes == []  # recipes given, even none, are kept
    assert RunConfig.model_validate({"engine": {"target": "gpu"}, "recipes": ["fp8"]}).recipes == ["fp8"]


def test_compress_estimate_by_recipe_kind():
    """Each built-in recipe's compress stage is budgeted by its own kind: AWQ by its measured time, not the
    120 s of an unknown kind nor GPTQ's."""
    from packager.release.estimate import _compress_seconds

    assert _compress_seconds("awq-w4a16") == 450.0
    assert _compress_seconds("gptq-w4a16") == 660.0
    assert _compress_seconds("w8a8-int8") == 330.0
    assert _compress_seconds("my-own") == 120.0


def test_model_scale_is_the_parameter_ratio_to_the_bundled_model(tmp_path):
    """The estimate's size factor: parameters read from a checkpoint's safetensors headers against the bundled
    model's 134,515,008; 1 for the bundled model, a reference not on disk, or unreadable headers."""
    import torch
    from safetensors.torch import save_file

    from packager.release.estimate import model_scale

    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    save_file({"a.weight": torch.zeros(1000, 1000), "b.weight": torch.zeros(500)}, str(d / "model.safetensors"))
    assert model_scale(str(d)) == 1_000_500 / 134_515_008
    assert model_scale("default") == 1.0 and model_scale(str(tmp_path / "missing")) == 1.0
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"\xff" * 16)  # no header to read
    assert model_scale(str(broken)) == 1.0
