"""`packager release`: one model in, a measured choice of deployable variants out.

For the uncompressed baseline and each recipe: compress -> build bento -> serve -> evaluate through the
serving engine -> load-test -> stop -> register; then the report (JSON, Markdown, HTML) with the
recommendation. Every finished step is cached by the content of its inputs (model digest, recipe, suite,
settings) under the run directory, so a rerun after a failure or a changed setting redoes only what changed.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console

from packager.config import RunConfig, dump_config
from packager.engines.select import LLAMACPP, engine_for, evaluation_config
from packager.errors import ConfigError, PackagerError
from packager.fsutil import atomic_write_json, atomic_write_text, dir_size_bytes, read_manifest, sha256_bytes

# soft_wrap: messages are never broken across lines (paths stay whole for grep and copy); tables still fit the width
console = Console(stderr=True, soft_wrap=True)
BASELINE = "baseline"

# Seconds each step takes for the bundled model on a 2-core CPU (measured), used for the up-front estimate.
_ESTIMATE_S = {"serve_start": 150.0, "evaluate": 90.0, "register": 10.0,
               "compress": {"gptq": 300.0, "w8a8_int8": 30.0, "fp8": 30.0, "prune": 60.0, "distill": 300.0,
                            "gguf": 30.0}}


def default_loadtest() -> dict[str, Any]:
    """A bounded default: a concurrency sweep of 1, 4 and 16 users, 20 s each, 128 tokens in, 64 out."""
    return {
        "profile": {"kind": "sweep", "mode": "concurrency", "values": [1, 4, 16], "step_duration_s": 20},
        "prompts": {"kind": "synthetic", "input_tokens": {"mean": 128}, "output_tokens": {"mean": 64}},
        "max_duration_s": 120,
        "max_requests": 5000,
    }


def check_expected_load(expected_load: float | None, lt_cfg) -> None:
    """Refuse, before any work, an expected load the configured load test cannot measure: it needs a sweep
    whose highest step reaches it (the recommendation reads cost and SLO at the step it falls on)."""
    if expected_load is None:
        return
    from packager.report.analysis import falls_on, load_words
    from packager.report.loadsummary import SWEEP_UNITS

    prof = lt_cfg.profile
    if prof.kind != "sweep":
        raise ConfigError(f"expected_load={expected_load:g} needs a load-test sweep (loadtest.profile.kind: sweep), "
                          f"but the profile is {prof.kind!r}: there is one load, so no step to rank the variants at.")
    top = max(prof.values)
    if not falls_on(top, expected_load):
        unit = SWEEP_UNITS[prof.mode]
        raise ConfigError(f"expected_load={load_words(expected_load, unit)} is above the highest step of the load-test "
                          f"sweep ({load_words(top, unit)}); add a step of at least {expected_load:g} to "
                          "loadtest.profile.values.")


def cache_key(*parts: Any) -> str:
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())[:16]


class StepCache:
    """`<dir>/<step>.done.json` holds the key of the inputs and the step's result; a matching key is a hit."""

    def __init__(self, root: Path):
        self.root = root

    def get(self, step: str, key: str) -> Any | None:
        p = self.root / f"{step}.done.json"
        if not p.exists():
            return None
        data = json.loads(p.read_text())
        return data["result"] if data.get("key") == key else None

    def put(self, step: str, key: str, result: Any) -> None:
        atomic_write_json(self.root / f"{step}.done.json", {"key": key, "result": result})


@dataclass
class Variant:
    name: str
    recipe: str | None
    root: Path
    model_dir: Path | None = None
    digest: str | None = None
    stages: list[dict] = field(default_factory=list)
    compression_wall_time_s: float | None = None
    bento_tag: str | None = None
    registry_version: str | None = None
    errors: list[str] = field(default_factory=list)


def estimate_seconds(cfg: RunConfig, recipes: list[str], loadtest_s: float) -> float:
    total = 0.0
    for r in [None, *recipes]:
        total += _ESTIMATE_S["serve_start"] + _ESTIMATE_S["evaluate"] + loadtest_s + _ESTIMATE_S["register"]
        if r:
            for kind, s in _ESTIMATE_S["compress"].items():
                if kind.split("_")[0] in r.replace("-", "_"):
                    total += s
                    break
            else:
                total += 120.0
    return total


