"""The importance matrix of a GGUF export (packager.gguf.imatrix) and its use by the export and the gguf stage."""
from __future__ import annotations

import shutil

import pytest

from packager.compress.gguf_stage import GgufArgs
from packager.errors import ConfigError
from packager.fsutil import write_manifest
from packager.gguf import export as ex
from packager.gguf import imatrix as im

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 4, "def add(a, b):\n    return a + b\n" * 3,
         "Extract the name: Alice Smith, 42, lives in Paris.", "1 + 2 = 3; 17 * 3 = 51; 100 / 4 = 25"]


def test_llama_names_map_to_the_converters_tensor_names():
    to_gguf = im.name_map("llama", 4)
    assert to_gguf("model.layers.0.self_attn.q_proj") == "blk.0.attn_q.weight"
    assert to_gguf("model.layers.3.self_attn.o_proj") == "blk.3.attn_output.weight"
    assert to_gguf("model.layers.2.mlp.down_proj") == "blk.2.ffn_down.weight"
    assert to_gguf("model.layers.1.mlp.gate_proj") == "blk.1.ffn_gate.weight"
    assert to_gguf("not.a.tensor") is None
    with pytest.raises(ConfigError, match="knows no architecture 'nonesuch'"):
        im.name_map("nonesuch", 4)


