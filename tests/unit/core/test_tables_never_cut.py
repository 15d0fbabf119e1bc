"""Tables never cut a figure: every rich Table the CLI prints folds or wraps a long cell instead of ending it
with "…", at any console width (a non-interactive console is 80 columns; `packager loadtest` once printed
req/s as `1898.…` there).

Each table is built by the function the command uses, with long values (7-digit counts, 1898.12 req/s, long
model names, dates, hashes, 12 columns), and printed on a plain (non-terminal) console 40, 60, 80 and 120
columns wide. Checks: no "…" anywhere; every figure is whole in its column once the line breaks that folding
adds are removed. A folded cell's pieces are on consecutive lines of its column, with other columns' cells in
between on the same lines, so the text of each column is put back together first: every column is tagged
with a style of its own (a link target, which changes nothing in the layout) and the rendered segments are
grouped by that tag.
"""
from __future__ import annotations

import io
import re
from types import SimpleNamespace
from typing import Any, Iterable

import pytest
from rich.console import Console, Group
from rich.panel import Panel
from rich.style import Style
from rich.table import Table

WIDTHS = (40, 60, 80, 120)
ELLIPSIS = "…"
_SPACE_AND_BOX = re.compile(r"[\s\u2500-\u257f]")  # whitespace and box-drawing characters


def squash(text: str) -> str:
    return _SPACE_AND_BOX.sub("", text)


def tables_in(renderable: Any) -> Iterable[Table]:
    if isinstance(renderable, Table):
        yield renderable
    elif isinstance(renderable, Panel):
        yield from tables_in(renderable.renderable)
    elif isinstance(renderable, Group):
        for r in renderable.renderables:
            yield from tables_in(r)
    elif isinstance(renderable, (list, tuple)):
        for r in renderable:
            yield from tables_in(r)


def tag_columns(renderables: list) -> list[str]:
    """Give every column of every table (its header and cells) a style of its own, a link; return the tags."""
    tags = []
    for ti, table in enumerate(t for r in renderables for t in tables_in(r)):
        for ci, col in enumerate(table.columns):
            tag = f"table{ti}-column{ci}"
            for attr in ("style", "header_style"):  # cells and header
                base = getattr(col, attr)
                setattr(col, attr, (Style.parse(base) if isinstance(base, str) else base) + Style(link=tag))
            tags.append(tag)
    return tags


def render(renderables: list, width: int) -> tuple[str, dict[str, str]]:
    """(what the console prints, the text of each tagged column in line order)."""
    printed = Console(width=width, file=io.StringIO(), force_terminal=False)
    for r in renderables:
        printed.print(r)
    columns: dict[str, list[str]] = {}
    con = Console(width=width, file=io.StringIO(), force_terminal=False)
    for r in renderables:
        for line in con.render_lines(r, con.options, pad=False):
            for seg in line:
                link = seg.style.link if seg.style is not None else None
                if link:
                    columns.setdefault(link, []).append(seg.text)
    return printed.file.getvalue(), {k: "".join(v) for k, v in columns.items()}  # type: ignore[attr-defined]


def check(build, figures: list[str], width: int, text_figures: Iterable[str] = ()) -> None:
    renderables = build()
    renderables = renderables if isinstance(renderables, list) else [renderables]
    tags = tag_columns(renderables)
    assert tags, "no table found"
    out, columns = render(renderables, width)
    assert ELLIPSIS not in out, f"a cell was cut at width {width}:\n{out}"
    for line in out.splitlines():
        assert len(line) <= width, f"a line is wider than the console ({width}):\n{out}"
    cols = [squash(c) for c in columns.values()]
    for fig in figures:
        assert any(squash(fig) in c for c in cols), f"{fig!r} is not whole in any column at width {width}:\n{out}"
    flat = squash(out)
    for fig in text_figures:
        assert squash(fig) in flat, f"{fig!r} is not whole at width {width}:\n{out}"


