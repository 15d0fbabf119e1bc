"""Renderers: JSON round-trip, Markdown content, and a self-contained HTML page with six inline SVG plots."""
from __future__ import annotations

import json
import re
import stat
from html.parser import HTMLParser

import pytest

from packager.report.analysis import consistency_problems, recommend
from packager.report.model import LoadSummary, Recommendation, Report, VariantResult
from packager.report.render import (
    PLOT_IDS,
    plot_categories,
    plot_gate,
    plot_latency,
    plot_pareto,
    plot_sweep,
    plot_timings,
    render_html,
    render_markdown,
    to_json,
    write_report,
)

from unit.report.sample import sample_report

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class PageParser(HTMLParser):
    """Records, for every element with an id, the tags nested inside it; and every text run."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str | None]] = []
        self.inside: dict[str, list[str]] = {}
        self.text: list[str] = []
        self.tags: list[str] = []

    def _enter(self, tag: str, attrs, closes: bool) -> None:
        self.tags.append(tag)
        for _, ident in self.stack:
            if ident is not None:
                self.inside[ident].append(tag)
        ident = dict(attrs).get("id")
        if ident is not None and not closes:
            self.inside.setdefault(ident, [])
        if not closes and tag not in VOID:
            self.stack.append((tag, ident))

    def handle_starttag(self, tag, attrs):
        self._enter(tag, attrs, closes=False)

    def handle_startendtag(self, tag, attrs):
        self._enter(tag, attrs, closes=True)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1][0] != tag:
            raise AssertionError(f"unbalanced </{tag}>; open: {[t for t, _ in self.stack[-5:]]}")
        self.stack.pop()

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())


def parse(page: str) -> PageParser:
    p = PageParser()
    p.feed(page)
    p.close()
    assert p.stack == [], f"unclosed elements: {p.stack}"
    return p


@pytest.fixture(scope="module")
def report() -> Report:
    return sample_report()


@pytest.fixture(scope="module")
def page(report) -> str:
    return render_html(report)


# ------------------------------------------------------------------------------------------------------------ JSON
def test_sample_is_consistent_and_recommends_the_cheaper_int8(report):
    assert consistency_problems(report) == []
    assert report.recommendation.variant == "w8a8-int8"
    assert report.pareto == ["w8a8-int8", "baseline"]


def test_json_round_trips_to_an_equal_report(report):
    text = to_json(report)
    data = json.loads(text)
    assert data["schema_version"] == 1 and data["recommendation"]["variant"] == "w8a8-int8"
    back = Report.model_validate_json(text)
    assert back == report
    assert back.variant("baseline").load.ttft_ms_samples == report.variant("baseline").load.ttft_ms_samples


# -------------------------------------------------------------------------------------------------------- Markdown
def test_markdown_has_recommendation_first_then_one_table(report):
    md = render_markdown(report)
    lines = md.splitlines()
    assert lines[0] == "# packager release report: SmolLM2-135M-Instruct"
    rec_at = md.index("## Recommendation")
    assert md.index("**Deploy w8a8-int8.**") > rec_at
    header = ("| variant | size (MB) | params | task score | recovery | perplexity | agreement | prefix match (tokens) | mean KL | TTFT p50 (ms) "
              "| TTFT p95 (ms) | TPOT p50 (ms) | TPOT p95 (ms) | output tok/s | goodput (req/s) | within SLO "
              "| USD / 1M output tokens | verdict |")
    assert header in lines
    assert md.index(header) > md.index("**Deploy w8a8-int8.**")
    row = next(line for line in lines if line.startswith("| w8a8-int8 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:9] == ["w8a8-int8 ★ ◆", "172.4", "134.5M", "0.605", "97.6%", "14.39", "91.0%", "—", "0.0123"]
    assert cells[13] == "487.0" and cells[16] == "0.102" and cells[17] == "recommended"
    failed = next(line for line in lines if line.startswith("| gptq-w4a16 "))
    assert "load test failed: no request completed (12 error(s))" in failed
    # html in an error message is neutralised
    assert "<script>" not in md and "&lt;script>x&lt;/script>" in md


def test_markdown_has_every_section_and_the_config(report):
    md = render_markdown(report)
    order = ["## Recommendation", "## Variants", "## Scores by category", "## Compression stages", "## Load tests",
             "### Sweep: baseline", "## Timings", "## Versions and platform", "## Notes", "## Configuration"]
    positions = [md.index(h) for h in order]
    assert positions == sorted(positions)
    assert "| instruction following | 0.660 | 0.650 | 0.520 |" in md
    assert "| w8a8-int8 | 1 | 01-w8a8_int8 | w8a8_int8 | 41.7 s | 172.4 | 134.5M | 1,834 |" in md
    assert "- `baseline` figures at: the highest load meeting the SLOs (16 users)" in md
    assert "- `baseline` warning: phase 5: 3 responses carried no usage block" in md
    assert "- `gptq-w4a16` failed: load test failed: no request completed (12 error(s))" in md
    assert "| total | 1,350 s (22.5 min) | 75.0% |" in md
    assert "Within the time budget: 1,350 s (22.5 min) of 1,800 s (30.0 min) (75.0%)." in md
    cfg = md[md.index("```yaml") + len("```yaml"):md.rindex("```")]
    import yaml

    assert yaml.safe_load(cfg) == report.config


def test_a_recorded_total_is_used_rather_than_the_sum_of_steps():
    r = sample_report()
    r.timings_s = {"baseline/evaluate": 100.0, "baseline/loadtest": 200.0, "total": 400.0}
    md = render_markdown(r)
    assert "| total | 400 s (6.7 min) | 22.2% |" in md and md.count("| total |") == 1
    assert "Within the time budget: 400 s (6.7 min) of 1,800 s (30.0 min) (22.2%)." in md


def test_markdown_says_when_nothing_is_recommended_and_over_budget():
    r = sample_report()
    r.quality_floor = 1.01  # even the baseline falls short
    r.recommendation = recommend(r.variants, 1.01, 2000, 250)
    r.time_budget_s = 1000.0
    md = render_markdown(r)
    assert "**No variant is recommended.** No variant meets both the quality floor and the SLO: " in md
    assert "baseline recovers 100% &lt; floor 101%" in md
    assert "w8a8-int8 recovers 98% &lt; floor 101%" in md
    assert "OVER the time budget by 350 s (5.8 min)" in md


# ------------------------------------------------------------------------------------------------------------ HTML
def test_html_parses_with_a_container_per_plot_each_holding_an_svg(page):
    p = parse(page)
    for pid in PLOT_IDS:
        assert pid in p.inside, f"no element with id={pid}"
        assert "svg" in p.inside[pid], f"{pid} holds no <svg>"
        assert "path" in p.inside[pid]
    assert p.tags.count("table") >= 7


def test_html_is_self_contained_and_escaped(page):
    assert "<script" not in page.lower()  # the sample's error message holds a <script> tag: it must be escaped
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    assert not re.search(r"<link\b|\bsrc\s*=|@import|url\(\s*['\"]?(https?:|//)", page, flags=re.I)
    # the only URLs are XML namespace names of the inline SVGs (never fetched)
    urls = set(re.findall(r"https?://[^\"'\s)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    # ids are unique across the inline SVGs
    ids = re.findall(r'\bid="([^"]+)"', page)
    dupes = {i for i in ids if ids.count(i) > 1}
    assert not dupes, sorted(dupes)[:5]


def test_html_shows_the_recommendation_table_and_the_failed_load_test(page, report):
    p = parse(page)
    text = " ".join(p.text)
    assert text.index("Deploy w8a8-int8.") < text.index("Variants")
    assert report.recommendation.reason in text
    assert "load test failed: no request completed (12 error(s)): bento gptq-w4a16 did not become ready" in text
    assert 'class="failed" colspan="8"' in page
    for header in ("TTFT p95 (ms)", "TPOT p50 (ms)", "USD / 1M output tokens", "goodput (req/s)", "within SLO"):
        assert header in text
    assert "model: default" in page  # the configuration, as YAML


def test_each_plot_has_title_axis_labels_and_legend(report):
    # matplotlib writes each text run as a comment before its glyph paths
    expect = {
        plot_pareto: ["Quality vs cost", "USD per 1M output tokens", "recovery (% of baseline task score)",
                      "Pareto frontier", "recommended: w8a8-int8", "quality floor 90%",
                      "not plotted (no quality or cost figure): gptq-w4a16"],
        plot_latency: ["Time to first token", "TTFT (ms)", "TPOT (ms)", "SLO 2000 ms", "SLO 250 ms", "SLO limit",
                       "no samples: gptq-w4a16"],
        plot_sweep: ["Throughput", "output tokens/s", "TTFT p95 (ms)", "offered load (concurrent users)",
                     "SLO TTFT 2000 ms"],
        plot_categories: ["Task score by category", "task score (share of items passed)", "category",
                          "instruction following", "gptq-w4a16"],
    }
    for fn, words in expect.items():
        svg = fn(report)
        assert svg is not None and svg.startswith("<svg ")
        comments = " ".join(re.findall(r"<!-- (.*?) -->", svg, flags=re.S))
        for w in words:
            assert w in comments, f"{fn.__name__}: {w!r} missing"


def test_the_sweep_plot_marks_the_capacity_the_search_found(report):
    def words(svg: str) -> str:
        return " ".join(re.findall(r"<!-- (.*?) -->", svg, flags=re.S))

    assert "capacity at the SLO (search)" not in words(plot_sweep(report))  # no search ran
    v = next(x for x in report.variants if x.load and x.load.sweep)
    v.load.max_load_meeting_slo, v.load.knee_probes, v.load.knee_resolved = 3.0, 2, True
    svg = plot_sweep(report)
    assert "capacity at the SLO (search)" in words(svg)
    # the star sits on the TTFT SLO line: without an SLO there is nothing to mark it on
    assert "capacity at the SLO (search)" not in words(plot_sweep(report.model_copy(deep=True, update={"slo": {}})))


def minimal_report(**variant_kw) -> Report:
    v = VariantResult(name="only", is_baseline=True, **variant_kw)
    return Report(model="m", baseline="only", quality_floor=0.9, variants=[v],
                  recommendation=Recommendation(variant=None, reason="nothing measured"))


def test_empty_data_renders_without_plots_and_says_why():
    r = minimal_report()
    for fn in (plot_pareto, plot_gate, plot_latency, plot_sweep, plot_categories, plot_timings):
        assert fn(r) is None
    page = render_html(r)
    p = parse(page)
    for pid in PLOT_IDS:
        assert pid in p.inside and "svg" not in p.inside[pid]
    text = " ".join(p.text)
    assert "No load sweep was run" in text and "No per-request latency samples were recorded" in text
    assert "No variant is recommended." in text
    md = render_markdown(r)
    assert "No per-category scores were recorded." in md


def test_partial_data_plots_what_exists():
    r = minimal_report(score=0.5, load=LoadSummary(requests=3, output_tokens_per_s=10.0, usd_per_hour=1.0,
                                                    usd_per_million_output_tokens=1e6 / 36000,
                                                    ttft_ms_samples=[5.0], tpot_ms_samples=[]))
    assert plot_pareto(r) is not None
    assert plot_latency(r) is not None  # one TTFT sample, no TPOT samples
    assert plot_sweep(r) is None


def test_a_plot_that_raises_does_not_sink_the_report(monkeypatch):
    import packager.report.render as render

    def boom(_report):
        raise ValueError("bad data <x>")

    monkeypatch.setattr(render, "PLOTS", [(pid, t, boom if pid == "plot-sweep" else fn, c, e)
                                          for pid, t, fn, c, e in render.PLOTS])
    page = render.render_html(sample_report())
    assert "This plot could not be drawn: ValueError: bad data &lt;x&gt;" in page
    assert "svg" in parse(page).inside["plot-pareto"]


def test_write_report_writes_three_readable_files_atomically(tmp_path, report):
    out = tmp_path / "run" / "report"
    paths = write_report(report, out)
    assert set(paths) == {"json", "markdown", "html"}
    assert {p.name for p in paths.values()} == {"report.json", "report.md", "report.html"}
    assert sorted(x.name for x in out.iterdir()) == ["report.html", "report.json", "report.md"]  # no temp files
    assert Report.model_validate_json(paths["json"].read_text()) == report
    assert paths["markdown"].read_text().startswith("# packager release report")
    assert paths["html"].read_text().startswith("<!DOCTYPE html>")
    assert paths["html"].stat().st_mode & stat.S_IROTH or paths["html"].stat().st_mode & stat.S_IRGRP


def test_write_report_leaves_old_files_when_rendering_fails(tmp_path, report, monkeypatch):
    import packager.report.render as render

    write_report(report, tmp_path)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    monkeypatch.setattr(render, "render_markdown", lambda r: (_ for _ in ()).throw(RuntimeError("disk on fire")))
    with pytest.raises(RuntimeError):
        render.write_report(report, tmp_path)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def test_gate_plot_marks_each_variant_passed_or_rejected_and_shows_kl_only_when_measured():
    """One row per compressed variant: filled marker when it passes the gate, hollow (white) when rejected, in its
    own colour; a KL panel beside the recovery panel only when some variant has a KL."""
    from packager.report.plots import _variant_colors

    r = sample_report().model_copy(deep=True)
    r.gate = {"use_lower_bound": True, "lower_bound_floor": 0.93, "max_kl": 0.01}
    r.noise_floor = {"mean_kl": 0.001}
    compressed = [v for v in r.variants if not v.is_baseline]
    assert len(compressed) >= 2
    for i, v in enumerate(compressed):
        v.meets_quality_floor = i == 0
        v.recovery_ci = (v.recovery - 0.05, v.recovery + 0.05)
    colors = _variant_colors(r)
    svg = plot_gate(r)
    assert svg is not None and svg.count('<g id="plot-gate-axes_') == 2
    passed, rejected = colors[compressed[0].name], colors[compressed[1].name]
    assert f"fill: {passed}; stroke: {passed}" in svg
    assert f"fill: #ffffff; stroke: {rejected}" in svg and f"fill: {rejected}; stroke: {rejected}" not in svg
    for v in r.variants:
        v.fidelity_mean_kl = None
    svg = plot_gate(r)
    assert svg is not None and svg.count('<g id="plot-gate-axes_') == 1
    for v in compressed:
        v.recovery, v.score = None, None
    assert plot_gate(r) is None


def test_timings_plot_stacks_each_variants_steps_by_kind():
    """One bar per variant with a segment per kind of step (behaviour checks count as evaluation; register and
    build as other); steps without a variant form a row "run"; the total is not a segment."""
    from packager.report.plots import timing_bars

    r = sample_report().model_copy(deep=True)
    first, second = r.variants[0].name, r.variants[1].name
    r.timings_s = {f"{first}/serve_start": 120.0, f"{first}/evaluate": 200.0, f"{first}/evaluate_behaviour": 10.0,
                   f"{first}/noise_floor": 90.0, f"{second}/compress": 300.0, f"{second}/register": 1.0,
                   f"{second}/build": 4.0, f"{second}/loadtest": 130.0, "report": 2.0, "total": 900.0}
    bars = timing_bars(r)
    assert list(bars)[:2] == [first, second] and bars["run"] == {"other": 2.0}
    assert bars[first] == {"engine start": 120.0, "evaluation": 210.0, "noise floor": 90.0}
    assert bars[second] == {"compression": 300.0, "other": 5.0, "load test": 130.0}
    svg = plot_timings(r)
    # the title carries the run's recorded total; each bar ends with its own sum (text as paths, its source in a comment)
    assert svg is not None and "(15.0 min in all)" in svg and " 7.0 min" in svg
    assert svg.count('<g id="plot-timings-patch_') >= 7 + 1  # seven segments (and the axes' background)
    r.timings_s = {"total": 5.0}
    assert plot_timings(r) is None
