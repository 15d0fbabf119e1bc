"""Where log records go: a quiet console and, during a run, the run's log file.

The libraries packager drives (httpx logs one INFO line per request; MLflow, alembic, BentoML, vLLM, transformers,
gptqmodel, filelock, matplotlib ... log their own chatter) must not fill the console. The rule:

* the console (stderr) shows WARNING and above, from packager and from every library; with `verbose=True`
  (`packager --verbose ...`) it shows INFO too;
* a log file, when there is one (`configure_logging(log_file=...)`, or `attach_run_log(run_dir)` for the
  duration of a run), receives INFO and above from everything, libraries included (but for the few in
  MIN_LEVELS, whose INFO is a trace: SQLAlchemy's is every SQL statement).

    configure_logging(verbose, log_file=None)   the CLI calls it once at start (the root callback, --verbose/-v)
    attach_run_log(path)                         context manager: also log into PATH (a file, or
                                                 PATH/packager.log for a directory) while the block runs
    quiet_library_loggers()                      re-apply the rule after importing a library that installs
                                                 its own console handler (configure_logging and
                                                 attach_run_log call it)

The library loggers named in LIBRARY_LOGGERS get packager's handlers directly and stop propagating to the root
logger, so a console handler that some library adds to the root logger later (logging.basicConfig) never sees
their records; their own console handlers (StreamHandlers on stdout/stderr) are removed. Every function here is
idempotent: calling it again replaces packager's handlers instead of adding more. Nothing here imports a heavy
library.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Iterator

# Loggers of libraries packager uses (children, e.g. "httpx._client", "mlflow.store.db.utils", follow them).
LIBRARY_LOGGERS: tuple[str, ...] = (
    "httpx", "httpcore", "urllib3", "requests", "vllm", "transformers", "gptqmodel", "accelerate", "torch",
    "safetensors", "huggingface_hub", "datasets", "bentoml", "circus", "uvicorn", "starlette", "mlflow", "alembic",
    "sqlalchemy", "huey", "filelock", "asyncio", "matplotlib", "PIL", "locust", "gevent", "llama_cpp", "gguf",
    "opentelemetry", "git", "numexpr", "prometheus_client", "multipart", "python_multipart",
)
# Libraries whose INFO is a trace, not news: SQLAlchemy logs every SQL statement and ORM mapper step at INFO
# (its INFO level is `echo=True`), about 5,000 lines of a release's log. They log from WARNING up everywhere.
MIN_LEVELS: dict[str, int] = {"sqlalchemy": logging.WARNING}
RUN_LOG_NAME = "packager.log"  # attach_run_log(directory) writes here
CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_TAG = "_packager_logs"  # attribute marking the handlers this module installed


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted, so output stays right when sys.stderr is
    replaced later (rich's live progress prints it above the bar; test runners capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # emit runs under the handler's lock
        super().emit(record)


class _State:
    def __init__(self) -> None:
        self.verbose = False
        self.console: logging.Handler | None = None
        self.file: logging.FileHandler | None = None
        self.runs: dict[Path, list] = {}  # resolved path -> [handler, how many attach_run_log blocks use it]


_state = _State()
_lock = threading.RLock()  # attach_run_log may be entered from several threads


def _mark(handler: logging.Handler, role: str) -> logging.Handler:
    setattr(handler, _TAG, role)
    return handler


def _is_ours(handler: logging.Handler) -> bool:
    return getattr(handler, _TAG, None) is not None


def _is_console(handler: logging.Handler) -> bool:
    """A handler that writes to the terminal: a StreamHandler on stdout/stderr (not a file), or a RichHandler."""
    if type(handler).__name__ == "RichHandler":
        return True
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    if type(getattr(handler, "stream", None)).__name__ == "MlflowLoggingStream":
        # MLflow's handlers (on mlflow, alembic, sqlalchemy.engine, huey when MLflow was imported before
        # MLFLOW_CONFIGURE_LOGGING=false was set) write to whatever sys.stderr is through this wrapper
        return True
    streams = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s is not None}
    return id(getattr(handler, "stream", None)) in streams


def _file_handler(path: Path, level: int, role: str) -> logging.FileHandler:
    path.parent.mkdir(parents=True, exist_ok=True)
    h = logging.FileHandler(path, encoding="utf-8", delay=False)
    h.setLevel(level)
    h.setFormatter(logging.Formatter(FILE_FORMAT))
    _mark(h, role)
    return h


def _handlers() -> list[logging.Handler]:
    out: list[logging.Handler] = []
    if _state.console is not None:
        out.append(_state.console)
    if _state.file is not None:
        out.append(_state.file)
    out.extend(h for h, _ in _state.runs.values())
    return out


def _ensure_console() -> logging.Handler:
    if _state.console is None:
        h = _StderrHandler(sys.stderr)
        h.setLevel(logging.INFO if _state.verbose else logging.WARNING)
        h.setFormatter(logging.Formatter(CONSOLE_FORMAT))
        _state.console = _mark(h, "console")
    return _state.console


def _threshold(handlers: list[logging.Handler]) -> int:
    """The lowest level any of packager's handlers takes: loggers need not create records below it."""
    return min((h.level or logging.DEBUG for h in handlers), default=logging.WARNING)


