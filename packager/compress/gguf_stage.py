"""Recipe stage `gguf`: export the previous stage (a float checkpoint) to a llama.cpp GGUF of one type.

    stages:
      - kind: prune_depth ...
      - kind: gguf
        quant: q4_k_m        # any of `packager gguf types`
        imatrix: null        # null: an importance matrix for Q4_K_M and lower, as llama.cpp advises; true / false
        n_samples: 128       # calibration samples for the importance matrix (the recipe's --calibration)

The stage's directory is a GGUF artifact (model.gguf, Modelfile for Ollama, the export record, config.json
and the tokenizer files): `packager build` serves it with the bento's llama.cpp backend, `packager evaluate`
scores it through llama.cpp, and `packager release` load-tests it beside the vLLM variants, so the report can
show where each engine leads. It reads a float checkpoint only, so it comes last (like quantization), and a
GPTQ / W8A8 input is refused before any work, naming the float stage to export instead.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from packager.compress.base import METHODS, StageArgs, StageContext


class GgufArgs(StageArgs):
    kind: Literal["gguf"] = "gguf"
    quant: str = "q4_k_m"
    imatrix: bool | None = Field(None, description="quantize with an importance matrix computed on the calibration "
                                 "data (packager.gguf.imatrix); null: for Q4_K_M and lower, as llama.cpp advises")
    n_samples: int = Field(128, ge=1, le=4096, description="calibration samples for the importance matrix")
    seq_len: int = Field(512, ge=16, le=32768, description="tokens per calibration sample")
    quantizes: ClassVar[bool] = True  # no stage reads a GGUF: it comes last

    def needs_calibration(self) -> bool:
        from packager.gguf.imatrix import IMATRIX_QUANTS

        return self.quant in IMATRIX_QUANTS if self.imatrix is None else self.imatrix

    @field_validator("quant")
    @classmethod
    def _known(cls, v: str) -> str:
        from packager.gguf.quant import parse_quants

        return parse_quants([v])[0].name

    def validate_for(self, model_dir: Path) -> None:
        from packager.gguf.export import check_float_source, llama_cpp_tools_dir

        check_float_source(Path(model_dir))
        llama_cpp_tools_dir()  # llama.cpp's converter installed (a clear error naming the make target if not)


@METHODS.register("gguf")
def apply_gguf(args: GgufArgs, ctx: StageContext) -> dict:
    from packager.fsutil import MANIFEST_NAME
    from packager.gguf.export import export_gguf

    work = (ctx.work_dir or ctx.output_dir.parent) / "gguf-export"
    texts = ctx.calibration_texts[: args.n_samples] if args.needs_calibration() else None
    if args.needs_calibration() and not texts:
        from packager.errors import ConfigError

        raise ConfigError("The gguf stage's importance matrix needs calibration texts, and none were given.")
    arts = export_gguf(ctx.input_dir, work, [args.quant], progress=ctx.show_progress, log=ctx.log, force=True,
                       calibration_texts=texts, imatrix_seq_len=args.seq_len, imatrix_types=[args.quant])
    art = Path(arts[0].path)
    for f in art.iterdir():
        if f.is_file() and f.name != MANIFEST_NAME:  # the recipe runner writes the stage's own manifest
            shutil.copy2(f, ctx.output_dir / f.name)
    shutil.rmtree(work, ignore_errors=True)
    rec = arts[0].record
    return {"quant": rec.quant, "gguf_sha256": rec.sha256, "gguf_size_bytes": rec.size_bytes,
            "intermediate_outtype": rec.intermediate_outtype, "convert_wall_time_s": rec.convert_wall_time_s,
            "quantize_wall_time_s": rec.quantize_wall_time_s, "llama_cpp": rec.versions.get("llama_cpp_python"),
            "imatrix": rec.imatrix, "tensor_types": rec.tensor_types}
