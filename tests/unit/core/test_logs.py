"""packager.core.logs: a quiet console (warnings and errors), library INFO only in a log file unless verbose,
idempotent configuration, and attach_run_log for the duration of a run."""
from __future__ import annotations

import logging
import sys

import pytest

from packager.core import logs


@pytest.fixture(autouse=True)
def clean_logging(monkeypatch):
    """Restore the logging state (root, library loggers, packager's handlers) after each test."""
    monkeypatch.setenv("MLFLOW_CONFIGURE_LOGGING", "false")
    names = ["", *logs.LIBRARY_LOGGERS]
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level, logging.getLogger(n).propagate,
                 logging.getLogger(n).disabled) for n in names}
    state = (logs._state.verbose, logs._state.console, logs._state.file, dict(logs._state.runs))
    logs._state.verbose, logs._state.console, logs._state.file, logs._state.runs = False, None, None, {}
    yield
    for h in [logs._state.file, *(h for h, _ in logs._state.runs.values())]:
        if h is not None:
            h.close()
    logs._state.verbose, logs._state.console, logs._state.file, logs._state.runs = state
    for n, (handlers, level, propagate, disabled) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled


def ours(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if logs._is_ours(h)]


def test_quiet_console_shows_warnings_not_library_info(capsys):
    logs.configure_logging(verbose=False)
    logging.getLogger("httpx").info('HTTP Request: GET http://x/v1/models "HTTP/1.1 200 OK"')
    logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
    logging.getLogger("packager.something").info("a packager info line")
    logging.getLogger("httpx").warning("a library warning")
    logging.getLogger("packager.something").error("a packager error")
    err = capsys.readouterr().err
    assert "HTTP Request:" not in err and "Creating initial" not in err and "a packager info line" not in err
    assert "WARNING httpx: a library warning" in err
    assert "ERROR packager.something: a packager error" in err


def test_verbose_console_shows_library_info(capsys):
    logs.configure_logging(verbose=True)
    logging.getLogger("httpx").info('HTTP Request: POST http://x/v1/chat/completions "HTTP/1.1 200 OK"')
    assert "INFO httpx: HTTP Request: POST" in capsys.readouterr().err
    logs.configure_logging(verbose=False)  # back to quiet: the same handler, its level raised
    logging.getLogger("httpx").info("HTTP Request: again")
    assert "again" not in capsys.readouterr().err


def test_log_file_gets_library_info_the_console_does_not(tmp_path, capsys, monkeypatch):
    # An earlier test in the same process may have run MLflow's database migrations, which leave alembic's
    # loggers disabled or raised: start this logger from its default state.
    lib = logging.getLogger("alembic.runtime.migration")
    monkeypatch.setattr(lib, "disabled", False)
    monkeypatch.setattr(lib, "level", logging.NOTSET)
    log = tmp_path / "logs" / "run.log"
    logs.configure_logging(verbose=False, log_file=log)
    logging.getLogger("httpx").info("HTTP Request: GET http://x/metrics")
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    logging.getLogger("packager.release").info("variant w8a8 done")
    assert capsys.readouterr().err == ""
    text = log.read_text()
    assert "INFO httpx: HTTP Request: GET http://x/metrics" in text
    assert "Context impl SQLiteImpl." in text and "variant w8a8 done" in text


def test_configure_twice_adds_no_handler(tmp_path):
    log = tmp_path / "run.log"
    logs.configure_logging(verbose=False, log_file=log)
    logs.configure_logging(verbose=True, log_file=log)
    logs.configure_logging(verbose=False, log_file=log)
    for name in ("", "httpx", "mlflow", "vllm"):
        assert len(ours(logging.getLogger(name))) == 2, name  # one console, one file
    logging.getLogger("httpx").info("once")
    assert log.read_text().count("once") == 1
    logs.configure_logging(verbose=False)  # no file any more: its handler goes and is closed
    assert len(ours(logging.getLogger())) == 1 and len(ours(logging.getLogger("httpx"))) == 1


def test_library_console_handlers_are_replaced(capsys):
    """A library's own stderr handler (MLflow, vLLM, transformers install one) stops printing INFO."""
    own = logging.StreamHandler(sys.stderr)
    lib = logging.getLogger("vllm")
    lib.addHandler(own)
    lib.propagate = False
    lib.setLevel(logging.INFO)
    logs.configure_logging(verbose=False)
    assert own not in lib.handlers
    lib.info("Automatically detected platform cpu.")
    assert "Automatically detected" not in capsys.readouterr().err


