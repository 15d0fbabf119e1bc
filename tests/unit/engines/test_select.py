"""packager.engines.select: the one place that decides which engine serves an artifact and what it can do."""
from __future__ import annotations

import pytest

from packager.config import EngineConfig, RunConfig
from packager.engines.select import (ENGINES, LLAMACPP, VLLM, capabilities, check_target, engine_for, engine_label,
                                     evaluation_config, is_gguf, select_engine)
from packager.errors import ConfigError


def _gguf(tmp_path):
    d = tmp_path / "q4"
    d.mkdir()
    (d / "model.gguf").write_bytes(b"GGUF")
    return d


def test_the_artifact_decides_the_engine(tmp_path):
    st = tmp_path / "st"
    st.mkdir()
    assert (engine_for(_gguf(tmp_path)), engine_for(st), engine_for(None)) == (LLAMACPP, VLLM, VLLM)
    assert is_gguf(tmp_path / "q4") and not is_gguf(st) and not is_gguf(None)


def test_select_overrides_the_configured_backend_for_gguf_and_says_so(tmp_path):
    said: list[str] = []
    eng = select_engine(_gguf(tmp_path), EngineConfig(backend="vllm", max_model_len=777), log=said.append)
    assert eng.backend == LLAMACPP and eng.max_model_len == 777  # every other setting kept
    assert len(said) == 1 and "is a GGUF artifact: serving it with backend llamacpp" in said[0]
    same = EngineConfig(backend="llamacpp")
    assert select_engine(tmp_path / "q4", same, log=said.append) is same and len(said) == 1  # nothing to say


def test_llamacpp_without_a_gguf_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ConfigError) as e:
        select_engine(tmp_path, EngineConfig(backend="llamacpp"))
    assert f"{tmp_path} has no model.gguf" in str(e.value)
    assert f"packager gguf export {tmp_path} --quant q8_0 --out DIR" in str(e.value) and "backend vllm" in str(e.value)


def test_capabilities_and_labels():
    assert capabilities(VLLM).prompt_logprobs and not capabilities(LLAMACPP).prompt_logprobs
    assert capabilities(LLAMACPP).targets == ("cpu",) and "gpu" in capabilities(VLLM).targets
    assert (engine_label("vllm"), engine_label("llamacpp"), engine_label("other")) == ("vLLM", "llama.cpp", "other")
    with pytest.raises(ConfigError, match="unknown engine 'tgi'; known engines: vllm, llamacpp"):
        capabilities("tgi")
    # the backends the config accepts are exactly the engines known here
    assert set(EngineConfig.model_fields["backend"].annotation.__args__) == set(ENGINES)


def test_targets():
    check_target(LLAMACPP, "cpu")
    check_target(VLLM, "gpu")
    with pytest.raises(ValueError, match=r"backend llamacpp runs on target cpu only \(got target=gpu\); serve GPU "
                                         r"variants with backend vllm"):
        check_target(LLAMACPP, "gpu")


def test_evaluation_without_prompt_logprobs_skips_perplexity_and_says_why():
    cfg = RunConfig()
    assert evaluation_config(VLLM, cfg) == (cfg, [])
    run_cfg, notes = evaluation_config(LLAMACPP, cfg)
    assert run_cfg.eval.perplexity is False and cfg.eval.perplexity is True  # the caller's config is untouched
    # the KL is read from the GGUF in-process, so the corpus it is measured along stays
    assert run_cfg.eval.fidelity_corpus == cfg.eval.fidelity_corpus == "default"
    changed = {"perplexity", "concurrency", "reference_concurrency"}
    assert run_cfg.eval.model_dump(exclude=changed) == cfg.eval.model_dump(exclude=changed)
    assert notes[:2] == list(ENGINES[LLAMACPP].eval_notes)
    assert notes[0] == "perplexity: not measured: llama.cpp's server (llama-server) returns no prompt logprobs"
    assert "read from the same GGUF by llama.cpp in the evaluating process" in notes[1]


def test_llamacpp_answers_one_request_at_a_time_unless_told_otherwise():
    """llama-server's greedy answers depend on which requests decode together: evaluated one at a time by
    default, so that a rerun scores the same; eval.reproducible false keeps eval.concurrency."""
    cfg = RunConfig()
    run_cfg, notes = evaluation_config(LLAMACPP, cfg)
    assert cfg.eval.concurrency == 8 and run_cfg.eval.concurrency == 1
    assert cfg.eval.reference_concurrency == 32 and run_cfg.eval.reference_concurrency == 1  # its answers too
    assert notes[-1].startswith("answers: 1 request(s) at a time, not eval.concurrency 8")
    fast = RunConfig.model_validate({"eval": {"reproducible": False}})
    run_fast, notes_fast = evaluation_config(LLAMACPP, fast)
    assert run_fast.eval.concurrency == 8 and run_fast.eval.reference_concurrency == 32 and notes_fast == list(ENGINES[LLAMACPP].eval_notes)
    one = RunConfig.model_validate({"eval": {"concurrency": 1}})
    assert evaluation_config(LLAMACPP, one)[0].eval.concurrency == 1 and len(evaluation_config(LLAMACPP, one)[1]) == 2
    assert evaluation_config(VLLM, cfg)[0].eval.concurrency == 8  # vLLM's answers repeat at any concurrency


def test_an_engine_without_logprobs_or_local_reader_drops_the_fidelity_corpus(monkeypatch):
    import dataclasses

    import packager.engines.select as sel

    bare = dataclasses.replace(ENGINES[LLAMACPP], local_topk=False)
    monkeypatch.setitem(sel.ENGINES, LLAMACPP, bare)
    run_cfg, _ = evaluation_config(LLAMACPP, RunConfig())
    assert run_cfg.eval.fidelity_corpus is None and run_cfg.eval.perplexity is False


def test_local_topk_is_a_lazy_gguf_reader_for_gguf_artifacts_only(tmp_path):
    from packager.engines.select import local_topk
    from packager.gguf.topk import GgufTopk

    assert local_topk(None, EngineConfig()) is None
    assert local_topk(tmp_path, EngineConfig()) is None  # safetensors (no model.gguf): vLLM's logprobs serve
    (tmp_path / "model.gguf").write_bytes(b"GGUF not a model")  # never read: the reader loads on first use
    reader = local_topk(tmp_path, EngineConfig(max_model_len=1024))
    assert isinstance(reader, GgufTopk) and reader.n_ctx == 1024 and reader._llm is None
    assert reader.path == tmp_path / "model.gguf"
