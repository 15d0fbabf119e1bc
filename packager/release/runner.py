"""The release loop: prepare the run, take the baseline and each recipe through the steps, write the report."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import packager.release.steps as steps
from packager.config import RunConfig, dump_config
from packager.core.formatting import duration
from packager.errors import PackagerError
from packager.fsutil import atomic_write_json, atomic_write_text
from packager.hardware import serving_dtype
from packager.release.cache import StepCache
from packager.release.context import (
    BASELINE,
    RunContext,
    Variant,
    VariantContext,
    console,
    print_to_console,
    variant_name,
)
from packager.release.estimate import (
    check_expected_load,
    default_loadtest,
    estimate_seconds,
    loadtest_seconds,
    model_scale,
    searches,
    step_seconds,
)

if TYPE_CHECKING:
    from packager.core.progress import ProgressBar
    from packager.report.model import Report, VariantResult
    from packager.report.quality_gate import QualityGate

# The steps of a variant, in order: (what the console calls it, its function in packager.release.steps, the
# estimate it is weighted by on the progress bar). A step that takes a second or more gets a line when it ends.
STEPS: tuple[tuple[str, str, str | None], ...] = (
    ("compress", "compress", "compress"),
    ("describe", "describe", None),
    ("search engine arguments", "tune", "tune"),
    ("look up the cache", "look_up", None),
    ("register", "register", "register"),
    ("serve, evaluate and load-test", "measure", "measure"),
    ("collect", "collect", None),
    ("measure the noise floor", "noise_floor", "noise_floor"),
    ("record the results", "record_results", None),
)


class ReleaseRunner:
    def __init__(self, cfg: RunConfig, *, serve_via: str = "bento", register: bool = True,
                 show_progress: bool = True, log: Callable[[str], None] | None = None):
        from packager.loadtest.config import parse_loadtest_config

        lt_cfg = cfg.loadtest or parse_loadtest_config(default_loadtest(), "loadtest")
        check_expected_load(cfg.expected_load, lt_cfg)
        self.run_ctx = RunContext(cfg=cfg, lt_cfg=lt_cfg, serve_via=serve_via, register=register,
                                  show_progress=show_progress, log=log or print_to_console)
        order: list[str | None] = [None, *cfg.recipes]  # the variants' recipes, as _variants lists them
        self._searched = dict(zip(order, searches(cfg, order)))  # recipe -> whether its engine search runs
        self._scale = model_scale(cfg.model)  # the model's size against the bundled one's, for the estimates

    def run(self) -> "Report":
        """The variants one by one, then the report. Library logs (HTTP requests, vLLM, MLflow, ...) go to
        packager.log in the run directory. The console gets one line per finished step and variant, with the
        time left, under one progress bar for the whole release (on a terminal; with --verbose, the bars of the
        steps themselves instead)."""
        from packager.core.logs import attach_run_log, is_verbose
        from packager.core.progress import progress_bar

        _import_what_the_steps_need()
        run = self.run_ctx
        run.price  # a bad price or unknown instance fails here, before any work or file
        run.run_dir.mkdir(parents=True, exist_ok=True)
        variants = self._variants()
        total = sum(sum(self._weights(v).values()) for v in variants)  # estimated seconds: the bar's units
        with attach_run_log(run.run_dir), \
                progress_bar("release", total=total, console=console, count=False,
                             enabled=run.show_progress and not is_verbose(), terminal_only=True,
                             text=["{step}"], fields={"step": "prepare"}) as bar:
            if bar.enabled:  # one bar: the steps' own bars are off; console messages print above it
                run.show_progress = False
                if run.log is print_to_console:
                    run.log = lambda m: bar.print(m, highlight=False) if bar.enabled else print_to_console(m)
            self._prepare()
            results = []
            done = 0.0
            for i, v in enumerate(variants, 1):
                t = time.monotonic()
                results.append(self._run_variant(v, bar))
                self._say_done(v, i, len(variants), time.monotonic() - t)
                done += sum(self._weights(v).values())
                bar.update(completed=done)  # a failed or skipped variant's steps count as done
            bar.update(step="report")
            return self._report(results)

    def _loadtest_seconds(self) -> float:
        return loadtest_seconds(self.run_ctx.lt_cfg)

    def _weights(self, v: Variant) -> dict[str, float]:
        return step_seconds(v.recipe, self._loadtest_seconds(), self.run_ctx.cfg, searched=self._searched[v.recipe],
                            scale=self._scale)

    def _say_done(self, v: Variant, i: int, n: int, took_s: float) -> None:
        """`w8a8-int8 done in 4.2 min (2/4 variants; about 9 min left)`: the time left is the mean time of the
        variants so far times those still to run."""
        spent = time.monotonic() - self.run_ctx.t0
        left = "" if i == n else f"; about {spent / i * (n - i) / 60:.0f} min left"
        self.run_ctx.log(f"{v.name} done in {took_s / 60:.1f} min ({i}/{n} variants{left})")

    def _prepare(self) -> None:
        """Everything before the first variant: the price, the run directory and its config.yaml, the estimate,
        the source model and the suite."""
        from packager.core.sources import resolve_model
        from packager.evaluate.suite import load_suite

        run, cfg = self.run_ctx, self.run_ctx.cfg
        run.price  # a bad price or unknown instance fails here, before any work or file
        run.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.run_dir / "config.yaml", dump_config(cfg))
        est = estimate_seconds(cfg, cfg.recipes, self._loadtest_seconds(), scale=self._scale)
        sized = "" if self._scale == 1.0 else (f", its compute-bound steps scaled {self._scale:.2g}x from the bundled "
                                               "model's by parameter count")
        run.log(f"[bold]packager release[/]: model {cfg.model}, variants: baseline + "
                f"{', '.join(cfg.recipes) or 'none'}; serving via {run.serve_via}; "
                f"estimated {est / 60:.0f} min (from timings on 2 CPU cores{sized}; time budget "
                f"{cfg.time_budget_s / 60:.0f} min). Results: {run.run_dir}")
        if est > cfg.time_budget_s:
            run.log("[yellow]The estimate exceeds the time budget: variants that do not fit are skipped and "
                    "named in the report. Raise time_budget_s or drop recipes to run them all.[/]")
        run.source = resolve_model(cfg.model)
        run.suite = load_suite(cfg.eval.suite)

    def _variants(self) -> list[Variant]:
        root = self.run_ctx.run_dir / "variants"
        names = [(BASELINE, None)] + [(variant_name(r), r) for r in self.run_ctx.cfg.recipes]
        return [Variant(name, recipe, root / name) for name, recipe in names]

    def _run_variant(self, v: Variant, bar: "ProgressBar | None" = None) -> "VariantResult":
        """One variant through the steps. A variant that fails is reported with its error and the run goes on,
        except for the baseline (every other variant is measured against it)."""
        from packager.report.model import VariantResult

        run, cfg = self.run_ctx, self.run_ctx.cfg
        v.root.mkdir(parents=True, exist_ok=True)
        vr = VariantResult(name=v.name, recipe=v.recipe, is_baseline=v.recipe is None, engine=cfg.engine.backend,
                           dtype=serving_dtype(cfg.engine.dtype, cfg.engine.target))
        if run.over_budget():
            msg = f"skipped: the time budget of {cfg.time_budget_s:.0f} s was spent before this variant"
            vr.errors.append(msg)
            run.notes.append(f"{v.name} {msg}")
            return vr
        ctx = VariantContext(run, v, vr, StepCache(v.root))
        weights = self._weights(v)
        try:
            for name, func, weight in STEPS:
                step: Callable[[VariantContext], None] = getattr(steps, func)
                if bar is not None:
                    bar.update(step=f"{v.name}: {name}")
                t = time.monotonic()
                step(ctx)
                took = time.monotonic() - t
                if took >= 1.0:
                    run.log(f"{v.name}: {name} done in {duration(took)}")
                if bar is not None and weight:
                    bar.advance(weights[weight])
        except PackagerError as e:
            vr.errors.append(str(e))
            run.log(f"[red]{v.name} failed:[/] {e}")
            if v.recipe is None:
                raise
        atomic_write_json(v.root / "variant.json", vr.model_dump(mode="json"))
        return vr

    def _report(self, results: list["VariantResult"]) -> "Report":
        """The recommendation, the engine comparison and the report (JSON, Markdown, HTML) in the run directory."""
        from packager.report.analysis import compare_engines, pareto_frontier, recommend
        from packager.report.model import Recommendation, Report
        from packager.report.quality_gate import bound_floor
        from packager.report.render import write_report

        run, cfg = self.run_ctx, self.run_ctx.cfg
        rec_floor = cfg.quality_floor
        gate = run.gate
        rec = recommend(results, rec_floor, cfg.slo.ttft_ms, cfg.slo.tpot_ms,
                        min_goodput_fraction=run.lt_cfg.slo_attainment_target, expected_load=cfg.expected_load,
                        gate=gate)
        run.notes.extend(quality_notes(results, gate))
        # after recommend: it leaves out variants below the quality floor
        engines = compare_engines(results, expected_load=cfg.expected_load)
        if engines is not None:
            run.log(f"engines: {engines.summary}")
        report = Report(
            model=run.source.name, baseline=BASELINE, quality_floor=rec_floor, noise_floor=run.noise_floor,
            gate={"use_lower_bound": gate.use_lower_bound, "lower_bound_floor": bound_floor(gate),
                  "max_kl": gate.max_kl, "max_kl_vs_noise": cfg.gate.max_kl_vs_noise},
            slo={"ttft_ms": cfg.slo.ttft_ms, "tpot_ms": cfg.slo.tpot_ms},
            pricing={"instance": cfg.pricing.instance, "usd_per_hour": run.usd_per_hour, "source": run.price.source},
            variants=results, pareto=pareto_frontier(results), engines=engines,
            recommendation=rec or Recommendation(variant=None, reason="no variant"),
            timings_s={**run.timings, "total": round(time.monotonic() - run.t0, 1)},
            time_budget_s=cfg.time_budget_s, config=cfg.model_dump(mode="json"), notes=run.notes,
        )
        paths = write_report(report, run.run_dir)
        run.log(f"report: {', '.join(str(p) for p in paths.values())}")
        return report


def quality_notes(results: list["VariantResult"], gate: "QualityGate") -> list[str]:
    """What the quality verdicts could not settle: suites too small for the floor, tests that could not run."""
    from packager.report.quality_gate import bound_floor, quality_caveat, suite_too_small

    out = []
    for v in results:
        if gate.use_lower_bound and (small := suite_too_small(v, bound_floor(gate))) is not None:
            out.append(small)
        if (caveat := quality_caveat(v, gate)) is not None:
            out.append(f"{v.name}: {caveat}")
    return out


def _import_what_the_steps_need() -> None:
    """Import, before any work, what the steps and the report import later: a broken installation fails at once,
    not after an hour of compression and load tests."""
    import packager.core.sources  # noqa: F401
    import packager.evaluate.runner  # noqa: F401
    import packager.evaluate.suite  # noqa: F401
    import packager.loadtest.runner  # noqa: F401
    import packager.report.analysis  # noqa: F401
    import packager.report.model  # noqa: F401
    import packager.report.render  # noqa: F401


def run_release(cfg: RunConfig, **kw) -> "Report":
    return ReleaseRunner(cfg, **kw).run()