# ----- packager loadtest / loadtest-analyse ------------------------------------------------------------------
def _latency(base: float):
    from packager.loadtest.result import LatencySummary

    return LatencySummary(count=1000, mean_ms=base, p50_ms=base, p90_ms=base * 2 + 0.5, p95_ms=base * 3,
                          p99_ms=base * 4 + 0.25, max_ms=base * 5)


def _phase(i: int, label: str, rps: float):
    from packager.loadtest.result import PhaseResult

    return PhaseResult(
        index=i, label=label, load={"users": 64.0}, dispatch_s=60.0, duration_s=61.0, requests_sent=1234567,
        requests_ok=1234000, requests_failed=567, requests_missing_usage=0, dropped_arrivals=98765,
        request_cap_reached=False, cancelled_at_drain_timeout=0, errors_by_kind={"http_500": 567},
        request_throughput_per_s=rps, input_tokens_total=10**9, output_tokens_total=10**9, input_tokens_mean=512.0,
        output_tokens_mean=128.0, input_token_throughput_per_s=123456.789, output_token_throughput_per_s=45678.912,
        ttft=_latency(12345.678), itl=_latency(23.456), tpot=_latency(34.567), e2e=_latency(98765.4),
        dispatch_lag=_latency(0.1), goodput_requests_per_s=1777.654321, goodput_output_tokens_per_s=1.0,
        goodput_input_tokens_per_s=1.0, slo_attainment_fraction=0.987, meets_slo=True)


def loadtest_result():
    from packager.config import PricingConfig, SLOConfig
    from packager.loadtest.result import (
        CostPoint,
        CostResult,
        GeneratorProcess,
        GeneratorResult,
        LoadTestResult,
        SweepResult,
    )

    phases = [_phase(0, "64 users", 1898.123456), _phase(1, "bursts 10x128 every 5s + 2.5 req/s", 2345.678901)]
    point = CostPoint(basis="measured", phase_index=0, output_tokens_per_s=45678.912, input_tokens_per_s=123456.789,
                      usd_per_million_output_tokens=0.0123, usd_per_million_input_tokens=0.0045,
                      usd_per_million_total_tokens=0.003)
    return LoadTestResult(
        created_unix=1.7e9, target_url="http://127.0.0.1:8000",
        model="smollm2-135m-instruct-gptq-w4a16-with-a-very-long-variant-name", config={}, slo=SLOConfig(),
        pricing=PricingConfig(instance=None), slo_attainment_target=0.95, phases=phases, summary=phases[0],
        summary_basis="the highest load meeting the SLOs",
        sweep=SweepResult(mode="concurrency", slo_attainment_target=0.95, highest_load_meeting_slo={"users": 128.0},
                          highest_load_phase_index=1, peak_output_token_throughput_per_s=45678.9, peak_phase_index=1),
        cost=CostResult(instance="gpu-h100-80gb", usd_per_hour=12.3456, price_source="price table",
                        utilisation_fraction=0.75, assumption="x", at_measured_throughput=point,
                        at_slo_limited_throughput=point),
        generator=GeneratorResult(processes=[GeneratorProcess(role="local", pid=1, cpu_seconds=1.0,
                                                              cpu_fraction_of_core_mean=0.5,
                                                              cpu_fraction_of_core_max=0.6)],
                                  cpu_fraction_of_core_max=0.6, cpu_limit_fraction=0.8, dispatch_lag_ms_p99=1.5,
                                  bottleneck_suspected=False),
        complete=True, wall_time_s=120.0)


LOADTEST_FIGURES = ["64 users", "1234567", "1234000", "567", "98765", "1898.12", "2345.68", "45678.9", "1777.65",
                    "yes 99%", "12346 / 24692 / 49383", "34.6 / 69.6 / 139", "23.5 / 47.4 / 94.1",
                    "98765 / 197531 / 395062", "bursts 10x128 every 5s + 2.5 req/s"]


