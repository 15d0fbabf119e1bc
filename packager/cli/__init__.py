"""The `packager` command line (`packager = "packager.cli:app"`, `python -m packager.cli`).

    guard.py     console, run_guarded, Terminated: shared by every command; imports nothing from packager.cli
    <area>.py    one module per area (compress, evaluate, serve, gguf, loadtest, registry, monitor, report,
                 models, release): its commands as module-level functions, its command group as a typer.Typer
    app.py       the root `app`: registers the area modules' commands and groups, in `packager --help` order;
                 its callback takes --verbose/-v and configures logging (packager.core.logs)
"""
from .app import app, main
from .guard import Terminated, console, run_guarded

__all__ = ["app", "main", "console", "run_guarded", "Terminated"]