class ReleaseRunner:
    def __init__(self, cfg: RunConfig, *, serve_via: str = "bento", register: bool = True,
                 show_progress: bool = True, log: Callable[[str], None] | None = None):
        from packager.loadtest.config import parse_loadtest_config

        self.cfg = cfg
        self.serve_via = serve_via
        self.register = register
        self.show_progress = show_progress
        self.log = log or (lambda m: console.print(m, highlight=False))
        self.run_dir = Path(cfg.output_dir)
        self.lt_cfg = parse_loadtest_config(cfg.loadtest or default_loadtest(), "loadtest")
        check_expected_load(cfg.expected_load, self.lt_cfg)
        self.timings: dict[str, float] = {}
        self.t0 = time.monotonic()
        self.notes: list[str] = []

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def timed(self, what: str) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.timings[what] = round(self.timings.get(what, 0.0) + time.monotonic() - t, 2)

    def over_budget(self) -> bool:
        return time.monotonic() - self.t0 > self.cfg.time_budget_s

    # ------------------------------------------------------------------ steps
    def compress(self, v: Variant, source) -> None:
        if v.recipe is None:
            v.model_dir, v.digest = Path(source.path), source.digest
            m = read_manifest(v.model_dir)
            v.digest = v.digest or (m["digest"] if m else None)
            return
        from packager.compress.recipe import load_recipe, run_recipe

        recipe = load_recipe(v.recipe)
        with self.timed(f"{v.name}/compress"):
            t = time.monotonic()
            result = run_recipe(source, recipe, v.root / "stages", engine=self.cfg.engine,
                                evaluate=None, progress=self.show_progress)
        v.stages = [s.model_dump(mode="json") for s in result.stages]
        v.model_dir = Path(result.final_dir)
        m = read_manifest(v.model_dir)
        v.digest = m["digest"] if m else None
        v.compression_wall_time_s = sum(s.get("wall_time_s", 0.0) for s in v.stages) or (time.monotonic() - t)

    @contextmanager
    def served(self, v: Variant, registry_version: str | None) -> Iterator[str]:
        """Serve the variant the way it ships (a bento) or, for fast checks, on the bare engine."""
        if self.serve_via == "engine":
            from packager.engines.select import server_for_model

            with self.timed(f"{v.name}/serve_start"):
                srv = server_for_model(v.model_dir, self.cfg.engine, served_name=v.name,
                                       log_path=v.root / "engine.log").start()
            try:
                yield srv.base_url
            finally:
                srv.stop()
            return
        from packager.serve.build import build_bento
        from packager.serve.server import BentoServer

        with self.timed(f"{v.name}/build"):
            built = build_bento(v.model_dir, engine=self.cfg.engine, name=f"packager-{v.name}", model_name=v.name,
                                registry_version=registry_version or "unregistered", hardware=self.cfg.engine.target,
                                usd_per_hour=self.usd_per_hour(), log=lambda m: None)
        v.bento_tag = built.bento_tag
        self.log(f"{v.name}: bento {built.bento_tag}; starting `bentoml serve` (about 2-3 minutes on 2 cores)")
        with self.timed(f"{v.name}/serve_start"):
            srv = BentoServer(built.bento_tag, log_path=v.root / "bento.log",
                              startup_timeout_s=self.cfg.engine.startup_timeout_s).start()
        try:
            yield srv.base_url
        finally:
            srv.stop()

    def usd_per_hour(self) -> float:
        """The hourly price of one replica (explicit, or the instance's row of the price table)."""
        if not hasattr(self, "_price"):
            from packager.loadtest.pricing import resolve_price

            self._price = resolve_price(self.cfg.pricing)
        return self._price.usd_per_hour

    # ------------------------------------------------------------------ main
    def run(self) -> "Report":  # noqa: F821
        from packager.evaluate.runner import EvalSummary, evaluate_model, load_items
        from packager.evaluate.suite import load_suite
        from packager.loadtest.runner import run_loadtest
        from packager.models import resolve_model
        from packager.report.analysis import compare_engines, pareto_frontier, recommend
        from packager.report.model import Recommendation, Report, VariantResult
        from packager.report.render import write_report

        cfg = self.cfg
        self.usd_per_hour()  # a bad price or unknown instance fails here, before any work or file
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
        lt_s = (self.lt_cfg.profile.planned_dispatch_s() or self.lt_cfg.max_duration_s) + 10
        est = estimate_seconds(cfg, cfg.recipes, lt_s)
        self.log(f"[bold]packager release[/]: model {cfg.model}, variants: baseline + {', '.join(cfg.recipes) or 'none'}; "
                 f"serving via {self.serve_via}; estimated {est / 60:.0f} min on this machine "
                 f"(time budget {cfg.time_budget_s / 60:.0f} min). Results: {self.run_dir}")
        if est > cfg.time_budget_s:
            self.log("[yellow]The estimate exceeds the time budget: variants that do not fit are skipped and "
                     "named in the report. Raise time_budget_s or drop recipes to run them all.[/]")

        source = resolve_model(cfg.model)
        suite = load_suite(cfg.eval.suite)
        variants = [Variant(BASELINE, None, self.run_dir / "variants" / BASELINE)]
        variants += [Variant(r.replace("/", "_").replace(".yaml", ""), r, self.run_dir / "variants" / r.replace("/", "_").replace(".yaml", ""))
                     for r in cfg.recipes]
        baseline_summary: EvalSummary | None = None
        baseline_items = None
        results: list[VariantResult] = []

        for v in variants:
            v.root.mkdir(parents=True, exist_ok=True)
            vr = VariantResult(name=v.name, recipe=v.recipe, is_baseline=v.recipe is None, engine=cfg.engine.backend,
                               dtype=cfg.engine.dtype)
            results.append(vr)
            if self.over_budget():
                msg = f"skipped: the time budget of {cfg.time_budget_s:.0f} s was spent before this variant"
                vr.errors.append(msg)
                self.notes.append(f"{v.name} {msg}")
                continue
            cache = StepCache(v.root)
            try:
                self.compress(v, source)
                vr.model_dir, vr.model_digest = str(v.model_dir), v.digest
                vr.engine = engine_for(v.model_dir)  # the engine that serves (and scores) it
                if vr.engine == LLAMACPP:
                    vr.dtype = _gguf_quant(v.model_dir)
                vr.size_bytes = _weights_size(v.model_dir)
                vr.parameters = _param_count(v.model_dir)
                vr.stages, vr.compression_wall_time_s = v.stages, v.compression_wall_time_s

                eval_key = cache_key("eval", v.digest, suite.sha256, cfg.eval, cfg.engine,
                                     baseline_summary.model_dump(mode="json")["score"] if baseline_summary else None)
                lt_key = cache_key("loadtest", v.digest, self.lt_cfg, cfg.engine, cfg.slo, cfg.pricing)
                summary_d = cache.get("evaluate", eval_key)
                lt_d = cache.get("loadtest", lt_key)
                if self.register:
                    with self.timed(f"{v.name}/register"):
                        self._register(v, source)
                    vr.registry_name, vr.registry_version = self.registry_name(source), v.registry_version
                if summary_d is None or lt_d is None:
                    with self.served(v, v.registry_version) as url:
                        if summary_d is None:
                            with self.timed(f"{v.name}/evaluate"):
                                ev_cfg, ev_notes = evaluation_config(vr.engine, cfg)
                                s = evaluate_model(None, ev_cfg, url=url, baseline=baseline_summary,
                                                   baseline_items=baseline_items, out_dir=v.root / "eval",
                                                   name=v.name, suite=suite, show_progress=self.show_progress)
                                s.notes.extend(ev_notes)
                            s.model_dir = str(v.model_dir)
                            if cfg.eval.behaviour_suite:
                                with self.timed(f"{v.name}/evaluate_behaviour"):
                                    b = evaluate_model(None, cfg.model_copy(update={"eval": cfg.eval.model_copy(
                                        update={"suite": cfg.eval.behaviour_suite, "perplexity": False,
                                                "max_items": None})}), url=url, out_dir=v.root / "behaviour",
                                        name=v.name, show_progress=self.show_progress)
                                s.behaviour = {**b.behaviour, "behaviour_score": b.score}
                            summary_d = s.model_dump(mode="json")
                            cache.put("evaluate", eval_key, summary_d)
                        if lt_d is None:
                            with self.timed(f"{v.name}/loadtest"):
                                lt = run_loadtest(url, self.lt_cfg, cfg.slo, cfg.pricing, v.root / "loadtest")
                            lt_d = lt.model_dump(mode="json")
                            cache.put("loadtest", lt_key, lt_d)
                else:
                    self.log(f"{v.name}: evaluation and load test reused from the cache")
                    v.bento_tag = cache.get("bento", v.digest or "")
                if v.bento_tag:
                    cache.put("bento", v.digest or "", v.bento_tag)
                vr.bento_tag = v.bento_tag
                summary = EvalSummary.model_validate(summary_d)
                if v.recipe is None:
                    baseline_summary = summary
                    if summary.items_path and Path(summary.items_path).exists():
                        baseline_items = load_items(Path(summary.items_path))
                _fill_quality(vr, summary)
                vr.load = load_summary_from(lt_d, v.root / "loadtest")
                if self.register:
                    with self.timed(f"{v.name}/register"):
                        self._record_results(v, source, summary_d, lt_d)
            except PackagerError as e:
                vr.errors.append(str(e))
                self.log(f"[red]{v.name} failed:[/] {e}")
                if v.recipe is None:
                    raise
            atomic_write_json(v.root / "variant.json", vr.model_dump(mode="json"))

        rec_floor = cfg.quality_floor
        rec = recommend(results, rec_floor, cfg.slo.ttft_ms, cfg.slo.tpot_ms,
                        min_goodput_fraction=self.lt_cfg.slo_attainment_target, expected_load=cfg.expected_load)
        # after recommend: it leaves out variants below the quality floor
        engines = compare_engines(results, expected_load=cfg.expected_load)
        if engines is not None:
            self.log(f"engines: {engines.summary}")
        report = Report(
            model=source.name, baseline=BASELINE, quality_floor=rec_floor,
            slo={"ttft_ms": cfg.slo.ttft_ms, "tpot_ms": cfg.slo.tpot_ms},
            pricing={"instance": cfg.pricing.instance, "usd_per_hour": self.usd_per_hour(),
                     "source": self._price.source},
            variants=results, pareto=pareto_frontier(results), engines=engines, recommendation=rec or Recommendation(variant=None, reason="no variant"),
            timings_s={**self.timings, "total": round(time.monotonic() - self.t0, 1)},
            time_budget_s=cfg.time_budget_s, config=cfg.model_dump(mode="json"), notes=self.notes,
        )
        paths = write_report(report, self.run_dir)
        self.log(f"report: {', '.join(str(p) for p in paths.values())}")
        return report

    # ------------------------------------------------------------------ registry
    def registry(self):
        from packager.registry.store import ModelRegistry

        if not hasattr(self, "_registry"):
            self._registry = ModelRegistry.from_config(self.cfg)
        return self._registry

    def registry_name(self, source) -> str:
        from packager.registry.store import validate_name

        name = (self.cfg.registry or {}).get("name") or source.name
        return validate_name(name)

    def _register(self, v: Variant, source) -> None:
        """One registered version per variant and model content; a rerun finds the version it made."""
        cache = StepCache(v.root)
        key = cache_key("register", self.registry().uri, self.registry_name(source), v.digest)
        found = cache.get("register", key)
        if found is not None:
            v.registry_version = str(found)
            return
        parent = getattr(self, "_baseline_version", None) if v.recipe else None
        version = self.registry().register_variant(
            self.registry_name(source), v.model_dir, source_model=str(source.source), source_digest=source.digest,
            parent_version=parent, recipe=v.recipe, stage_records=v.stages, run_config=self.cfg.model_dump(mode="json"),
            description=f"packager release: {v.name}",
        )
        v.registry_version = str(version)
        cache.put("register", key, v.registry_version)

    def _record_results(self, v: Variant, source, summary_d: dict, lt_d: dict) -> None:
        if v.recipe is None:
            self._baseline_version = v.registry_version
        cache = StepCache(v.root)
        key = cache_key("results", v.registry_version, summary_d.get("created_at"), lt_d.get("created_unix"))
        if cache.get("results", key) is not None:
            return
        self.registry().update_results(
            self.registry_name(source), v.registry_version, eval_results=summary_d,
            behaviour_results=summary_d.get("behaviour") or {}, loadtest_results=lt_d,
            cost_results=lt_d.get("cost"),
        )
        cache.put("results", key, True)