def test_root_console_handler_added_later_never_sees_library_records(capsys, tmp_path):
    """logging.basicConfig(level=INFO) by some library after configure_logging: httpx still not on the console."""
    with logs.attach_run_log(tmp_path):
        logs.configure_logging(verbose=False)
        late = logging.StreamHandler(sys.stderr)
        logging.getLogger().addHandler(late)
        try:
            logging.getLogger("httpx").info("HTTP Request: GET http://x/v1/models")
        finally:
            logging.getLogger().removeHandler(late)
    assert "HTTP Request" not in capsys.readouterr().err
    assert "HTTP Request: GET http://x/v1/models" in (tmp_path / logs.RUN_LOG_NAME).read_text()


def test_attach_run_log_for_the_duration_of_a_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    logs.configure_logging(verbose=False)
    logging.getLogger("httpx").info("before the run")
    with logs.attach_run_log(run_dir) as path:
        assert path == (run_dir / "packager.log").resolve()
        with logs.attach_run_log(run_dir):  # nested, same file: shares the handler
            assert len(ours(logging.getLogger("httpx"))) == 2
            logging.getLogger("httpx").info("HTTP Request: during the run")
        logging.getLogger("bentoml").info("still in the run")
    logging.getLogger("httpx").info("after the run")
    text = path.read_text()
    assert text.count("HTTP Request: during the run") == 1 and "still in the run" in text
    assert "before the run" not in text and "after the run" not in text
    assert len(ours(logging.getLogger("httpx"))) == 1 and len(ours(logging.getLogger())) == 1
    assert "HTTP Request" not in capsys.readouterr().err


def test_attach_run_log_to_a_file_without_configure_keeps_warnings_on_the_console(tmp_path, capsys):
    log = tmp_path / "sub" / "x.log"
    with logs.attach_run_log(log) as path:
        assert path == log.resolve()
        logging.getLogger("urllib3.connectionpool").info("Starting new HTTP connection")
        logging.getLogger("filelock").warning("lock held too long")
    err = capsys.readouterr().err
    assert "Starting new HTTP connection" not in err and "lock held too long" in err
    assert "Starting new HTTP connection" in log.read_text()


def test_mlflow_console_handlers_are_replaced(capsys, monkeypatch):
    """MLflow imported before configure_logging puts a StreamHandler on "alembic" (and mlflow, sqlalchemy.engine,
    huey) that writes to the current stderr through its MlflowLoggingStream: it goes like any console handler."""

    class MlflowLoggingStream:  # the name MLflow gives its stream wrapper
        def write(self, text):
            sys.stderr.write(text)

        def flush(self):
            sys.stderr.flush()

    lib = logging.getLogger("alembic")
    own = logging.StreamHandler(MlflowLoggingStream())
    monkeypatch.setattr(lib, "handlers", [own])
    logs.configure_logging(verbose=False)
    assert own not in lib.handlers
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    assert "Context impl" not in capsys.readouterr().err


def test_sqlalchemy_statements_stay_out_of_the_log_file(tmp_path, monkeypatch):
    """SQLAlchemy's INFO is its SQL echo (MLflow's registry runs thousands of statements in a release)."""
    # An earlier test in the same process may have run MLflow, whose logging setup gives "sqlalchemy.engine" a
    # handler of its own and stops it propagating: start both loggers from their default state, children that
    # inherit from "sqlalchemy".
    for name in ("sqlalchemy.engine", "sqlalchemy.engine.Engine"):
        lg = logging.getLogger(name)
        monkeypatch.setattr(lg, "disabled", False)
        monkeypatch.setattr(lg, "level", logging.NOTSET)
        monkeypatch.setattr(lg, "propagate", True)
        monkeypatch.setattr(lg, "handlers", [])
    engine = logging.getLogger("sqlalchemy.engine.Engine")
    log = tmp_path / "run.log"
    logs.configure_logging(verbose=True, log_file=log)
    assert not engine.isEnabledFor(logging.INFO)  # SQLAlchemy checks this to decide whether to echo
    engine.info("SELECT registered_models.name FROM registered_models")
    engine.warning("a pool warning")
    logging.getLogger("httpx").info("HTTP Request: GET http://x/metrics")
    text = log.read_text()
    assert "SELECT registered_models" not in text
    assert "WARNING sqlalchemy.engine.Engine: a pool warning" in text and "HTTP Request" in text
    logs.configure_logging(verbose=False)
