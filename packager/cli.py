"""The `packager` command line: thin; it parses, builds the run configuration and calls the library."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from packager.errors import PackagerError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Compress a model, score it through its serving engine, build a bento, load-test, register, monitor.")
models_app = typer.Typer(no_args_is_help=True, help="Model sources (the bundled default, local dirs, HF cache).")
app.add_typer(models_app, name="models")

# soft_wrap: messages are never broken across lines (paths stay whole for grep and copy); tables still fit the width
console = Console(stderr=True, soft_wrap=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by `timeout`, systemd, CI runners, Kubernetes), raised like Ctrl+C so the same cleanup runs."""


def _raise_terminated(signum, frame):  # noqa: ARG001
    raise Terminated()


def run_guarded(fn, *args, **kwargs):
    """Call the library; print PackagerError for people and exit non-zero.

    SIGTERM is turned into an exception while `fn` runs, so context managers stop the engines and servers
    they started and nothing half-written is kept, exactly as on Ctrl+C (exit 143 instead of 130).
    """
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return fn(*args, **kwargs)
    except PackagerError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(e.exit_code)
    except Terminated:
        console.print("[yellow]terminated (SIGTERM): engines stopped, nothing half-written was kept[/]")
        raise typer.Exit(143)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: nothing half-written was kept[/]")
        raise typer.Exit(130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@models_app.command("default")
def models_default() -> None:
    """Provide the bundled SmolLM2-135M-Instruct as a safetensors checkpoint; print its directory."""
    from packager.models import ensure_default_model

    m = run_guarded(ensure_default_model)
    typer.echo(str(m.path))


@models_app.command("resolve")
def models_resolve(source: str = typer.Argument("default", help="'default', a local directory, or a cached HF id")) -> None:
    """Resolve a model source offline and print its directory."""
    from packager.models import resolve_model

    m = run_guarded(resolve_model, source)
    typer.echo(str(m.path))


@app.command("release")
def release(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="release configuration YAML (defaults work without one)"),
    model: Optional[str] = typer.Option(None, help="model source (default: the bundled SmolLM2-135M-Instruct)"),
    recipe: Optional[list[str]] = typer.Option(None, "--recipe", "-r", help="recipe name or file; repeat for several (default: w8a8-int8, gptq-w4a16, gguf-q4_k_m)"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/latest)"),
    serve_via: str = typer.Option("bento", help="'bento' (build and serve the real bento, as shipped) or 'engine' (bare vLLM, faster)"),
    max_items: Optional[int] = typer.Option(None, help="score only the first N suite items"),
    time_budget_s: Optional[float] = typer.Option(None, help="time budget for the whole run, in seconds"),
    no_register: bool = typer.Option(False, "--no-register", help="do not record variants in the registry"),
    expected_load: Optional[float] = typer.Option(None, "--expected-load", help="the traffic you expect, in the sweep's unit (concurrent users by default): rank the variants by cost and SLO there instead of at their highest sustained load"),
) -> None:
    """Compress, evaluate through the engine, build and serve bentos, load-test, register, and write the report."""
    from packager.config import load_config

    def go():
        from packager.release import run_release

        over: dict = {}
        if model:
            over["model"] = model
        if recipe:
            over["recipes"] = list(recipe)
        if out:
            over["output_dir"] = str(out)
        if max_items:
            over["eval"] = {"max_items": max_items}
        if time_budget_s:
            over["time_budget_s"] = time_budget_s
        if expected_load is not None:
            over["expected_load"] = expected_load
        if serve_via not in ("bento", "engine"):
            from packager.errors import ConfigError

            raise ConfigError(f"--serve-via must be 'bento' or 'engine', got {serve_via!r}.")
        cfg = load_config(config, over)
        report = run_release(cfg, serve_via=serve_via, register=not no_register)
        rec = report.recommendation
        console.print(f"[bold]recommendation:[/] {rec.variant or 'none'}: {rec.reason}")

    run_guarded(go)


@app.command("manifests")
def manifests(
    tag: str = typer.Argument(..., help="a bento tag built by `packager build`"),
    out: Path = typer.Option(Path("deploy"), help="folder for bentoml-deployment.yaml and kubernetes.yaml"),
    replicas: int = typer.Option(1, help="replicas (BentoML min_replicas)"),
    max_replicas: Optional[int] = typer.Option(None, help="BentoML max_replicas (autoscaling)"),
    image: Optional[str] = typer.Option(None, help="container image (default: the tag `bentoml containerize` gives)"),
    namespace: str = typer.Option("default", help="Kubernetes namespace"),
    cpu: str = typer.Option("2", help="CPU request per replica"),
    memory: str = typer.Option("8Gi", help="memory request and limit per replica"),
    gpus: Optional[int] = typer.Option(None, help="GPUs per replica (default: the bento's tensor parallel size on a GPU target)"),
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


from packager.compress.cli import register as _reg_compress  # noqa: E402
from packager.evaluate.cli import register as _reg_evaluate  # noqa: E402
from packager.gguf.cli import register as _reg_gguf  # noqa: E402
from packager.loadtest.cli import register as _reg_loadtest  # noqa: E402
from packager.monitor.cli import register as _reg_monitor  # noqa: E402
from packager.registry.cli import register as _reg_registry  # noqa: E402
from packager.report.cli import register as _reg_report  # noqa: E402
from packager.serve.cli import register as _reg_serve  # noqa: E402

for _reg in (_reg_compress, _reg_evaluate, _reg_serve, _reg_gguf, _reg_loadtest, _reg_registry, _reg_monitor,
             _reg_report):
    _reg(app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
