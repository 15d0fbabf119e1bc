"""Distillation on tiny random Llamas: the teacher is the 4-layer fixture, the student a depth-pruned copy."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

import packager.compress.distill as distill
from packager.compress.base import METHODS, StageContext
from packager.compress.distill import (
    CHECKPOINT_DIR,
    DistillArgs,
    apply_distill,
    batch_indices,
    distill_loss,
    lr_at,
    split_texts,
)
from packager.compress.prune import PruneArgs, apply_prune
from packager.errors import ConfigError

FAST = {"seq_len": 32, "batch_size": 4, "lr": 3e-4, "warmup_steps": 2, "eval_chunks": 4}


@pytest.fixture(scope="module")
def texts():
    from packager.evaluate.corpus import split_corpus

    return split_corpus()[0][:16]


@pytest.fixture(scope="module")
def student_dir(tiny_llama_dir, tmp_path_factory):
    """The teacher with its layer 2 removed."""
    out = tmp_path_factory.mktemp("student")
    apply_prune(PruneArgs(layers_to_remove=[2]), StageContext(tiny_llama_dir, out, show_progress=False,
                                                              log=lambda m: None))
    return out


def _run(student: Path, teacher_dir: Path, out: Path, work: Path | None, texts, **kw):
    out.mkdir(parents=True, exist_ok=True)
    args = DistillArgs(**{**FAST, **kw})
    return apply_distill(args, StageContext(student, out, calibration_texts=list(texts), teacher_dir=teacher_dir,
                                            work_dir=work, show_progress=False, log=lambda m: None))


def _weights(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("bf16_autocast", [False, True])
def test_distillation_lowers_heldout_kl(student_dir, tiny_llama_dir, tmp_path, texts, bf16_autocast):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    r = _run(student_dir, tiny_llama_dir, out, tmp_path / "work", texts, steps=24, eval_every=8,
             bf16_autocast=bf16_autocast)
    assert r["bf16_autocast"] is bf16_autocast
    assert r["heldout_kl_after_nats"] < r["heldout_kl_before_nats"]
    assert r["heldout_kl_after_nats"] < 0.8 * r["heldout_kl_before_nats"]
    assert r["steps"] == 24 and r["steps_this_run"] == 24 and r["resumed_from_step"] is None
    assert r["tokens_seen"] == 24 * 4 * 32
    assert r["stopped_because"] == "steps"
    assert [p["step"] for p in r["loss_curve"]] == [8, 16, 24]
    assert r["loss_curve"][-1]["heldout_kl_nats"] == pytest.approx(r["heldout_kl_after_nats"], abs=1e-6)
    assert r["heldout_chunks"] == 4 and r["heldout_texts"] == 2  # round(16 * 0.1) texts held out
    json.dumps(r)  # JSON-able
    # a complete, loadable model directory with the student's shape and the tokenizer
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3
    assert (out / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    before = _weights(student_dir)
    after = _weights(out)
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied


def test_resume_continues_at_the_saved_step_and_matches_an_uninterrupted_run(
        student_dir, tiny_llama_dir, tmp_path, texts, monkeypatch):
    import torch

    kw = {"steps": 8, "checkpoint_every": 4, "eval_every": 4}
    straight = _run(student_dir, tiny_llama_dir, tmp_path / "a", tmp_path / "work-a", texts, **kw)

    real_step = distill._train_step
    calls = {"n": 0}

    def crash_on_sixth(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(distill, "_train_step", crash_on_sixth)
    work = tmp_path / "work-b"
    with pytest.raises(KeyboardInterrupt):
        _run(student_dir, tiny_llama_dir, tmp_path / "b0", work, texts, **kw)
    state = json.loads((work / CHECKPOINT_DIR / "state.json").read_text())
    assert state["step"] == 4
    assert not list(work.glob(".*partial"))  # no half-written checkpoint left behind
    monkeypatch.setattr(distill, "_train_step", real_step)

    resumed = _run(student_dir, tiny_llama_dir, tmp_path / "b", work, texts, **kw)
    assert resumed["resumed_from_step"] == 4
    assert resumed["steps"] == 8 and resumed["steps_this_run"] == 4
    assert resumed["tokens_seen"] == straight["tokens_seen"]
    assert resumed["heldout_kl_before_nats"] == straight["heldout_kl_before_nats"]
    assert [p["step"] for p in resumed["loss_curve"]] == [4, 8]
    assert resumed["heldout_kl_after_nats"] == pytest.approx(straight["heldout_kl_after_nats"], rel=1e-4)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)

    # a finished run found again: nothing left to train, the same model comes out
    again = _run(student_dir, tiny_llama_dir, tmp_path / "c", work, texts, **kw)
    assert again["resumed_from_step"] == 8 and again["steps_this_run"] == 0
    # more steps asked of the same run: it continues from step 8
    more = _run(student_dir, tiny_llama_dir, tmp_path / "d", work, texts, **{**kw, "steps": 10})
    assert more["resumed_from_step"] == 8 and more["steps_this_run"] == 2 and more["steps"] == 10


def test_checkpoint_of_another_run_is_ignored(student_dir, tiny_llama_dir, tmp_path, texts):
    work = tmp_path / "work"
    _run(student_dir, tiny_llama_dir, tmp_path / "a", work, texts, steps=3, checkpoint_every=3)
    other = _run(student_dir, tiny_llama_dir, tmp_path / "b", work, texts, steps=3, checkpoint_every=3, seed=1)
    assert other["resumed_from_step"] is None and other["steps_this_run"] == 3


def test_time_budget_stops_training_and_still_writes_the_model(student_dir, tiny_llama_dir, tmp_path, texts,
                                                                monkeypatch):
    clock = {"t": 1000.0}

    def fake_monotonic():
        clock["t"] += 10.0  # every reading of the clock is 10 s later
        return clock["t"]

    monkeypatch.setattr(distill, "_now", fake_monotonic)
    r = _run(student_dir, tiny_llama_dir, tmp_path / "out", tmp_path / "work", texts, steps=50, max_minutes=1.0)
    assert r["stopped_because"] == "time budget"
    assert 0 < r["steps"] < 50
    assert (tmp_path / "out" / "model.safetensors").is_file()
    state = json.loads((tmp_path / "work" / CHECKPOINT_DIR / "state.json").read_text())
    assert state["step"] == r["steps"]  # the stopped run is resumable


def test_teacher_is_required_and_must_share_the_vocabulary(student_dir, tiny_llama_dir, tmp_path, texts):
    with pytest.raises(ConfigError, match="needs a teacher"):
        apply_distill(DistillArgs(**FAST), StageContext(student_dir, tmp_path / "o", calibration_texts=texts,
                                                        show_progress=False, log=lambda m: None))
    other = tmp_path / "teacher"
    shutil.copytree(tiny_llama_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["vocab_size"] = 32000
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="vocabularies differ"):
        _run(student_dir, other, tmp_path / "o", None, texts)
    with pytest.raises(ConfigError, match="not a transformers model directory"):
        _run(student_dir, tiny_llama_dir, tmp_path / "o", None, texts, teacher=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="calibration texts"):
        _run(student_dir, tiny_llama_dir, tmp_path / "o", None, [])


def test_args_validate_and_round_trip():
    a = DistillArgs(steps=100, lr=5e-5, temperature=1.5, alpha=0.2, max_minutes=4)
    assert DistillArgs.model_validate(a.model_dump()) == a
    assert DistillArgs.requires_calibration_data is True
    assert METHODS.get("distill") is apply_distill
    for bad in ({"steps": 0}, {"lr": 0}, {"temperature": 0}, {"alpha": 1.5}, {"alpha": -0.1},
                {"steps": 10, "warmup_steps": 10}, {"max_minutes": 0}, {"holdout_fraction": 1.0},
                {"unknown": 1}, {"kind": "prune"}):
        with pytest.raises(ValidationError):
            DistillArgs(**bad)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    a = DistillArgs(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, a) == pytest.approx(1e-4)
    assert lr_at(9, a) == pytest.approx(1e-3)
    assert lr_at(10, a) == pytest.approx(1e-3)
    assert lr_at(55, a) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(100, a) == pytest.approx(1e-4)
    lrs = [lr_at(s, a) for s in range(10, 101)]
    assert all(x >= y for x, y in zip(lrs, lrs[1:]))


def test_batches_are_a_pure_function_of_the_step():
    n, bs = 10, 4
    steps = [batch_indices(s, n, bs, seed=0) for s in range(5)]  # 20 draws = two epochs
    flat = [i for b in steps for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert steps == [batch_indices(s, n, bs, seed=0) for s in range(5)]
    assert steps != [batch_indices(s, n, bs, seed=1) for s in range(5)]


def test_split_texts_is_deterministic_and_disjoint():
    texts = [f"text number {i} " * 20 for i in range(20)]
    train, held = split_texts(texts, 0.1)
    assert len(held) == 2 and len(train) == 18 and not set(train) & set(held)
    assert split_texts(list(reversed(texts)), 0.1)[1] == sorted(held, key=texts.index, reverse=True)
    one_train, one_held = split_texts(["line\n" * 100], 0.2)
    assert one_train[0] + one_held[0] == "line\n" * 100 and 0 < len(one_held[0]) < 30 * 5


def test_distill_loss_is_zero_for_identical_logits_and_scales_with_t_squared():
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    t = torch.randn(2, 5, 11)
    s = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    total, kd, ce = distill_loss(t.clone(), t, ids, 2.0, 0.0)
    assert float(kd) == pytest.approx(0.0, abs=1e-6) and float(total) == pytest.approx(0.0, abs=1e-6)
    T = 3.0
    _, kd, _ = distill_loss(s, t, ids, T, 0.0)
    pt = F.softmax(t / T, -1)
    manual = (pt * (pt.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert float(kd) == pytest.approx(float(manual), rel=1e-5)
    total, kd, ce = distill_loss(s, t, ids, 1.0, 0.25)
    manual_ce = F.cross_entropy(s[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    assert float(ce) == pytest.approx(float(manual_ce), rel=1e-5)
    assert float(total) == pytest.approx(0.75 * float(kd) + 0.25 * float(ce), rel=1e-5)


def test_validate_for_checks_teacher_and_student_configs(tiny_llama_dir, tmp_path):
    other = tmp_path / "teacher"
    other.mkdir()
    cfg = json.loads((tiny_llama_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "vocab_size": 32000}))
    DistillArgs().validate_for(tiny_llama_dir)
    DistillArgs(teacher=str(tiny_llama_dir)).validate_for(tiny_llama_dir)
    with pytest.raises(ConfigError, match="vocabularies differ"):
        DistillArgs(teacher=str(other)).validate_for(tiny_llama_dir)
    quant = tmp_path / "quant"
    quant.mkdir()
    (quant / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(ConfigError, match="quantized"):
        DistillArgs().validate_for(quant)


def test_autocast_default_follows_the_hardware(monkeypatch):
    from packager import hardware

    assert distill.default_autocast("cuda") and distill.default_autocast("cuda:1")
    base = hardware.CPUInfo(model="x", arch="x86_64", logical_cores=2, usable_cores=2)
    monkeypatch.setattr(hardware, "detect_cpu", lambda: base)
    assert distill.default_autocast("cpu") is False
    monkeypatch.setattr(hardware, "detect_cpu", lambda: hardware.CPUInfo("x", "x86_64", 2, 2, ["avx512_bf16"]))
    assert distill.default_autocast("cpu") is True
