"""packager.core.progress.progress_bar: the columns it draws, fields, disabled and terminal-only modes."""
from __future__ import annotations

import io
import threading

from rich.console import Console

from packager.core.progress import progress_bar


def plain_console(terminal: bool = False) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=120, color_system=None)


def test_disabled_draws_nothing_and_counts():
    con = plain_console(terminal=True)
    with progress_bar("evaluate x", total=3, enabled=False, console=con) as bar:
        assert not bar.enabled
        bar.advance()
        bar.advance(2, info="ignored")
        bar.update(description="other", info="x")
        bar.print("nothing")
    assert bar.completed == 3
    assert con.file.getvalue() == ""  # type: ignore[attr-defined]


def test_final_state_shows_description_count_and_times():
    con = plain_console()
    with progress_bar("evaluate [model]", total=5, console=con) as bar:
        assert bar.enabled
        for _ in range(3):
            bar.advance()
    out = con.file.getvalue()  # type: ignore[attr-defined]
    assert "evaluate [model]" in out  # taken literally, not as markup
    assert "3/5" in out and "0:00:00" in out


def test_text_columns_show_fields_and_finish_fills_the_bar():
    con = plain_console()
    with progress_bar("distill", total=10, completed=4, console=con, text=["loss {loss}", "held-out KL {kl}"],
                      fields={"loss": "-", "kl": "-"}, eta=False) as bar:
        bar.update(completed=6, loss="0.1234")
        bar.finish()
    out = con.file.getvalue()  # type: ignore[attr-defined]
    assert "10/10" in out and "loss 0.1234" in out and "held-out KL -" in out


def test_indeterminate_then_known_total_without_count():
    con = plain_console()
    with progress_bar("load test", console=con, count=False, eta=False, text=["{info}"],
                      fields={"info": "starting locust"}) as bar:
        bar.update(total=60, completed=30, info="123 requests done")
    out = con.file.getvalue()  # type: ignore[attr-defined]
    assert "load test" in out and "123 requests done" in out and "30/60" not in out
    assert bar.total == 60 and bar.completed == 30


def test_terminal_only_draws_nothing_on_a_pipe():
    con = plain_console(terminal=False)
    with progress_bar("perplexity", total=2, console=con, terminal_only=True) as bar:
        bar.advance(2)
    assert not bar.enabled and con.file.getvalue() == ""  # type: ignore[attr-defined]


def test_transient_leaves_nothing_behind():
    con = plain_console()
    with progress_bar("load test", total=2, console=con, transient=True) as bar:
        bar.advance(2)
    assert "load test" not in con.file.getvalue()  # type: ignore[attr-defined]


def test_advance_from_threads():
    with progress_bar("x", total=800, console=plain_console()) as bar:
        threads = [threading.Thread(target=lambda: [bar.advance() for _ in range(100)]) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert bar.completed == 800


def test_on_a_pipe_a_plain_line_says_the_work_goes_on_at_most_every_log_every_s(monkeypatch):
    """Where rich draws a bar only once it ends (a CI log, redirected output), plain lines report the count as the
    work advances; never more often than log_every_s (a fake clock: 10 s per advance, a line every 25 s)."""
    import packager.core.progress as P

    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(P, "_now", lambda: float(next(clock)))
    con = plain_console(terminal=False)
    with progress_bar("fidelity corpus", total=8, console=con, log_every_s=25) as bar:
        for _ in range(8):
            bar.advance()
    lines = [ln for ln in con.file.getvalue().splitlines() if "elapsed" in ln]  # type: ignore[attr-defined]
    assert lines == ["fidelity corpus: 3/8 (38%), 0:00:30 elapsed", "fidelity corpus: 6/8 (75%), 0:01:00 elapsed"]


def test_plain_lines_follow_the_description_and_an_unknown_total():
    con = plain_console(terminal=False)
    with progress_bar("export", total=None, console=con, log_every_s=0) as bar:
        bar.advance(2)
        bar.update(description="export q8_0", total=4, completed=3)
    lines = [ln for ln in con.file.getvalue().splitlines() if "elapsed" in ln]  # type: ignore[attr-defined]
    assert [ln.split(", ")[0] for ln in lines] == ["export: 2", "export q8_0: 3/4 (75%)"]


def test_a_terminal_gets_the_live_bar_and_no_plain_lines():
    con = plain_console(terminal=True)
    with progress_bar("evaluate", total=3, console=con, log_every_s=0) as bar:
        bar.advance(3)
    assert "elapsed" not in con.file.getvalue()  # type: ignore[attr-defined]
