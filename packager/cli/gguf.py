"""`packager gguf export` (and `packager gguf types`): the `gguf_app` command group, added to the top-level
`packager` command by packager.cli.app. Heavy libraries are imported inside the commands."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, cast

import typer

from packager.cli.guard import run_guarded

gguf_app = typer.Typer(no_args_is_help=True, help="GGUF export for llama.cpp and Ollama.")


def artifacts_table(arts: list):
    """`packager gguf export`'s table: type, size, sha256 prefix, directory, reused or new, per artifact."""
    from rich.table import Table

    t = Table(title="GGUF artifacts")
    for c in ("type", "size (MB)", "sha256", "directory", ""):
        t.add_column(c, no_wrap=False, overflow="fold")  # fold, never "…"
    for a in arts:
        t.add_row(a.quant, f"{a.size_bytes / 1e6:.1f}", a.sha256[:16], a.path, "reused" if a.reused else "new")
    return t


@gguf_app.command("export")
def export(
    variant_dir: str = typer.Argument(..., help="float model variant directory (a compress stage, or 'default' for the "
                                      "bundled model)"),
    quant: List[str] = typer.Option(["q8_0", "q4_k_m"], "--quant", "-q", help="quantization type, repeatable (see "
                                    "`packager gguf types`)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder; each type goes to OUT/<type>/ "
                                       "(default: runs/gguf/<model name>)"),
    outtype: str = typer.Option("auto", help="intermediate float GGUF: auto (f32 for float32 sources up to 2 GiB, else "
                                "the source's 16-bit type), f32, f16, bf16"),
    threads: Optional[int] = typer.Option(None, help="quantization threads (default: the CPUs this process may use)"),
    force: bool = typer.Option(False, "--force", help="export again even when a matching, verified artifact exists"),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="a Jinja chat template file for a "
                                                "model without one (or to replace its own) in the Modelfile; a "
                                                "ChatML template becomes its TEMPLATE"),
    imatrix: bool = typer.Option(True, "--imatrix/--no-imatrix", help="quantize Q4_K_M and lower with an importance "
                                 "matrix computed on the calibration data, as llama.cpp advises"),
    calibration: str = typer.Option("default", "--calibration", help="calibration data for the importance matrix: "
                                    "default, mix, corpus, a .txt/.jsonl file or suite:NAME"),
    calibration_samples: int = typer.Option(128, "--calibration-samples", min=1, help="calibration samples (512 "
                                            "tokens each) for the importance matrix"),
) -> None:
    """Export VARIANT_DIR to GGUF (llama.cpp's converter, then llama.cpp quantization), one artifact per type:
    model.gguf, an Ollama Modelfile, the export record and a sha256 manifest."""
    from rich.console import Console

    err = Console(stderr=True, soft_wrap=True)

    def go():
        from packager.core.sources import resolve_model
        from packager.gguf.export import Outtype, export_gguf  # export_gguf checks outtype
        from packager.gguf.imatrix import IMATRIX_QUANTS
        from packager.gguf.quant import parse_quants

        resolved = resolve_model(variant_dir)
        out_dir = out or Path("runs") / "gguf" / resolved.name
        texts = None
        if imatrix and any(q.name in IMATRIX_QUANTS for q in parse_quants(list(quant))):
            from packager.compress.calibration import load_calibration
            from packager.compress.recipe import chat_renderer

            texts, label, _sha = load_calibration(calibration, calibration_samples, 512,
                                                  render=chat_renderer(Path(resolved.path)))
            err.print(f"importance matrix for the types of 4 bits and fewer from {len(texts)} calibration samples "
                      f"({label})", highlight=False)
        return export_gguf(resolved.path, out_dir, quants=quant, outtype=cast(Outtype, outtype), threads=threads,
                           force=force, log=lambda m: err.print(m, highlight=False), chat_template=chat_template,
                           calibration_texts=texts)

    arts = run_guarded(go)
    err.print(artifacts_table(arts))
    err.print("serve one with: packager build DIR  (backend llamacpp is chosen for a GGUF artifact); "
              "in Ollama: cd DIR && ollama create NAME -f Modelfile", highlight=False)
    for a in arts:
        typer.echo(a.path)


@gguf_app.command("types")
def types() -> None:
    """List the GGUF quantization types packager exports."""
    from packager.gguf.quant import QUANT_TYPES

    for name in QUANT_TYPES.names():
        q = QUANT_TYPES.get(name)
        typer.echo(f"{name:8s} {q.bits_per_weight:5.2f} bpw  {q.description}")