def _widths_of(model_dir):
    """What gguf_tensor_widths would read from the tiny Llama's GGUF, without converting it."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    to_gguf = im.name_map("llama", 4)
    widths = {to_gguf(n): m.in_features for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and "layers" in n}
    return model, widths


def test_values_are_the_mean_square_input_per_column(tiny_llama_dir, monkeypatch):
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    model, widths = _widths_of(tiny_llama_dir)
    widths["blk.1.ffn_down.weight"] += 1  # a width that does not match: left out and named
    monkeypatch.setattr(im, "gguf_tensor_widths", lambda _p: ("llama", 4, widths))
    got = im.compute_imatrix(tiny_llama_dir, TEXTS, tiny_llama_dir / "unused.gguf", seq_len=64, show_progress=False)
    assert got.record["tensors"] == 4 * 7 - 1 and got.record["skipped"] == ["model.layers.1.mlp.down_proj"]
    assert "output.weight" not in got.values and got.record["samples"] == 4
    # the same statistic, gathered independently for one Linear
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    seen = []
    h = model.get_submodule("model.layers.2.mlp.down_proj").register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1]).clone()))
    with torch.no_grad():
        for t in TEXTS:
            model(input_ids=tok(t, return_tensors="pt", truncation=True, max_length=64)["input_ids"])
    h.remove()
    x = torch.cat(seen)
    assert got.record["tokens"] == x.shape[0]
    np.testing.assert_allclose(got.values["blk.2.ffn_down.weight"], (x * x).mean(dim=0).numpy(), rtol=1e-5)
    assert got.values["blk.2.ffn_down.weight"].dtype == np.float32
    assert got.record["calibration_sha256"] == im.texts_sha256(TEXTS) != im.texts_sha256(TEXTS[:3])


def test_no_texts_are_refused(tiny_llama_dir):
    with pytest.raises(ConfigError, match="needs calibration texts"):
        im.compute_imatrix(tiny_llama_dir, [], tiny_llama_dir / "x.gguf")


def test_the_stage_asks_for_calibration_where_an_imatrix_applies():
    assert GgufArgs(quant="q4_k_m").needs_calibration() and GgufArgs(quant="q3_k_m").needs_calibration()
    assert not GgufArgs(quant="q8_0").needs_calibration() and not GgufArgs(quant="q6_k").needs_calibration()
    assert not GgufArgs(quant="q4_k_m", imatrix=False).needs_calibration()
    assert GgufArgs(quant="q5_k_m", imatrix=True).needs_calibration()


def test_real_export_with_an_importance_matrix(tiny_llama_dir, tmp_path):
    """llama.cpp quantizes with the matrix: the file differs from the plain one, the record says what was used,
    and a later export reuses it only with the same calibration texts."""
    import gguf

    src = tmp_path / "tiny"
    shutil.copytree(tiny_llama_dir, src)
    write_manifest(src, {"name": "tiny-llama", "source": "tests:tiny"})
    plain = ex.export_gguf(src, tmp_path / "plain", quants=["q4_0"], progress=False)
    lines: list[str] = []
    arts = ex.export_gguf(src, tmp_path / "im", quants=["q8_0", "q4_0"], progress=False, log=lines.append,
                          calibration_texts=TEXTS, imatrix_seq_len=64)
    q8, q4 = arts
    assert q8.record.imatrix is None  # 8 bits: no matrix (not among IMATRIX_QUANTS)
    rec = q4.record.imatrix
    assert rec is not None and rec["tensors"] == 28 and rec["skipped"] == [] and rec["samples"] == 4
    assert rec["calibration_sha256"] == im.texts_sha256(TEXTS) and rec["architecture"] == "llama"
    assert any(ln.startswith("importance matrix: 28 tensors from ") for ln in lines)
    assert q4.sha256 != plain[0].sha256
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(q4.gguf_path).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0"
    # reuse: same texts -> reused; no texts, or other texts -> exported again
    assert ex.export_gguf(src, tmp_path / "im", quants=["q4_0"], progress=False, calibration_texts=TEXTS,
                          imatrix_seq_len=64)[0].reused
    again = ex.export_gguf(src, tmp_path / "im", quants=["q4_0"], progress=False)[0]
    assert not again.reused and again.record.imatrix is None and again.sha256 == plain[0].sha256


def test_extra_buffer_types_are_off_on_a_cpu_with_amx(monkeypatch):
    """llama.cpp's AMX buffers crash quantized models on AMX CPUs: packager turns them off there, in llama-server
    (--no-repack) and in this process's llama_cpp models."""
    import llama_cpp.llama_cpp as lib

    from packager.gguf import amx as m

    amx = "processor : 0\nflags : fpu sse avx512f amx_bf16 amx_tile amx_int8 avx512_vnni\n"
    plain = "processor : 0\nflags : fpu sse avx2 avx512f avx512_vnni\n"
    assert m.cpu_has_amx(amx) and not m.cpu_has_amx(plain) and not m.cpu_has_amx("")
    assert m.extra_bufts_wanted({}, plain) and not m.extra_bufts_wanted({}, amx)
    assert m.extra_bufts_wanted({m.ENV_EXTRA_BUFTS: "1"}, amx)
    assert not m.extra_bufts_wanted({m.ENV_EXTRA_BUFTS: "0"}, plain)
    assert m.llama_server_flags({}, amx) == ["--no-repack"] and m.llama_server_flags({}, plain) == []
    assert m.llama_server_flags({m.ENV_EXTRA_BUFTS: "1"}, amx) == []
    monkeypatch.setattr(lib, "llama_model_default_params", lib.llama_model_default_params)
    monkeypatch.setenv(m.ENV_EXTRA_BUFTS, "0")
    assert m.avoid_amx_crash() is False and m.avoid_amx_crash() is False  # twice: wrapped once
    patched = lib.llama_model_default_params
    assert patched._packager_no_extra_bufts and not hasattr(patched.__wrapped__, "_packager_no_extra_bufts")
    assert patched().use_extra_bufts is False and patched.__wrapped__().use_extra_bufts is True


def test_the_export_cli_computes_a_matrix_only_for_4_bit_types(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from packager.cli.app import app

    calls: list[dict] = []

    def fake_export(path, out_dir, **kw):
        calls.append(kw)
        return []

    monkeypatch.setattr(ex, "export_gguf", fake_export)
    calib = tmp_path / "c.txt"
    calib.write_text("\n\n".join(f"Sample {i} has some words in it, enough to be kept." for i in range(20)))
    r = CliRunner().invoke(app, ["gguf", "export", "default", "-q", "q8_0", "-q", "q4_k_m", "--out",
                                 str(tmp_path / "o"), "--calibration", str(calib), "--calibration-samples", "5"])
    assert r.exit_code == 0, r.output
    texts = calls[-1]["calibration_texts"]
    assert texts and len(texts) <= 5 and all("Sample" in t for t in texts)
    assert "importance matrix for the types of 4 bits and fewer from" in r.output
    for args in (["-q", "q8_0"], ["-q", "q4_k_m", "--no-imatrix"]):
        r = CliRunner().invoke(app, ["gguf", "export", "default", *args, "--out", str(tmp_path / "o")])
        assert r.exit_code == 0, r.output
        assert calls[-1]["calibration_texts"] is None and "importance matrix" not in r.output
