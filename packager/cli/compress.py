"""CLI commands of packager.compress: `packager compress` and `packager hardware`.

packager.cli.app adds them to the top-level `packager` command. Heavy libraries are imported inside the
commands."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from packager.cli.guard import run_guarded
from packager.cli.options import config_flag, overrides

if TYPE_CHECKING:
    from rich.console import JustifyMethod

SUMMARY_JSON = "compress-summary.json"
SUMMARY_MD = "compress-summary.md"


_STAGE_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("stage", "left"), ("method", "left"), ("params", "right"), ("size MB", "right"), ("wall s", "right"),
    ("score", "right"), ("recovery", "right"), ("perplexity", "right"))


def stage_table(rows: list[dict[str, Any]], title: str):
    from rich.table import Table

    t = Table(title=title)
    for col, just in _STAGE_COLUMNS:
        t.add_column(col, justify=just, no_wrap=False, overflow="fold")  # fold, never "…"

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    for r in rows:
        t.add_row(r["stage"], r["method"], f"{r['parameter_count'] / 1e6:.1f}M", f"{r['size_mb']:.1f}",
                  f(r["wall_time_s"], ".1f"), f(r["score"], ".3f"), f(r["recovery"], ".1%"),
                  f(r["perplexity"], ".2f"))
    return t


def formats_table(support: list[dict[str, Any]], where: str):
    """`packager hardware`'s table: one row per compressed format, whether it runs on `where`, and why."""
    from rich.table import Table

    t = Table(title=f"formats served by vLLM on {where}")
    for col in ("format", "runs", "why / notes"):
        t.add_column(col, no_wrap=False, overflow="fold")
    for row in support:
        t.add_row(row["format"], "yes" if row["runs"] else "NO", " ".join(row["problems"] + row["notes"]))
    return t


def _evaluation_key(cfg, suite_sha: str) -> str:
    from packager.fsutil import sha256_bytes

    data = {"eval": cfg.eval.model_dump(mode="json"), "engine": cfg.engine.model_dump(mode="json"), "suite": suite_sha}
    return sha256_bytes(json.dumps(data, sort_keys=True).encode())[:16]


