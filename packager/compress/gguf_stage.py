"""Recipe stage `gguf`: export the previous stage (a float checkpoint) to a llama.cpp GGUF of one type.

    stages:
      - kind: prune_depth ...
      - kind: gguf
        quant: q4_k_m        # any of `packager gguf types`

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

from pydantic import field_validator

from packager.compress.base import METHODS, StageArgs, StageContext


class GgufArgs(StageArgs):
    kind: Literal["gguf"] = "gguf"
    quant: str = "q4_k_m"
    quantizes: ClassVar[bool] = True  # no stage reads a GGUF: it comes last

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
    arts = export_gguf(ctx.input_dir, work, [args.quant], progress=ctx.show_progress, log=ctx.log, force=True)
    art = Path(arts[0].path)
    for f in art.iterdir():
        if f.is_file() and f.name != MANIFEST_NAME:  # the recipe runner writes the stage's own manifest
            shutil.copy2(f, ctx.output_dir / f.name)
    shutil.rmtree(work, ignore_errors=True)
    rec = arts[0].record
    return {"quant": rec.quant, "gguf_sha256": rec.sha256, "gguf_size_bytes": rec.size_bytes,
            "intermediate_outtype": rec.intermediate_outtype, "convert_wall_time_s": rec.convert_wall_time_s,
            "quantize_wall_time_s": rec.quantize_wall_time_s, "llama_cpp": rec.versions.get("llama_cpp_python")}