@pytest.mark.parametrize("width", WIDTHS)
def test_loadtest_summary_tables(width):
    from packager.loadtest.render import summary_renderables

    check(lambda: summary_renderables(loadtest_result()), LOADTEST_FIGURES, width,
          text_figures=["$12.35/h", "$0.0123", "$0.0045", "45678.9", "123456.8", "1.5 ms"])


def test_loadtest_summary_fits_80_columns_unbroken():
    """The issue's case: at 80 columns the per-phase figures are on one line each, not even folded."""
    from packager.loadtest.render import summary_renderables

    out, _ = render(summary_renderables(loadtest_result())[:1], 80)
    for fig in ("1234567", "1898.12", "2345.68", "45678.9", "1777.65", "yes 99%"):
        assert fig in out, out


# ----- packager registry list / history / show -----------------------------------------------------------------
def _summary(i: int):
    from packager.registry.records import ResultsSummary

    return ResultsSummary(task_score=0.5123456, recovery=0.98765, refusal=0.875, consistency=1.0,
                          output_tokens_per_s=1898.123456 + i, usd_per_million_output_tokens=0.012345,
                          ttft_ms_p95=12345.6, goodput_rps=1777.654321, tag_scores={"extraction": 0.25})


def registry_rows():
    from packager.registry.records import VersionSummary

    return [VersionSummary(
        name=f"smollm2-135m-instruct-{i}-with-a-long-registered-name", version=1000 + i,
        parent=None if i == 0 else "smollm2-135m-instruct-0-with-a-long-registered-name/1000", source_model="default",
        recipe="" if i == 0 else "distill>prune>gptq-w4a16", status=("pending", "approved", "tampered")[i],
        summary=_summary(i), results_revision=3, files_digest="ab" * 32,
        created_at=f"2025-12-3{i}T23:59:58.123456+00:00", model_uri="/runs/latest/x") for i in range(3)]


REGISTRY_LIST_FIGURES = ["1000", "1001", "1002", "0.512", "98.8%", "0.875", "1.000", "1898.1", "1899.1", "1900.1",
                         "0.0123", "2025-12-30 23:59", "2025-12-32 23:59", "approved", "tampered",
                         "smollm2-135m-instruct-2-with-a-long-registered-name", "distill>prune>gptq-w4a16"]


@pytest.mark.parametrize("width", WIDTHS)
def test_registry_list_table(width):
    from packager.cli.registry import render_list

    check(lambda: render_list(registry_rows()), REGISTRY_LIST_FIGURES, width)


def approval_history():
    from packager.registry.records import ApprovalEntry, ApprovalHistory

    entries = [ApprovalEntry(seq=i, decision="approved" if i % 2 else "rejected", by="release-team@example.com",
                             at=f"2025-12-0{i}T12:34:56.789012+00:00", reason="recovery 98.8% over the 90% floor",
                             results_revision=12 + i, results_digest="f" * 64, files_digest="e" * 64,
                             summary={"recovery": 0.98765}, prev_hash="0" * 64, hash=f"{i}abcdef0123456789" * 4)
               for i in (1, 2)]
    return ApprovalHistory(name="smollm2-135m-instruct-with-a-long-registered-name", version=1002,
                           entries=entries, chain_ok=True, status="approved", status_detail="approved by x",
                           current_results_revision=14, current_results_digest="f" * 64)


HISTORY_FIGURES = ["release-team@example.com", "2025-12-01 12:34:56.789012", "13 (ffffffffff)", "14 (ffffffffff)",
                   "98.8%", "1abcdef01234", "2abcdef01234", "approved", "rejected"]


@pytest.mark.parametrize("width", WIDTHS)
def test_registry_history_table(width):
    from packager.cli.registry import render_history

    check(lambda: render_history(approval_history()), HISTORY_FIGURES, width)