def compress(
    model: str = typer.Argument("default", help="'default' (bundled model), a model directory, or a cached HF id"),
    recipe: str = typer.Option(..., "--recipe", "-r", help="a built-in recipe name or a recipe YAML file"),
    out: Optional[Path] = typer.Option(None, "--out", help="output directory (default <output_dir>/compress/<recipe>)"),
    calibration: Optional[str] = typer.Option(
        None, "--calibration", help="calibration data: 'default' (half the bundled mix of chats, code, numbers and "
        "12 languages, in the model's chat template; half the bundled corpus), 'mix', 'corpus', suite:NAME_OR_PATH, "
        "or a .txt/.jsonl file"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip scoring the source model and every stage through vLLM"),
    device: str = typer.Option("auto", "--device", help="where compression runs: cpu, cuda or auto"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="run configuration YAML"),
    target: Optional[str] = config_flag("engine.target", "--target"),
    gpu_type: Optional[str] = config_flag("engine.gpu_type", "--gpu-type"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
) -> None:
    """Compress MODEL with a recipe, stage by stage; score every stage through the serving engine.

    Finished stages are kept under the output directory and reused when the command is run again
    (same input, arguments and calibration data), so an interrupted run resumes."""
    from rich.console import Console

    from packager.config import load_config

    console = Console(soft_wrap=True)

    def go():
        from packager.compress.recipe import load_recipe, run_recipe, summary_markdown
        from packager.core.sources import resolve_model
        from packager.errors import ConfigError
        from packager.fsutil import atomic_write_json, atomic_write_text

        if target is not None and target not in ("cpu", "gpu"):
            raise ConfigError(f"--target must be 'cpu' or 'gpu', got {target!r}.")
        cfg = load_config(config, overrides({"engine.target": target, "engine.gpu_type": gpu_type}))
        rec = load_recipe(recipe)
        resolved = resolve_model(model)
        out_root = out or Path(cfg.output_dir) / "compress" / rec.name
        log = (lambda m: None) if quiet else (lambda m: console.print(m, highlight=False))

        evaluate = None
        key = None
        baseline = None
        if not no_eval:
            evaluate, baseline, key = _make_evaluator(cfg, resolved, out_root, console, quiet)
        result = run_recipe(resolved, rec, out_root, calibration=calibration, engine=cfg.engine,
                            evaluate=evaluate, device=device, progress=not quiet, evaluation_key=key, log=log,
                            source_evaluation=baseline.model_dump(mode="json") if baseline is not None else None)
        rows = result.summary_rows()
        atomic_write_json(out_root / SUMMARY_JSON, {"result": result.model_dump(mode="json"), "rows": rows})
        atomic_write_text(out_root / SUMMARY_MD, summary_markdown(result))
        console.print(stage_table(rows, f"recipe {rec.name} on {resolved.name}"))
        console.print(f"final model: {result.final_dir}\nsummary: {out_root / SUMMARY_JSON}, {out_root / SUMMARY_MD}",
                      highlight=False)

    run_guarded(go)


def hardware(
    target: str = typer.Option("cpu", "--target", help="cpu (this machine) or gpu"),
    gpu_type: Optional[str] = typer.Option(None, "--gpu-type", help="a GPU model to check, e.g. H100; default: the "
                                           "local GPU"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """What this machine has (CPU flags, GPUs) and which compressed formats its serving engine runs."""
    from rich.console import Console

    from packager.hardware import detect_cpu, detect_gpus, format_support

    def go():
        if target not in ("cpu", "gpu"):
            from packager.errors import ConfigError

            raise ConfigError(f"--target must be 'cpu' or 'gpu', got {target!r}.")
        cpu = detect_cpu()
        gpus = detect_gpus()
        support = format_support("gpu" if target == "gpu" else "cpu", gpu_type, cpu)
        if as_json:
            typer.echo(json.dumps({"cpu": cpu.to_dict(), "gpus": [g.to_dict() for g in gpus], "target": target,
                                   "gpu_type": gpu_type, "formats": support}, indent=2))
            return
        console = Console(soft_wrap=True)
        console.print(f"CPU: {cpu.model} ({cpu.arch}), {cpu.usable_cores} usable of {cpu.logical_cores} logical cores",
                      highlight=False)
        console.print(f"  flags: {', '.join(cpu.flags) or '(none of interest)'}; "
                      f"VNNI: {'yes' if cpu.has_vnni else 'no'}; AMX: {'yes' if cpu.has_amx else 'no'}",
                      highlight=False)
        if gpus:
            for g in gpus:
                d = g.to_dict()
                console.print(f"GPU {d['index']}: {d['name']}, compute capability {d['capability']}, "
                              f"{d['memory_gib']} GiB", highlight=False)
        else:
            console.print("GPUs: none visible to torch", highlight=False)
        where = "this CPU" if target == "cpu" else (gpu_type or (gpus[0].name if gpus else "a GPU (none here)"))
        console.print(formats_table(support, where))

    run_guarded(go)


def _make_evaluator(cfg, resolved, out_root: Path, console, quiet: bool):
    """(evaluate callable, baseline summary, evaluation key): the source model is scored once (reused when
    its stored summary has the same key), then each stage against it."""
    from packager.evaluate.runner import evaluate_model, load_summary
    from packager.evaluate.suite import load_suite
    from packager.hardware import detect_gpus

    if cfg.engine.target == "gpu" and not detect_gpus():
        console.print("[yellow]note:[/] the target is a GPU and this machine has none: stages are compressed here "
                      "but not scored (run `packager evaluate` on the GPU host).", highlight=False)
        return None, None, None
    suite = load_suite(cfg.eval.suite)
    key = _evaluation_key(cfg, suite.sha256)
    base_dir = out_root / "eval" / "00-source"
    key_file = base_dir / "evaluation-key.txt"
    baseline = None
    if (base_dir / "summary.json").is_file() and key_file.is_file() and key_file.read_text().strip() == key:
        baseline = load_summary(base_dir / "summary.json")
        if not quiet:
            console.print(f"baseline: reusing the source model's evaluation in {base_dir}", highlight=False)
    if baseline is None:
        if not quiet:
            console.print(f"baseline: scoring the source model {resolved.name} through vLLM", highlight=False)
        baseline = evaluate_model(resolved.path, cfg, out_dir=base_dir, name="source", suite=suite,
                                  show_progress=not quiet)
        from packager.fsutil import atomic_write_text

        atomic_write_text(key_file, key + "\n")

    def evaluate(stage_dir: Path, label: str) -> dict:
        s = evaluate_model(stage_dir, cfg, baseline=baseline, out_dir=out_root / "eval" / label, name=label,
                           suite=suite, show_progress=not quiet)
        return s.model_dump(mode="json")

    return evaluate, baseline, key
