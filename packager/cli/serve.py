"""CLI commands of packager.serve: `packager build` and `packager serve`; packager.cli.app adds them to the
top-level `packager` command. Heavy libraries (bentoml) are imported inside the commands."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from packager.cli.guard import run_guarded
from packager.cli.options import config_flag, overrides


def build(
    variant_dir: str = typer.Argument(..., help="model variant directory (or 'default' for the bundled model)"),
    backend: Optional[str] = config_flag("engine.backend"),
    target: Optional[str] = config_flag("engine.target"),
    name: Optional[str] = typer.Option(None, help="bento (service) name; default packager-<model name>"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="run configuration YAML (engine and pricing "
                                          "sections are used)"),
    model_name: Optional[str] = typer.Option(None, help="model name label (default: the manifest's name or the "
                                             "directory name)"),
    registry_version: str = typer.Option("unregistered", help="registry version label of this variant"),
    hardware: Optional[str] = typer.Option(None, help="hardware label (default: cpu, or <gpu-type>x<gpus>)"),
    dtype: Optional[str] = config_flag("engine.dtype"),
    max_model_len: Optional[int] = config_flag("engine.max_model_len"),
    max_num_seqs: Optional[int] = config_flag("engine.max_num_seqs"),
    gpus: Optional[int] = config_flag("engine.tensor_parallel_size", "--gpus", extra=" and the bento's resources.gpu"),
    gpu_type: Optional[str] = config_flag("engine.gpu_type"),
    gpu_memory_utilization: Optional[float] = config_flag("engine.gpu_memory_utilization"),
    kvcache_gib: Optional[int] = config_flag("engine.cpu_kvcache_space_gib", "--kvcache-gib"),
    omp_threads_bind: Optional[str] = config_flag("engine.cpu_omp_threads_bind", "--omp-threads-bind"),
    max_concurrency: Optional[int] = typer.Option(None, help="in-flight inference requests before 429 (default: "
                                                  "max_num_seqs)"),
    timeout_s: float = typer.Option(300.0, help="seconds before a request without a response (a stream without its "
                                    "first token) gets 504"),
    usd_per_hour: Optional[float] = typer.Option(None, help="price of one replica in USD per hour (exported as "
                                                 "packager_usd_per_hour)"),
    workers: int = typer.Option(1, help="gateway worker processes per replica (more for fast GPU replicas)"),
    build_ctx: Optional[Path] = typer.Option(None, help="folder with bentofile.yaml and services/ (default: packager's "
                                             "source tree)"),
    release: bool = typer.Option(False, "--release", help="a release build: refuse unless the registry version "
                                 "(--registry-name, --registry-version) is approved, its approval is current, its "
                                 "recovery meets the quality floor and VARIANT_DIR matches its registered hashes"),
    registry_name: Optional[str] = typer.Option(None, help="registered model name (with --release)"),
    registry_uri: Optional[str] = typer.Option(None, help="registry URI (default: the embedded store)"),
    quality_floor: Optional[float] = config_flag("quality_floor", extra=", checked by --release"),
) -> None:
    """Import VARIANT_DIR into the BentoML model store and build its bento; print the bento tag on stdout."""
    from rich.console import Console

    from packager.config import load_config

    err = Console(stderr=True)

    def go():
        from packager.serve.build import build_bento

        cfg = load_config(config, overrides({
            "engine.backend": backend, "engine.target": target, "engine.dtype": dtype,
            "engine.max_model_len": max_model_len, "engine.max_num_seqs": max_num_seqs,
            "engine.tensor_parallel_size": gpus, "engine.gpu_type": gpu_type,
            "engine.gpu_memory_utilization": gpu_memory_utilization, "engine.cpu_kvcache_space_gib": kvcache_gib,
            "engine.cpu_omp_threads_bind": omp_threads_bind}))
        if release:
            from packager.errors import ConfigError
            from packager.registry.gate import check_release_gate

            if not registry_name or registry_version == "unregistered":
                raise ConfigError("--release needs --registry-name and --registry-version: a release bento is "
                                  "built only from an approved registry version.")
            floor = quality_floor if quality_floor is not None else cfg.quality_floor
            decision = check_release_gate(registry_name, registry_version, floor, registry_uri=registry_uri,
                                          model_dir=variant_dir)
            decision.raise_if_refused()
            err.print(f"[green]release gate passed[/]: {decision.message}", highlight=False)
        price = usd_per_hour if usd_per_hour is not None else cfg.pricing.usd_per_hour
        with err.status("building the bento (import model, bentoml build)"):
            return build_bento(variant_dir, engine=cfg.engine, name=name, model_name=model_name,
                               registry_version=registry_version, hardware=hardware, usd_per_hour=price,
                               max_concurrency=max_concurrency, timeout_s=timeout_s, workers=workers,
                               build_ctx=build_ctx,
                               log=lambda m: err.print(m, highlight=False, soft_wrap=True))

    res = run_guarded(go)
    err.print(f"[green]built[/] {res.bento_tag} (model {res.model_tag}); serve it with: "
              f"packager serve {res.bento_tag}   (or: bentoml serve {res.bento_tag})", highlight=False,
              soft_wrap=True)
    typer.echo(res.bento_tag)


def serve(
    tag: str = typer.Argument(..., help="bento tag printed by `packager build` (name:version)"),
    port: int = typer.Option(3000, help="port of the bento's HTTP server"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)"),
    backend_port: Optional[int] = typer.Option(None, help="port of the backend behind the bento (default: the bento's, "
                                               "8000)"),
) -> None:
    """Serve a built bento with `bentoml serve` (packager's BentoML store); Ctrl+C stops it."""
    import os

    from packager.serve.server import serve_command, serve_env

    cmd = serve_command(tag, port=port, host=host)
    typer.echo(" ".join(cmd[2:]), err=True)
    os.execvpe(cmd[0], cmd, serve_env(backend_port))