def _install(logger: logging.Logger, handlers: list[logging.Handler]) -> None:
    """Give `logger` exactly packager's current handlers; drop its other console handlers (stdout/stderr)."""
    for h in list(logger.handlers):
        if (h not in handlers) if _is_ours(h) else _is_console(h):
            logger.removeHandler(h)
    for h in handlers:
        if h not in logger.handlers:
            logger.addHandler(h)


def _detach(handler: logging.Handler) -> None:
    for lg in [logging.getLogger(), *(logging.getLogger(n) for n in LIBRARY_LOGGERS)]:
        lg.removeHandler(handler)


def quiet_library_loggers() -> None:
    """Apply the rule (module docstring) to the root logger and to every logger in LIBRARY_LOGGERS, now.

    configure_logging and attach_run_log call it. Call it again after importing a library that installs its own
    console handler when imported (vLLM, transformers), if that import came after configure_logging; MLflow is
    told not to (MLFLOW_CONFIGURE_LOGGING=false unless set).
    """
    with _lock:
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
        _ensure_console()
        handlers = _handlers()
        level = _threshold(handlers)
        # The root logger loses only handlers on the real stdout/stderr: a test runner's capture handlers stay.
        root = logging.getLogger()
        _install(root, handlers)
        root.setLevel(level)
        for name in LIBRARY_LOGGERS:
            lg = logging.getLogger(name)
            _install(lg, handlers)
            lg.setLevel(max(level, MIN_LEVELS.get(name, logging.NOTSET)))
            lg.propagate = False  # a console handler added to the root logger later never sees them
            lg.disabled = False


def configure_logging(verbose: bool, log_file: Path | None = None) -> None:
    """Send WARNING and above to the console (stderr), INFO too when `verbose`; and, when `log_file` is given,
    everything from INFO up, libraries included, to that file (appended to; parent folders created).

    Calling it again replaces the previous console level and log file (no handler is added twice); handlers of
    attach_run_log blocks stay.
    """
    with _lock:
        _state.verbose = bool(verbose)
        _ensure_console().setLevel(logging.INFO if verbose else logging.WARNING)
        new_path = Path(log_file).resolve() if log_file is not None else None
        old = _state.file
        if old is not None and (new_path is None or Path(old.baseFilename) != new_path):
            _state.file = None
            _detach(old)
            old.close()
        if new_path is not None and _state.file is None:
            _state.file = _file_handler(new_path, logging.INFO, "file")
        quiet_library_loggers()


def is_verbose() -> bool:
    """True after `configure_logging(verbose=True)` (`packager --verbose ...`)."""
    return _state.verbose


def run_log_path(path: Path) -> Path:
    """The file attach_run_log(path) writes: PATH/packager.log for an existing directory, else PATH itself."""
    p = Path(path)
    return p / RUN_LOG_NAME if p.is_dir() else p


@contextlib.contextmanager
def attach_run_log(path: Path, level: int = logging.INFO) -> Iterator[Path]:
    """Also write log records from `level` up, libraries included, into a run's log while the block runs.

    `path` is the run directory (an existing directory: the log is PATH/packager.log) or a log file (appended
    to; parent folders created). Yields the log file's path. Nested or repeated blocks on the same file share
    one handler, removed and closed when the outermost block ends. The console stays as configure_logging set
    it (quiet, WARNING and above, when configure_logging was never called).

        from packager.core.logs import attach_run_log

        with attach_run_log(run_dir):
            run_the_steps()
    """
    target = run_log_path(Path(path)).resolve()
    with _lock:
        entry = _state.runs.get(target)
        if entry is None:
            entry = [_file_handler(target, level, "run"), 0]
            _state.runs[target] = entry
        entry[1] += 1
        quiet_library_loggers()
    try:
        yield target
    finally:
        with _lock:
            entry[1] -= 1
            if entry[1] <= 0:
                _state.runs.pop(target, None)
                _detach(entry[0])
                entry[0].close()
                quiet_library_loggers()
