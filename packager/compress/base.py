"""The contract every compression method follows.

A method is a pair (docs/architecture.md, rules of the house):
  * `XxxArgs(StageArgs)` with `kind: Literal["xxx"]` and the method's arguments (extra fields refused), and a
    class variable `requires_calibration_data`;
  * `apply_xxx(args, ctx) -> dict` registered with `@METHODS.register("xxx")`, which reads the model in
    `ctx.input_dir` and writes a COMPLETE model directory (safetensors weights, config, tokenizer) into
    `ctx.output_dir`, returning a JSON-able dict of what it did (e.g. which layers were removed and why).

The recipe runner (recipe.py) validates stages as a discriminated union on `kind`, gives each stage a fresh
temporary output directory, renames it into place only when the stage completes, hashes the files and
writes the stage record.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

from packager.config import EngineConfig
from packager.core.plugins import Registry


class StageArgs(BaseModel):
    """Base of every method's arguments. Subclasses add `kind: Literal["..."]`."""

    model_config = ConfigDict(extra="forbid")
    requires_calibration_data: ClassVar[bool] = False
    # True for methods that change layer shapes or counts (pruning): checks of later stages against the
    # source model's shapes are then deferred to the start of those stages.
    changes_architecture: ClassVar[bool] = False
    # True for methods whose output is a quantized checkpoint; no stage can read one, so they come last.
    quantizes: ClassVar[bool] = False

    def needs_calibration(self) -> bool:
        """Whether THIS configuration reads calibration data (e.g. int8 only with SmoothQuant on)."""
        return self.requires_calibration_data

    def validate_for(self, model_dir: Path) -> None:
        """Cheap checks against the input model's config (no weights read), run before any work starts.
        Raise packager.errors.ConfigError naming the value and what to do."""


@dataclass
class StageContext:
    input_dir: Path  # the previous stage's model directory (or the source model)
    output_dir: Path  # an empty temporary directory; becomes the stage's model dir on success
    calibration_texts: list[str] = field(default_factory=list)
    engine: EngineConfig = field(default_factory=EngineConfig)
    device: str = "cpu"  # "cpu" or "cuda"; chosen automatically, overridable
    teacher_dir: Path | None = None  # the original (uncompressed) model, e.g. for distillation
    work_dir: Path | None = None  # scratch space that survives an interrupted stage (checkpoints)
    show_progress: bool = True
    log: Callable[[str], None] = print


StageFn = Callable[[Any, StageContext], dict]
METHODS: Registry[StageFn] = Registry("compression method")
