"""GGUF export: refusals before any work, and a real export of the tiny random Llama (llama.cpp's converter and
llama_model_quantize, about 10 s)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from packager.errors import ConfigError, IntegrityError
from packager.fsutil import sha256_file, verify_manifest, write_manifest
from packager.gguf import export as ex
from packager.gguf.artifact import EXPORT_RECORD_NAME, GGUF_FILE, MODELFILE, is_gguf_artifact, read_export_record

needs_llama_cpp = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed (make install)")


def _no_work(*_a, **_k):
    raise AssertionError("the export started converting although it should have refused first")


def _stage(root: Path, label: str, input_dir: Path, quantized: str | None = None) -> Path:
    """A fake stage directory: config.json (quantized or not), a weight file, stage.json pointing at its input."""
    d = root / label
    d.mkdir(parents=True)
    cfg = {"model_type": "llama"}
    if quantized:
        cfg["quantization_config"] = {"quant_method": quantized}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes(b"\0" * 16)
    (d / "stage.json").write_text(json.dumps({"label": label, "method": label.split("-", 1)[1],
                                              "input_dir": str(input_dir), "digest": "d" * 64}))
    return d


def test_a_quantized_stage_is_refused_naming_its_float_input(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "convert_to_gguf", _no_work)
    src = tmp_path / "source"
    src.mkdir()
    (src / "config.json").write_text("{}")
    pruned = _stage(tmp_path / "run", "01-prune", src)
    w8a8 = _stage(tmp_path / "run", "02-w8a8_int8", pruned, quantized="compressed-tensors")
    with pytest.raises(ConfigError) as e:
        ex.export_gguf(w8a8, tmp_path / "out", quants=["q8_0"])
    msg = str(e.value)
    assert "quant_method 'compressed-tensors'" in msg and f"packager gguf export {pruned}" in msg
    assert not (tmp_path / "out").exists()


def test_a_quantized_checkpoint_without_lineage_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "convert_to_gguf", _no_work)
    (tmp_path / "gptq").mkdir()
    (tmp_path / "gptq" / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(ConfigError, match=r"quant_method 'gptq'.*Export the float model it was quantized from"):
        ex.export_gguf(tmp_path / "gptq", tmp_path / "out")


def test_unknown_quant_type_is_refused_before_any_work(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "convert_to_gguf", _no_work)
    with pytest.raises(ConfigError, match="Unknown GGUF quantization type 'q3'"):
        ex.export_gguf(tiny_llama_dir, tmp_path / "out", quants=["q8_0", "q3"])


def test_missing_converter_names_the_make_target(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "convert_to_gguf", _no_work)
    monkeypatch.setenv(ex.ENV_LLAMA_CPP_DIR, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"lacks convert_hf_to_gguf.py, gguf-py, conversion\. Run `make install`"):
        ex.export_gguf(tiny_llama_dir, tmp_path / "out", quants=["q8_0"])


def test_output_inside_the_variant_and_a_directory_without_config_are_refused(tiny_llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="inside the variant"):
        ex.export_gguf(tiny_llama_dir, tiny_llama_dir / "gguf")
    with pytest.raises(ConfigError, match="has no config.json"):
        ex.export_gguf(tmp_path, tmp_path.parent / "out")


def test_an_altered_source_is_refused(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "convert_to_gguf", _no_work)
    src = tmp_path / "src"
    shutil.copytree(tiny_llama_dir, src)
    write_manifest(src)
    (src / "config.json").write_text((src / "config.json").read_text() + " ")
    with pytest.raises(IntegrityError, match="sha256 mismatch: config.json"):
        ex.export_gguf(src, tmp_path / "out")


def test_lineage_follows_stage_records_to_the_source(tmp_path):
    src = tmp_path / "source"
    src.mkdir()
    a = _stage(tmp_path / "run", "01-prune", src)
    b = _stage(tmp_path / "run", "02-distill", a)
    records, dirs = ex.lineage_of(b)
    assert [r["label"] for r in records] == ["01-prune", "02-distill"] and dirs == [a, b]
    assert ex.lineage_of(src) == ([], [])
    assert ex.float_ancestor(b) == a


@needs_llama_cpp
def test_real_export_of_the_tiny_llama(tiny_llama_dir, tmp_path):
    """Both steps for real; the artifact is complete, hashed, recorded, and readable as GGUF."""
    import gguf

    src = tmp_path / "tiny"
    shutil.copytree(tiny_llama_dir, src)
    write_manifest(src, {"name": "tiny-llama", "source": "tests:tiny"})
    out = tmp_path / "gguf"
    arts = ex.export_gguf(src, out, quants=["q8_0", "q4_0"], progress=False)
    assert [a.quant for a in arts] == ["q8_0", "q4_0"] and not any(a.reused for a in arts)
    assert sorted(p.name for p in out.iterdir()) == ["q4_0", "q8_0"]  # no work folder left behind
    a = arts[0]
    d = Path(a.path)
    assert is_gguf_artifact(d)
    assert sorted(p.name for p in d.iterdir()) == sorted([GGUF_FILE, MODELFILE, EXPORT_RECORD_NAME, "config.json",
                                                          "packager-manifest.json"])
    manifest = verify_manifest(d)
    assert manifest["digest"] == a.digest and manifest["format"] == "gguf" and manifest["quant"] == "q8_0"
    assert manifest["name"] == "tiny-llama-q8_0" and manifest["source"] == "tests:tiny"
    rec = read_export_record(d)
    assert rec["sha256"] == sha256_file(d / GGUF_FILE) == a.sha256
    assert rec["size_bytes"] == (d / GGUF_FILE).stat().st_size
    assert rec["source_digest"] == ex._source_identity(src)[1] and rec["ftype"] == 7
    assert rec["intermediate_outtype"] == "f32" and rec["versions"]["llama_cpp_python"] == "0.3.36"
    assert rec["chat_template"]["style"] == "chatml" and rec["lineage"] == []
    assert rec["convert_wall_time_s"] > 0 and rec["quantize_wall_time_s"] > 0
    assert "TEMPLATE" in (d / MODELFILE).read_text()
    # what llama.cpp wrote: a llama GGUF of the requested type with the chat template and the right shapes
    reader = gguf.GGUFReader(str(d / GGUF_FILE))
    fields = {k: v for k, v in reader.fields.items()}
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert int(fields["general.file_type"].parts[-1][0]) == 7
    assert "<|im_start|>" in bytes(fields["tokenizer.chat_template"].parts[-1]).decode()
    assert int(fields["llama.block_count"].parts[-1][0]) == 4
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0"
    q4 = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out / "q4_0" / GGUF_FILE)).tensors}
    assert q4["blk.0.attn_q.weight"] == "Q4_0"
    # the record counts the matrices per stored type: every 2-D tensor of the file, once
    matrices = [t for t in reader.tensors if len(t.shape) >= 2]
    assert sum(rec["tensor_types"].values()) == len(matrices) and rec["tensor_types"]["Q8_0"] >= 1

    # the same export again reuses the verified artifacts (no conversion); a damaged one is not reused
    again = ex.export_gguf(src, out, quants=["q8_0"], progress=False)
    assert again[0].reused and again[0].sha256 == a.sha256
    (out / "q4_0" / MODELFILE).write_text("FROM ./other.gguf\n")
    args = (rec["source_digest"], "q4_0", rec["converter"], "f32", "0.3.36")
    assert ex._reusable(out / "q4_0", *args) is None and ex._reusable(out / "q8_0", *args[:1], "q8_0", *args[2:])


def test_a_k_quant_export_that_fell_back_to_legacy_types_says_so():
    """Rows not a multiple of 256 columns cannot take K-quants: llama.cpp stores them in legacy types, which the
    export's log names (the bundled model's Q4_K_M: 166 Q5_0 and 15 Q8_0 matrices besides 16 Q4_K, 14 Q6_K)."""
    from packager.gguf.quant import QUANT_TYPES, k_quant_fallback

    q4km, q8 = QUANT_TYPES.get("q4_k_m"), QUANT_TYPES.get("q8_0")
    counts = {"Q5_0": 166, "Q4_K": 16, "Q8_0": 15, "Q6_K": 14, "F32": 1}
    msg = k_quant_fallback(q4km, counts)
    assert msg is not None and msg.startswith("gguf q4_k_m: 181 of its 211 quantized matrices are stored in legacy "
                                              "types (166 Q5_0, 15 Q8_0)")
    assert k_quant_fallback(q4km, {"Q4_K": 180, "Q6_K": 30, "F32": 1}) is None  # rows of 4096: no fallback
    assert k_quant_fallback(q8, {"Q8_0": 210}) is None  # a legacy type asked for
