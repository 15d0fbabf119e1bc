"""packager's one progress bar: `progress_bar(...)`, a context manager around rich's Progress.

Columns, left to right: the description, the bar, M/N (count=True), text columns of your own (`text`, filled
from `fields`), elapsed time, and the time remaining (eta=True). Disabled (`enabled=False`, or
`terminal_only=True` on a console that is not a terminal) it prints nothing and every method is a no-op, so
callers never branch on it. rich is imported only when a bar is shown.

    from packager.core.progress import progress_bar

    with progress_bar("evaluate model", total=len(items), enabled=show_progress) as bar:
        for item in items:
            ...
            bar.advance()

Switching an existing wrapper over (e.g. the prune, distill and GGUF export bars):

    Progress(TextColumn("[bold]distill"), BarColumn(), MofNCompleteColumn(),
             TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
    + add_task(..., total=steps, completed=done, loss="-") + p.update(t, completed=step, loss=f"{loss:.4f}")
        ->  with progress_bar("distill", total=steps, completed=done, enabled=show,
                              text=["loss {loss}"], fields={"loss": "-"}) as bar:
                bar.update(completed=step, loss=f"{loss:.4f}")

    prune's _progress(show, total, what)          ->  progress_bar(what, total=total, enabled=show, eta=False,
                                                                  transient=True)
    GGUF export's _Progress(enabled, desc, total)  ->  progress_bar(desc, total=total, enabled=enabled, eta=False);
      .update(completed, description)                   bar.update(completed=n, description=d); bar.finish()
                                                        at the end of the block instead of its __exit__ fill
    no TimeRemainingColumn                         ->  eta=False
    no MofNCompleteColumn                          ->  count=False
    transient=True (the bar vanishes at the end)   ->  transient=True
    an unknown total (None), set later             ->  total=None, then bar.update(total=n)
    print a line above a running bar               ->  bar.print("...")
    only on an interactive terminal                ->  terminal_only=True

The bar draws on stderr unless given `console=` (rich's own default is stdout): stdout stays for results and
JSON. Pass the CLI's console (packager.cli.guard.console) from CLI code so log lines and the bar share it.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

if TYPE_CHECKING:
    from rich.console import Console


class ProgressBar:
    """The object `progress_bar` yields. All methods are safe to call from worker threads."""

    def __init__(self, progress: Any = None, task: Any = None, total: float | None = None,
                 completed: float = 0) -> None:
        self._progress = progress  # rich.progress.Progress, or None when disabled
        self._task = task
        self.total = total
        self.completed = completed
        self._lock = threading.Lock()
        # on a console that is not a terminal (a CI log, redirected output) rich draws the bar only when it ends:
        # a plain line every `_log_every_s` seconds says the work goes on (None: no such lines)
        self._log_every_s: float | None = None
        self._description = ""
        self._t0 = self._last_log = _now()

    def _log_line(self) -> None:
        """A plain progress line, when lines are due (see _log_every_s)."""
        if self._log_every_s is None or self._progress is None:
            return
        now = _now()
        with self._lock:
            if now - self._last_log < self._log_every_s:
                return
            self._last_log = now
            done, total = self.completed, self.total
        of = f"/{total:g} ({done / total:.0%})" if total else ""
        self._progress.console.print(f"{self._description}: {done:g}{of}, {_clock(now - self._t0)} elapsed",
                                     highlight=False, markup=False)

    @property
    def enabled(self) -> bool:
        """True when a bar is drawn."""
        return self._progress is not None

    def advance(self, n: float = 1, **fields: Any) -> None:
        """Move on by `n` steps; keyword arguments set the bar's fields (what its `text` columns show)."""
        with self._lock:
            self.completed += n
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **fields)
            self._log_line()

    def update(self, *, completed: float | None = None, total: float | None = None, description: str | None = None,
               **fields: Any) -> None:
        """Set the steps done, the total (e.g. once it is known), the description and/or fields."""
        kw: dict[str, Any] = dict(fields)
        if completed is not None:
            self.completed = completed
            kw["completed"] = completed
        if total is not None:
            self.total = total
            kw["total"] = total
        if description is not None:
            kw["description"] = _escape(description)
            self._description = description
        if self._progress is not None:
            self._progress.update(self._task, **kw)
            self._log_line()

    def finish(self) -> None:
        """Show the bar full (when it has a total), e.g. after a loop that did not count every step."""
        if self.total is not None:
            self.update(completed=self.total)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Print above the running bar (through its console); when disabled, print nothing."""
        if self._progress is not None:
            self._progress.console.print(*objects, **kwargs)


def _now() -> float:
    return time.monotonic()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@contextlib.contextmanager
def progress_bar(description: str, total: float | None = None, *, enabled: bool = True,
                 console: Console | None = None, completed: float = 0, fields: Mapping[str, Any] | None = None,
                 text: Sequence[str] = (), count: bool = True, eta: bool = True, transient: bool = False,
                 terminal_only: bool = False, log_every_s: float = 30.0) -> Iterator[ProgressBar]:
    """A rich progress bar for one task while the block runs; yields a `ProgressBar` (advance/update/finish).

    description    shown in bold at the left (taken literally: no rich markup)
    total          steps to do; None draws an indeterminate bar until `update(total=...)`
    enabled        False: nothing is drawn and the methods do nothing (e.g. --quiet, show_progress=False)
    console        the rich Console to draw on; default: a new one on stderr (stdout stays for results)
    completed      steps already done (a resumed run)
    fields         initial values of the fields that `text` columns show
    text           extra columns after M/N, each a str.format template over the fields, e.g. "loss {loss}"
    count          show the M/N column
    eta            show the time-remaining column
    transient      remove the bar when the block ends (default: leave its final state on screen)
    terminal_only  draw only when the console is a terminal (no bar in CI logs and redirected output)
    log_every_s    on a console that is not a terminal, where rich draws the bar only once it ends: a plain line
                   "description: M/N (P%), H:MM:SS elapsed" at most this often, as the work advances
    """
    bar = ProgressBar(total=total, completed=completed)
    if not enabled:
        yield bar
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    console = console if console is not None else Console(stderr=True)
    if terminal_only and not console.is_terminal:
        yield bar
        return

    class FieldsColumn(ProgressColumn):
        def __init__(self, template: str) -> None:
            super().__init__()
            self.template = template

        def render(self, task: Any) -> Text:
            try:
                return Text(self.template.format(**task.fields))
            except (KeyError, IndexError, ValueError):
                return Text("")

    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn()]
    if count:
        columns.append(MofNCompleteColumn())
    columns.extend(FieldsColumn(t) for t in text)
    columns.append(TimeElapsedColumn())
    if eta:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=console, transient=transient) as progress:
        task = progress.add_task(_escape(description), total=total, **dict(fields or {}))
        if completed:
            progress.update(task, completed=completed)
        bar._progress, bar._task = progress, task
        bar._description = description
        if not console.is_terminal:
            bar._log_every_s = log_every_s
        try:
            yield bar
        finally:
            bar._progress = None  # calls after the block are no-ops, not writes to a stopped display