def variant_record(version: int = 1002):
    from packager.registry.records import VariantRecord

    return VariantRecord(
        name="smollm2-135m-instruct-with-a-long-registered-name", version=version,
        registry_uri="sqlite:////home/someone/.packager/registry/mlflow.db", run_id="0123456789abcdef0123456789abcdef",
        mlflow_source="runs:/0123456789abcdef0123456789abcdef/model", created_at="2025-12-31T23:59:58.123456+00:00",
        source_model="default", source_digest="c" * 64, parent=None if version == 1000 else "x/1000",
        model_uri="/runs/latest/variants/gptq-w4a16/model-with-a-long-directory-name", artifacts_logged=False,
        files={"model.safetensors": "d" * 64}, files_digest="d" * 64, size_bytes=123456789,
        recipe={"kind": "gptq", "bits": 4}, stage_records=[{"kind": "gptq", "bits": 4, "group_size": 128}],
        run_config=None, environment={}, results={}, results_revision=14, results_digest="f" * 64,
        summary=_summary(0), history=approval_history())


SHOW_FIGURES = ["1002", "0.512", "98.8%", "0.875", "1.000", "0.250", "1898.1", "12346", "1777.65", "0.0123",
                "123.5 MB", "0123456789abcdef0123456789abcdef", "2025-12-31T23:59:58.123456+00:00",
                "/runs/latest/variants/gptq-w4a16/model-with-a-long-directory-name"]


@pytest.mark.parametrize("width", WIDTHS)
def test_registry_show_tables(width):
    from packager.cli.registry import render_show

    lineage = [variant_record(1000), variant_record(1002)]
    check(lambda: render_show(variant_record(1002), lineage), SHOW_FIGURES, width)


# ----- packager evaluate --------------------------------------------------------------------------------------
def eval_summaries():
    from packager.evaluate.runner import EvalSummary

    def one(name: str, score: float, recovery: float | None) -> EvalSummary:
        cats = {f"category-{i}-with-a-long-name": score / (i + 1) for i in range(8)}
        return EvalSummary(name=name, served_model=name, suite="default", suite_sha256="0" * 64, n_items=123456,
                           n_errors=789, score=score, score_by_tag=cats, score_by_category=cats, perplexity=12345.6789,
                           recovery=recovery, fidelity_agreement=0.987654, fidelity_mean_kl=0.0123456,
                           fidelity_prefix_match_mean=17.25, fidelity_source="corpus:default", fidelity_prompts=557,
                           fidelity_prompts_skipped=3, behaviour={"refusal_rate": 0.5, "consistency": 0.75}, wall_time_s=98765.4,
                           versions={}, platform={})

    return [one("smollm2-135m-instruct-baseline-with-a-long-name", 0.6543, None),
            one("smollm2-135m-instruct-gptq-w4a16-with-a-long-name", 0.5432, 0.83021)]


EVAL_FIGURES = ["0.654", "0.543", "83.0%", "12345.68", "98.8%", "0.0123", "123456 / 789", "98765", "0.500", "0.750",
                "17.2", "557 prompts", "(3 too long, skipped)",
                "smollm2-135m-instruct-gptq-w4a16-with-a-long-name", "category-7-with-a-long-name"]


@pytest.mark.parametrize("width", WIDTHS)
def test_evaluate_summary_table(width):
    from packager.cli.evaluate import summary_table

    check(lambda: summary_table(eval_summaries()), EVAL_FIGURES, width)


# ----- packager compress / hardware ---------------------------------------------------------------------------
def stage_rows():
    return [{"stage": f"0{i}-{m}-with-a-long-stage-name", "method": m, "parameter_count": 134_515_008 - i * 10**7,
             "size_mb": 12345.678 / (i + 1), "wall_time_s": 9876.54 if i else None, "score": 0.54321 + i / 100,
             "recovery": None if i == 0 else 0.98765, "perplexity": 12345.678}
            for i, m in enumerate(("source", "distill", "prune-structured", "gptq-w4a16"))]


COMPRESS_FIGURES = ["134.5M", "124.5M", "104.5M", "12345.7", "4115.2", "9876.5", "0.543", "0.573", "98.8%",
                    "12345.68", "prune-structured", "03-gptq-w4a16-with-a-long-stage-name"]


