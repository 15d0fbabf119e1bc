"""`packager evaluate`: score a model (through a local engine) or a running endpoint on a task suite."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from packager.cli.options import (
    api_key_env_flag,
    api_key_file_flag,
    ca_bundle_flag,
    config_flag,
    header_flag,
    insecure_flag,
    overrides,
    run_with_access,
)
from packager.core.formatting import num, pct


def summary_table(summaries: list, title: str = "evaluation"):
    """A rich table: one column per summary, one row per figure."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("figure", no_wrap=False, overflow="fold")  # fold, never "…"
    for s in summaries:
        t.add_column(s.name, justify="right", no_wrap=False, overflow="fold")
    cats = sorted({c for s in summaries for c in s.score_by_category})

    t.add_row("prompts sent as", *[{"chat": "chat (template)", "completion": "raw text (no template)"}.get(
        s.prompt_format or "", "-") for s in summaries])
    t.add_row("task score", *[num(s.score, ".3f") for s in summaries])
    for c in cats:
        t.add_row(f"  {c}", *[num(s.score_by_category.get(c), ".3f") for s in summaries])
    t.add_row("recovery", *[pct(s.recovery) for s in summaries])
    t.add_row("perplexity (held-out)", *[num(s.perplexity, ".2f") for s in summaries])
    t.add_row("fidelity measured on", *[_fidelity_where(s) for s in summaries])
    t.add_row("greedy agreement", *[pct(s.fidelity_agreement) for s in summaries])
    t.add_row("mean KL to baseline", *[num(s.fidelity_mean_kl, ".4f") for s in summaries])
    t.add_row("p95 KL to baseline", *[num(s.fidelity_p95_kl, ".4f") for s in summaries])
    t.add_row("top-1 agreement (per token)", *[pct(s.fidelity_top1_agreement) for s in summaries])
    t.add_row("greedy-prefix match (tokens)", *[num(s.fidelity_prefix_match_mean, ".1f") for s in summaries])
    for key in sorted({k for s in summaries for k in s.behaviour}):
        t.add_row(key, *[num(s.behaviour.get(key), ".3f") for s in summaries])
    t.add_row("items / errors", *[f"{s.n_items} / {s.n_errors}" for s in summaries])
    t.add_row("wall time (s)", *[f"{s.wall_time_s:.0f}" for s in summaries])
    return t


def _fidelity_where(s) -> str:
    if not s.fidelity_source:
        return "-"
    if s.fidelity_source == "suite":
        return "suite answers"
    shown = f"{s.fidelity_source.removeprefix('corpus:')} corpus, {s.fidelity_prompts} prompts"
    if s.fidelity_prompts_skipped:
        shown += f" ({s.fidelity_prompts_skipped} too long, skipped)"
    return shown


def evaluate(
    model: str = typer.Argument("default", help="'default' (bundled model), a model directory, a cached HF id, or an "
                                "http(s) URL of a running OpenAI-compatible endpoint"),
    suite: Optional[str] = config_flag("eval.suite"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="run configuration YAML"),
    baseline: Optional[Path] = typer.Option(None, help="a baseline's summary.json (or its directory): adds recovery "
                                            "and fidelity"),
    out: Optional[Path] = typer.Option(None, help="directory for items.jsonl and summary.json (default "
                                       "runs/eval/<name>)"),
    name: Optional[str] = typer.Option(None, help="label of this model in results"),
    dtype: Optional[str] = config_flag("engine.dtype"),
    max_items: Optional[int] = config_flag("eval.max_items"),
    concurrency: Optional[int] = config_flag("eval.concurrency"),
    no_perplexity: bool = typer.Option(False, "--no-perplexity", help="skip perplexity on the held-out corpus"),
    fidelity_corpus: Optional[str] = config_flag("eval.fidelity_corpus", extra="; 'suite' for null"),
    fidelity_prompts: Optional[int] = config_flag("eval.fidelity_max_prompts", "--fidelity-prompts"),
    prompt_format: Optional[str] = config_flag("eval.prompt_format"),
    chat_template: Optional[str] = config_flag("engine.chat_template"),
    api_key_env: Optional[str] = api_key_env_flag(),
    api_key_file: Optional[Path] = api_key_file_flag(),
    header: list[str] = header_flag(),
    ca_bundle: Optional[Path] = ca_bundle_flag(),
    insecure: bool = insecure_flag(),
) -> None:
    """Score MODEL on a task suite through its serving engine; print task score, perplexity, recovery, fidelity.
    An endpoint URL (local or remote) gets the API key (--api-key-env/--api-key-file, else PACKAGER_API_KEY) as
    `Authorization: Bearer`, and the --header headers."""
    from rich.console import Console

    from packager.config import load_config

    def go():
        from packager.core.sources import resolve_model
        from packager.evaluate.runner import evaluate_model, load_summary
        from packager.evaluate.suite import load_suite

        cfg = load_config(config, overrides({
            "eval.suite": suite, "eval.max_items": max_items, "eval.concurrency": concurrency,
            "eval.perplexity": False if no_perplexity else None, "engine.dtype": dtype,
            "eval.fidelity_corpus": None if fidelity_corpus == "suite" else fidelity_corpus,
            "eval.fidelity_max_prompts": fidelity_prompts, "eval.prompt_format": prompt_format,
            "engine.chat_template": chat_template}))
        if fidelity_corpus == "suite":
            cfg.eval.fidelity_corpus = None
        base = load_summary(baseline) if baseline else None
        is_url = model.startswith(("http://", "https://"))
        if is_url:
            from packager.cli.guard import console
            from packager.core.access import normalize_target, where_line

            label = name or "endpoint"
            model_dir, url = None, model
            n = min(cfg.eval.max_items or 10**9, len(load_suite(cfg.eval.suite).items))
            console.print(f"Requests go to {where_line(normalize_target(url))}; {n} suite items at "
                          f"{cfg.eval.concurrency} at a time, plus perplexity and fidelity prompts when set.",
                          highlight=False)
        else:
            resolved = resolve_model(model)
            label = name or resolved.name
            model_dir, url = resolved.path, None
        out_dir = out or Path(cfg.output_dir).parent / "eval" / label
        s = evaluate_model(model_dir, cfg, url=url, baseline=base, out_dir=out_dir, name=label)
        Console(soft_wrap=True).print(summary_table([s] if base is None else [base, s]))
        Console(soft_wrap=True).print(f"results: {out_dir}/summary.json, {out_dir}/items.jsonl")
        return s

    run_with_access(go, api_key_env, api_key_file, header, ca_bundle, insecure)
