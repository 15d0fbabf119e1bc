"""CLI commands of packager.serve: `packager build` and `packager serve`; packager.cli.app adds them to the
top-level `packager` command. Heavy libraries (bentoml) are imported inside the commands."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from packager.cli.guard import run_guarded
from packager.cli.options import config_flag, overrides

# `packager build` flags that are bento arguments of the same name (access and bounds, packager/serve/args.py)
ACCESS_FLAGS = ("require_api_key", "require_approved", "registry_name", "max_body_bytes", "max_tokens_limit",
                "max_tokens_default", "max_stream_s")
# `packager build` flags -> the run configuration's engine settings they override
ENGINE_FLAGS = {"backend": "engine.backend", "target": "engine.target", "dtype": "engine.dtype",
                "max_model_len": "engine.max_model_len", "max_num_seqs": "engine.max_num_seqs",
                "gpus": "engine.tensor_parallel_size", "gpu_type": "engine.gpu_type",
                "gpu_memory_utilization": "engine.gpu_memory_utilization",
                "kvcache_gib": "engine.cpu_kvcache_space_gib", "omp_threads_bind": "engine.cpu_omp_threads_bind",
                "reserved_cpus": "engine.cpu_reserved_cpus", "chat_template": "engine.chat_template"}


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
    reserved_cpus: Optional[int] = config_flag("engine.cpu_reserved_cpus", "--reserved-cpus"),
    chat_template: Optional[str] = config_flag("engine.chat_template", extra="; its text is stored in the bento"),
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
    require_api_key: bool = typer.Option(True, "--require-api-key/--no-api-key", help="the bento refuses to start "
                                         "without an API key (PACKAGER_API_KEYS or PACKAGER_API_KEYS_FILE where it "
                                         "runs); --no-api-key serves anyone who can reach the port"),
    max_body_bytes: Optional[int] = typer.Option(None, help="request bodies above this many bytes get 413 "
                                                 "(default 4 MiB)"),
    max_tokens_limit: Optional[int] = typer.Option(None, help="larger max_tokens get 400 (default: max_model_len)"),
    max_tokens_default: Optional[int] = typer.Option(None, help="max_tokens of a request that gives none "
                                                     "(default 1024)"),
    max_stream_s: Optional[float] = typer.Option(None, help="a stream still running after this many seconds is "
                                                 "ended (default 900)"),
    require_approved: bool = typer.Option(False, "--require-approved", help="the bento refuses to start unless "
                                          "--registry-name/--registry-version is approved in the registry it "
                                          "reads at start (PACKAGER_REGISTRY_URI where it runs)"),
) -> None:
    """Import VARIANT_DIR into the BentoML model store and build its bento; print the bento tag on stdout."""
    from rich.console import Console

    from packager.config import load_config

    err, flags = Console(stderr=True), locals()
    access = {k: flags[k] for k in ACCESS_FLAGS if flags[k] is not None}  # bento args of the same names

    def go():
        from packager.serve.build import build_bento

        cfg = load_config(config, overrides({setting: flags[flag] for flag, setting in ENGINE_FLAGS.items()}))
        if release:
            msg = _release_gate(registry_name, registry_version, quality_floor if quality_floor is not None
                                else cfg.quality_floor, registry_uri, variant_dir)
            err.print(f"[green]release gate passed[/]: {msg}", highlight=False)
        price = usd_per_hour if usd_per_hour is not None else cfg.pricing.usd_per_hour
        with err.status("building the bento (import model, bentoml build)"):
            return build_bento(variant_dir, engine=cfg.engine, name=name, model_name=model_name,
                               registry_version=registry_version, hardware=hardware, usd_per_hour=price,
                               max_concurrency=max_concurrency, timeout_s=timeout_s, workers=workers,
                               build_ctx=build_ctx, log=lambda m: err.print(m, highlight=False, soft_wrap=True),
                               access=access)

    _report_built(err, run_guarded(go))


def _report_built(err, res) -> None:
    """How to serve the bento on stderr; its tag alone on stdout (what scripts read)."""
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
    require_approved: bool = typer.Option(False, "--require-approved", help="refuse to serve unless the bento's "
                                          "registry version is approved now (not pending, rejected, stale or "
                                          "tampered)"),
    registry_name: Optional[str] = typer.Option(None, help="registered model name (with --require-approved; default: "
                                                "the bento's)"),
    registry_uri: Optional[str] = typer.Option(None, help="registry URI (with --require-approved; default: "
                                               "PACKAGER_REGISTRY_URI or the embedded store)"),
) -> None:
    """Serve a built bento with `bentoml serve` (packager's BentoML store); Ctrl+C stops it. The bento reads its
    API keys from PACKAGER_API_KEYS (comma-separated) or PACKAGER_API_KEYS_FILE; clients send one as
    `Authorization: Bearer KEY`."""
    import os

    from packager.serve.server import serve_command, serve_env

    if require_approved:
        run_guarded(lambda: _check_bento_approved(tag, registry_name, registry_uri))
    cmd = serve_command(tag, port=port, host=host)
    typer.echo(" ".join(cmd[2:]), err=True)
    os.execvpe(cmd[0], cmd, serve_env(backend_port))


def _check_bento_approved(tag: str, registry_name: str | None, registry_uri: str | None) -> None:
    """`packager serve --require-approved`: the registry version the bento was built for must be approved now."""
    from rich.console import Console

    from packager.errors import ConfigError
    from packager.registry.errors import ReleaseRefusedError
    from packager.registry.gate import check_serving_approval
    from packager.serve.manifests import bento_info

    info = bento_info(tag)
    args = info.get("args", {})
    version = str(args.get("registry_version", "unregistered"))
    name = registry_name or args.get("registry_name") or args.get("model_name")
    if version == "unregistered" or not name:
        raise ConfigError(f"{tag} serves no registry version (it was built without --registry-version), so "
                          "--require-approved cannot hold. Build it from a registered version.")
    ok, why = check_serving_approval(name, version, registry_uri=registry_uri)
    if not ok:
        raise ReleaseRefusedError(f"Refusing to serve {tag}: {why}")
    Console(stderr=True).print(f"[green]approved[/]: {why}", highlight=False)


def _release_gate(registry_name: str | None, registry_version: str, floor: float, registry_uri: str | None,
                  variant_dir: str) -> str:
    """`packager build --release`: the registry version must pass the release gate; its message, or an error."""
    from packager.errors import ConfigError
    from packager.registry.gate import check_release_gate

    if not registry_name or registry_version == "unregistered":
        raise ConfigError("--release needs --registry-name and --registry-version: a release bento is "
                          "built only from an approved registry version.")
    decision = check_release_gate(registry_name, registry_version, floor, registry_uri=registry_uri,
                                  model_dir=variant_dir)
    decision.raise_if_refused()
    return decision.message
