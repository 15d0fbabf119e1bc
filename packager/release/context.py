"""What the steps of a release work on: the run-wide context (settings, console, clock and timings, price, registry
handle, what the baseline leaves for the variants after it) and, per variant, its context (the variant, its report
row, its step cache, and what one step hands to the next)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from rich.console import Console

from packager.config import RunConfig
from packager.release.cache import StepCache

if TYPE_CHECKING:
    from packager.report.quality_gate import QualityGate

# soft_wrap: messages are never broken across lines (paths stay whole for grep and copy); tables still fit the width
console = Console(stderr=True, soft_wrap=True)
BASELINE = "baseline"


def print_to_console(message: str) -> None:
    console.print(message, highlight=False)


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


def variant_name(recipe: str) -> str:
    """A recipe's variant (and folder) name: `w8a8-int8`, or `recipes_mine` for `recipes/mine.yaml`."""
    return recipe.replace("/", "_").replace(".yaml", "")


@dataclass
class RunContext:
    """Shared by every step of every variant. The clock starts when it is made; `source` and `suite` are set once,
    before the first variant; the baseline's summary, items and registry version are set by the baseline's steps."""

    cfg: RunConfig
    lt_cfg: Any  # packager.loadtest.config.LoadTestConfig
    serve_via: str = "bento"
    register: bool = True
    show_progress: bool = True
    log: Callable[[str], None] = print_to_console
    t0: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    source: Any = None  # packager.core.sources.ResolvedModel
    suite: Any = None  # packager.evaluate.suite.Suite
    baseline_summary: Any = None  # packager.evaluate.runner.EvalSummary
    baseline_items: dict | None = None
    baseline_fidelity_items: dict | None = None  # the baseline's answers to the fidelity corpus, with their top-k
    baseline_version: str | None = None
    noise_floor: dict | None = None  # packager.evaluate.noise_floor.NoiseFloor as JSON, set by the baseline
    # engine -> (the variant searched, its EngineSearch): reused by later variants of that engine (scope: engine)
    engine_searches: dict[str, tuple[str, Any]] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def gate(self) -> "QualityGate":
        """The quality gate of this run: its KL limit follows the baseline's noise floor once that is measured."""
        from packager.report.quality_gate import quality_gate

        return quality_gate(self.cfg, self.noise_floor)

    @cached_property
    def price(self) -> Any:
        """The hourly price of one replica (explicit, or the instance's row of the price table): a PriceQuote."""
        from packager.loadtest.pricing import resolve_price

        return resolve_price(self.cfg.pricing)

    @property
    def usd_per_hour(self) -> float:
        return self.price.usd_per_hour

    @cached_property
    def registry(self) -> Any:
        """The model registry of the configuration (made on first use: a run without registering never opens it)."""
        from packager.registry.store import ModelRegistry

        return ModelRegistry.from_config(self.cfg)

    def registry_name(self, source) -> str:
        from packager.registry.store import validate_name

        name = self.cfg.registry.name or source.name
        return validate_name(name)

    @contextmanager
    def timed(self, what: str) -> Iterator[None]:
        """Add the time the block takes (failed or not) to timings[what], in seconds."""
        t = time.monotonic()
        try:
            yield
        finally:
            self.timings[what] = round(self.timings.get(what, 0.0) + time.monotonic() - t, 2)

    def over_budget(self) -> bool:
        return time.monotonic() - self.t0 > self.cfg.time_budget_s


@dataclass
class VariantContext:
    """One variant's pass through the steps: the run, the variant, its report row (a VariantResult) and its step
    cache, plus what the steps hand on: the cache keys and the evaluation and load-test results (as JSON)."""

    run: RunContext
    v: Variant
    vr: Any  # packager.report.model.VariantResult
    cache: StepCache
    eval_key: str = ""
    kl_stop: float | None = None  # the KL limit its fidelity reading may stop at once settled (steps._kl_stop)
    lt_key: str = ""
    summary_d: dict | None = None
    lt_d: dict | None = None
    engine: Any = None  # EngineConfig with the arguments the engine search chose; None: the run's own
    search_deferred: bool = False  # its engine search waits for the gate's verdict on its evaluation (only_passing)

    @property
    def cfg(self) -> RunConfig:
        return self.run.cfg

    @property
    def served_engine(self) -> Any:
        """The engine settings this variant is served with (the bento, the bare engine, the cache keys)."""
        return self.engine if self.engine is not None else self.run.cfg.engine