@pytest.mark.parametrize("width", WIDTHS)
def test_compress_stage_table(width):
    from packager.cli.compress import stage_table

    check(lambda: stage_table(stage_rows(), "recipe distill-prune-gptq on smollm2-135m-instruct"),
          COMPRESS_FIGURES, width)


@pytest.mark.parametrize("width", WIDTHS)
def test_hardware_formats_table(width):
    from packager.cli.compress import formats_table

    support = [{"format": "compressed-tensors-w8a8-int8", "runs": True, "problems": [],
                "notes": ["needs AVX512-VNNI (found: avx512_vnni)"]},
               {"format": "gptq-w4a16", "runs": False, "problems": ["needs compute capability 8.0, have 7.5"],
                "notes": []}]
    check(lambda: formats_table(support, "NVIDIA GeForce RTX 2080 Ti"),
          ["compressed-tensors-w8a8-int8", "avx512_vnni", "8.0", "7.5", "yes", "NO"], width)


# ----- packager gguf export -----------------------------------------------------------------------------------
@pytest.mark.parametrize("width", WIDTHS)
def test_gguf_artifacts_table(width):
    from packager.cli.gguf import artifacts_table

    arts = [SimpleNamespace(quant=q, size_bytes=123456789 * (i + 1), sha256=f"{i}" * 64, reused=bool(i),
                            path=f"/runs/gguf/smollm2-135m-instruct-with-a-long-name/{q}")
            for i, q in enumerate(("q8_0", "q4_k_m"))]
    check(lambda: artifacts_table(arts), ["123.5", "246.9", "0" * 16, "1" * 16, "reused", "new",
                                          "/runs/gguf/smollm2-135m-instruct-with-a-long-name/q4_k_m"], width)


# ----- packager monitor ---------------------------------------------------------------------------------------
def snapshot():
    from packager.monitor.snapshot import LatencyPercentilesMs, LifetimeStats, MonitorSnapshot, SLOStatus, WindowStats

    def lat(b: float) -> LatencyPercentilesMs:
        return LatencyPercentilesMs(observations=1234567, mean_ms=b, p50_ms=b, p90_ms=b * 2, p95_ms=b * 3,
                                    p99_ms=b * 4)

    return MonitorSnapshot(
        metrics_url="http://127.0.0.1:3000/metrics", source="packager", scraped_at_s=1.7e9,
        variants=[{"model_name": "smollm2-135m-instruct-gptq-w4a16-with-a-long-name"}], usd_per_hour=12.3456,
        usd_per_hour_from="flag", usd_per_million_output_tokens=0.0123456,
        window=WindowStats(elapsed_s=2.0, request_rate_per_s=1898.123456, error_rate_per_s=0.5, error_ratio=0.01,
                           input_tokens_per_s=123456.789, output_tokens_per_s=45678.912, ttft=lat(12345.67),
                           tpot=lat(34.567), e2e=lat(98765.4)),
        lifetime=LifetimeStats(requests_total=12345678, errors_total=1234, input_tokens_total=9876543210,
                               output_tokens_total=1234567890, ttft=lat(1234.5), tpot=lat(23.4), e2e=lat(9876.5)),
        slo=SLOStatus(ttft_ms_p95_limit=2000, tpot_ms_p95_limit=250, ttft_ok=False, tpot_ok=True))


MONITOR_FIGURES = ["1898.12", "12345678 req", "1.0 %", "45678.9", "1234567890 tok", "123456.8", "9876543210 tok",
                   "0.012", "$12.3456/h", "12345.7", "24691.3", "37037.0", "49382.7", "1234567", "p95 ≤ 2000",
                   "197530.8", "395061.6"]


@pytest.mark.parametrize("width", WIDTHS)
def test_monitor_snapshot_tables(width):
    from packager.monitor.live import render_snapshot

    check(lambda: render_snapshot(snapshot()), MONITOR_FIGURES, width)
