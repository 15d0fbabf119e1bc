"""The HTML release report in a real headless Chromium (Debian's `chromium` package; `make test` installs it):
no console errors, the six plot containers hold rendered <svg> elements after load, and a screenshot of the page
is not blank and shows the plots' colours. Chromium is driven from its command line (--dump-dom, --screenshot):
no Selenium or Playwright."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from packager.report.render import PLOT_IDS, write_report

from unit.report.sample import sample_report

pytestmark = pytest.mark.slow


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


CHROMIUM = chromium_binary()
if CHROMIUM is None:
    pytest.skip("no chromium binary on PATH or at /usr/bin/chromium; install Debian's package "
                "(`apt-get install -y chromium`, done by `make system-deps`) to check the HTML report in a browser",
                allow_module_level=True)


def run_chromium(url: str, profile: Path, *extra: str, timeout_s: float = 180.0) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited {proc.returncode}: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc


def console_problems(stderr: str) -> list[str]:
    """Console messages of the page (errors, warnings, failed loads) and uncaught exceptions. The report page has
    no script, so any console line at all is a problem."""
    return [line for line in stderr.splitlines() if "Uncaught" in line or "ERROR:CONSOLE" in line
            or ":CONSOLE" in line]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    paths = write_report(sample_report(), out)
    url = paths["html"].resolve().as_uri()
    dom = run_chromium(url, out / "profile-dom", "--dump-dom")
    shot = out / "screenshot.png"
    shot_proc = run_chromium(url, out / "profile-shot", f"--screenshot={shot}", "--window-size=1400,3000",
                             "--hide-scrollbars")
    keep = os.environ.get("PACKAGER_KEEP_SCREENSHOT")
    if keep:  # to look at it: PACKAGER_KEEP_SCREENSHOT=/tmp/report.png pytest ...
        shutil.copy(shot, keep)
    return {"dom": dom.stdout, "dom_stderr": dom.stderr, "shot": shot, "shot_stderr": shot_proc.stderr}


def test_console_detector_catches_a_script_error(tmp_path):
    """The check below is not vacuous: a page with an uncaught exception is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>notDefined();</script></body></html>")
    proc = run_chromium(bad.as_uri(), tmp_path / "profile", "--dump-dom")
    assert any("Uncaught ReferenceError: notDefined is not defined" in line for line in console_problems(proc.stderr))


def test_no_console_errors_on_load(rendered):
    assert console_problems(rendered["dom_stderr"]) == []
    assert console_problems(rendered["shot_stderr"]) == []


def test_dom_after_load_holds_every_plot_svg(rendered):
    dom = rendered["dom"]
    assert dom.lstrip().lower().startswith("<!doctype html>") or dom.lstrip().startswith("<html")
    for pid in PLOT_IDS:
        m = re.search(rf'<figure[^>]*\bid="{pid}"[^>]*>(.*?)</figure>', dom, flags=re.S)
        assert m, f"no <figure id={pid}> in the DOM chromium built"
        inner = m.group(1)
        assert re.search(r"<svg\b[^>]*viewBox=", inner), f"{pid}: no <svg> in the DOM"
        assert inner.count("<path") > 20, f"{pid}: the svg holds almost nothing"
    assert "Deploy w8a8-int8." in dom
    assert "&lt;script&gt;x&lt;/script&gt;" in dom and "<script>x" not in dom


def test_screenshot_is_not_blank_and_shows_the_plots(rendered):
    from PIL import Image, ImageStat

    shot: Path = rendered["shot"]
    assert shot.is_file() and shot.stat().st_size > 20_000
    img = Image.open(shot).convert("RGB")
    assert img.size == (1400, 3000)
    stddev = ImageStat.Stat(img.convert("L")).stddev[0]
    assert stddev > 15, f"screenshot looks blank (grey-level stddev {stddev:.1f})"
    # the variants' colours (matplotlib tab10 blue, orange, green) appear in quantity: the SVG plots were painted
    import numpy as np

    px = np.asarray(img.resize((700, 1500)), dtype=np.int16)
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    counts = {"blue": int(((b > 150) & (r < 90) & (g > 90) & (g < 150)).sum()),
              "orange": int(((r > 220) & (g > 100) & (g < 160) & (b < 60)).sum()),
              "green": int(((g > 130) & (r < 80) & (b < 80)).sum())}
    assert all(n > 300 for n in counts.values()), counts
