"""`packager release` (the whole pipeline) and `packager manifests` (deployment manifests for a bento)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from packager.cli.guard import console, run_guarded
from packager.cli.options import config_flag, overrides


def release(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="release configuration YAML (defaults work "
                                          "without one)"),
    model: Optional[str] = config_flag("model"),
    recipe: Optional[list[str]] = config_flag("recipes", "--recipe", "-r", extra="; repeat --recipe for several"),
    out: Optional[Path] = config_flag("output_dir", "--out"),
    serve_via: str = typer.Option("bento", help="'bento' (build and serve the real bento, as shipped) or 'engine' "
                                  "(bare vLLM, faster)"),
    max_items: Optional[int] = config_flag("eval.max_items"),
    time_budget_s: Optional[float] = config_flag("time_budget_s"),
    no_register: bool = typer.Option(False, "--no-register", help="do not record variants in the registry"),
    expected_load: Optional[float] = config_flag("expected_load", "--expected-load"),
) -> None:
    """Compress, evaluate through the engine, build and serve bentos, load-test, register, and write the report."""
    from packager.config import load_config

    def go():
        from packager.release import run_release

        over = overrides({"model": model, "recipes": list(recipe) if recipe else None,
                          "output_dir": str(out) if out else None, "eval.max_items": max_items,
                          "time_budget_s": time_budget_s, "expected_load": expected_load})
        if serve_via not in ("bento", "engine"):
            from packager.errors import ConfigError

            raise ConfigError(f"--serve-via must be 'bento' or 'engine', got {serve_via!r}.")
        cfg = load_config(config, over)
        report = run_release(cfg, serve_via=serve_via, register=not no_register)
        rec = report.recommendation
        console.print(f"[bold]recommendation:[/] {rec.variant or 'none'}: {rec.reason}")

    run_guarded(go)


def manifests(
    tag: str = typer.Argument(..., help="a bento tag built by `packager build`"),
    out: Path = typer.Option(Path("deploy"), help="folder for bentoml-deployment.yaml and kubernetes.yaml"),
    replicas: int = typer.Option(1, help="replicas (BentoML min_replicas)"),
    max_replicas: Optional[int] = typer.Option(None, help="BentoML max_replicas (autoscaling)"),
    image: Optional[str] = typer.Option(None, help="container image (default: the tag `bentoml containerize` gives)"),
    namespace: str = typer.Option("default", help="Kubernetes namespace"),
    cpu: str = typer.Option("2", help="CPU request per replica"),
    memory: str = typer.Option("8Gi", help="memory request and limit per replica"),
    gpus: Optional[int] = typer.Option(None, help="GPUs per replica (default: the bento's tensor parallel size on a "
                                       "GPU target)"),
) -> None:
    """Write deployment manifests for a bento: a BentoML deployment config and a Kubernetes Deployment + Service
    with readiness/liveness probes on /readyz and /livez and Prometheus scrape annotations."""
    def go():
        from packager.serve.manifests import ManifestOptions, write_manifests

        opts = ManifestOptions(replicas=replicas, max_replicas=max_replicas, image=image, namespace=namespace,
                               cpu=cpu, memory=memory, gpus=gpus)
        for kind, p in write_manifests(tag, out, opts).items():
            typer.echo(f"{kind}: {p}")

    run_guarded(go)
