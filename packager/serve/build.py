"""`packager build`: a model variant directory -> BentoML model + bento (the real `bentoml build`)."""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from packager.config import EngineConfig
from packager.core.prompt_format import read_chat_template
from packager.engines.select import select_engine
from packager.errors import ConfigError, PackagerError
from packager.fsutil import tail
from packager.serve.args import BentoArgs, bento_name, parse_args
from packager.serve.store import bentoml_env, bentoml_home, import_model, read_variant


@dataclass(frozen=True)
class BuildResult:
    bento_tag: str
    model_tag: str
    args: BentoArgs


def project_root() -> Path:
    """The folder holding bentofile.yaml and services/ (the source tree packager runs from)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "bentofile.yaml").is_file() or not (root / "services" / "service.py").is_file():
        raise ConfigError(
            f"No bentofile.yaml and services/service.py beside the packager package (looked in {root}). "
            "`packager build` needs packager's source tree: run it from a checkout (pip install -e .), or pass "
            "--build-ctx pointing at one."
        )
    return root


def make_args(*, model_tag: str, model_digest: str, engine: EngineConfig, service_name: str, model_name: str,
              registry_version: str = "unregistered", hardware: str | None = None,
              usd_per_hour: float | None = None, max_concurrency: int | None = None, timeout_s: float = 300.0,
              backend_port: int = 8000, workers: int = 1, access: Mapping[str, Any] | None = None) -> BentoArgs:
    """The bento's arguments from the run configuration's engine settings and the variant's identity; `access`
    sets the access and bound arguments (require_api_key, max_body_bytes, max_tokens_limit, ...) by name."""
    return parse_args({**(access or {}),
        "model_tag": model_tag, "model_digest": model_digest, "service_name": service_name,
        "backend": engine.backend, "target": engine.target, "dtype": engine.dtype,
        "max_model_len": engine.max_model_len, "max_num_seqs": engine.max_num_seqs,
        "tensor_parallel_size": engine.tensor_parallel_size, "gpu_type": engine.gpu_type,
        "gpu_memory_utilization": engine.gpu_memory_utilization, "gpu_int4_kernel": engine.gpu_int4_kernel,
        "api_server_count": engine.api_server_count, "kv_cache_dtype": engine.kv_cache_dtype,
        "cpu_kvcache_space_gib": engine.cpu_kvcache_space_gib, "cpu_omp_threads_bind": engine.cpu_omp_threads_bind,
        "cpu_reserved_cpus": engine.cpu_reserved_cpus,
        "enforce_eager": engine.enforce_eager, "extra_args": list(engine.extra_args), "backend_port": backend_port,
        # the template's text, not its path: the bento carries it wherever it is deployed
        "chat_template": read_chat_template(engine.chat_template) if engine.chat_template else None,
        "max_concurrency": max_concurrency,
        "timeout_s": timeout_s, "usd_per_hour": usd_per_hour, "model_name": model_name, "workers": workers,
        "registry_version": registry_version, "hardware": hardware,
    })


def run_bentoml_build(args: BentoArgs, build_ctx: Path, log: Callable[[str], None] = print) -> str:
    """Run `bentoml build` on the service template with these arguments; return the bento tag."""
    with tempfile.TemporaryDirectory(prefix="packager-bento-args-") as td:
        args_file = Path(td) / "args.yaml"
        args_file.write_text(yaml.safe_dump(args.model_dump(mode="json", exclude_none=True), sort_keys=True))
        log_file = Path(td) / "build.log"
        cmd = [sys.executable, "-m", "bentoml", "build", str(build_ctx), "-f", str(build_ctx / "bentofile.yaml"),
               "--arg-file", str(args_file), "--output", "tag"]
        log(f"running bentoml build for service {args.service_name} (store: {bentoml_home()})")
        with open(log_file, "w") as lf:
            proc = subprocess.run(cmd, cwd=build_ctx, env=bentoml_env(), stdout=subprocess.PIPE, stderr=lf,
                                  text=True)
        m = re.search(r"__tag__:(\S+)", proc.stdout or "")
        if proc.returncode != 0 or m is None:
            raise PackagerError(
                f"`bentoml build` failed (exit code {proc.returncode}) for {args.model_tag}. Its output:\n"
                f"{(proc.stdout or '').strip()}\n{tail(log_file, 30)}"
            )
    return m.group(1)


def build_bento(variant_dir: str | Path, *, engine: EngineConfig | None = None, name: str | None = None,
                model_name: str | None = None, registry_version: str = "unregistered", hardware: str | None = None,
                usd_per_hour: float | None = None, max_concurrency: int | None = None, timeout_s: float = 300.0,
                workers: int = 1, build_ctx: Path | None = None, log: Callable[[str], None] = print,
                access: Mapping[str, Any] | None = None) -> BuildResult:
    """Verify a variant, import it into the BentoML model store, build the bento; nothing is left half-made
    (BentoML stages models and bentos in temporary folders and moves them into the store when complete)."""
    from packager.core.sources import resolve_model

    engine = engine or EngineConfig()
    ctx = Path(build_ctx).resolve() if build_ctx else project_root()
    resolved = resolve_model(str(variant_dir))  # 'default', a directory, or a cached HF id
    record = read_variant(resolved.path, log=log)
    engine = select_engine(record.path, engine, log=log)
    model_name = model_name or record.name
    service_name = name or f"packager-{bento_name(model_name)}"
    # Validate the arguments before the (slow) import so a bad flag fails at once.
    make_args(model_tag="pending:pending", model_digest=record.digest, engine=engine, service_name=service_name,
              model_name=model_name, registry_version=registry_version, hardware=hardware,
              usd_per_hour=usd_per_hour, max_concurrency=max_concurrency, timeout_s=timeout_s, workers=workers,
              access=access)
    model_tag = import_model(record, registry_version=registry_version, target=engine.target,
                             model_name=model_name, log=log)
    args = make_args(model_tag=model_tag, model_digest=record.digest, engine=engine, service_name=service_name,
                     model_name=model_name, registry_version=registry_version, hardware=hardware,
                     usd_per_hour=usd_per_hour, max_concurrency=max_concurrency, timeout_s=timeout_s,
                     workers=workers, access=access)
    bento_tag = run_bentoml_build(args, ctx, log=log)
    return BuildResult(bento_tag=bento_tag, model_tag=model_tag, args=args)
