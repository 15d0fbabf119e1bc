"""The `packager` command line: thin; it parses, builds the run configuration and calls the library.

This module only assembles the root `app` from the command modules of packager.cli (one per area), which
import nothing from here; add a command by defining it in its area module and registering it below, in the
order it should appear in `packager --help`. Its callback takes the one root option, --verbose/-v, and configures
logging (packager.core.logs) before any command runs: the console shows warnings and errors, and with --verbose
also the INFO lines of packager and the libraries it drives (one per HTTP request for httpx)."""
from __future__ import annotations

import typer

from packager.cli import (
    compare,
    compress,
    config,
    evaluate,
    gguf,
    loadtest,
    models,
    monitor,
    registry,
    release,
    report,
    serve,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Compress a model, score it through its serving engine, build a bento, load-test, register, "
                       "monitor.")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show INFO log lines of packager and the "
                                 "libraries it drives (HTTP requests, MLflow, BentoML, ...) on the console; "
                                 "by default the console shows warnings and errors only."),
) -> None:
    from packager.core.logs import configure_logging

    configure_logging(verbose)


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
app.command("compare")(compare.compare)

app.add_typer(report.report_app, name="report")

app.add_typer(config.config_app, name="config")


def main() -> None:  # pragma: no cover
    app()