def _weights_size(model_dir: Path | None) -> int | None:
    if model_dir is None:
        return None
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")) or dir_size_bytes(model_dir)


def _gguf_quant(model_dir: Path) -> str | None:
    from packager.gguf.artifact import read_export_record

    rec = read_export_record(model_dir) or {}
    return rec.get("quant") or rec.get("quant_type")


def _param_count(model_dir: Path | None) -> int | None:
    if model_dir is None:
        return None
    try:
        from packager.compress.checkpoint import parameter_count_from_headers

        return parameter_count_from_headers(Path(model_dir))
    except Exception:
        return None


def _fill_quality(vr, s) -> None:
    vr.score = s.score
    vr.score_by_category = s.score_by_category
    vr.recovery = 1.0 if vr.is_baseline else s.recovery
    vr.perplexity = s.perplexity
    vr.fidelity_agreement = s.fidelity_agreement
    vr.fidelity_mean_kl = s.fidelity_mean_kl
    vr.behaviour = s.behaviour
    vr.eval = {k: v for k, v in s.model_dump(mode="json").items() if k not in ("config", "versions", "platform")}


def load_summary_from(lt: dict, run_dir: Path | None = None):
    """Map a LoadTestResult (as JSON) onto the report's LoadSummary, with latency samples from its records."""
    from packager.report.loadsummary import from_loadtest_result

    return from_loadtest_result(lt, run_dir)


def run_release(cfg: RunConfig, **kw) -> "Report":  # noqa: F821
    return ReleaseRunner(cfg, **kw).run()
