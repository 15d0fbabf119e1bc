"""The `packager` command line: thin; it parses, builds the run configuration and calls the library.

This module only assembles the root `app` from the command modules of packager.cli (one per area), which
import nothing from here; add a command by defining it in its area module and registering it below, in the
order it should appear in `packager --help`."""
from __future__ import annotations

import typer

from packager.cli import compress, evaluate, gguf, loadtest, models, monitor, registry, release, report, serve

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Compress a model, score it through its serving engine, build a bento, load-test, register, monitor.")
app.add_typer(models.models_app, name="models")

app.command("release")(release.release)
app.command("manifests")(release.manifests)

app.command("compress")(compress.compress)
app.command("hardware")(compress.hardware)

app.command("evaluate")(evaluate.evaluate)

app.command("build")(serve.build)
app.command("serve")(serve.serve)

app.add_typer(gguf.gguf_app, name="gguf")

app.command("loadtest")(loadtest.loadtest)
app.command("loadtest-analyse")(loadtest.loadtest_analyse)

app.add_typer(registry.registry_app, name="registry")

app.command("monitor")(monitor.monitor)
app.command("canary")(monitor.canary)

app.add_typer(report.report_app, name="report")


def main() -> None:  # pragma: no cover
    app()
