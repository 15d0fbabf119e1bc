"""What every `packager` command shares: the stderr console and `run_guarded`, which turns library errors,
Ctrl+C and SIGTERM into a message and an exit code.

This module imports nothing from the rest of packager.cli, so that the command modules can import it."""
from __future__ import annotations

import typer
from rich.console import Console

from packager.errors import PackagerError

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
