"""The records of a recipe run (see recipe.py): stage.json of every stage (StageRecord), the source model
(SourceRecord) and recipe-result.json (RecipeResult) with its summary rows."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RECORD_SCHEMA_VERSION = 1


class StageRecord(BaseModel):
    """What one stage did, with everything needed to reproduce and verify it."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = RECORD_SCHEMA_VERSION
    index: int
    label: str  # "01-w8a8_int8": the stage directory's name
    method: str
    arguments: dict[str, Any]
    input_dir: str
    input_digest: str
    calibration_source: str | None = None
    calibration_sha256: str | None = None
    calibration_samples: int | None = None
    device: str
    wall_time_s: float
    peak_rss_mb: float
    parameter_count: int
    size_bytes: int
    files: dict[str, str]  # sha256 of every model file (stage.json and the manifest excluded)
    digest: str  # digest of `files`: the next stage's input digest
    report: dict[str, Any]
    evaluation: dict[str, Any] | None = None
    evaluation_key: str | None = None
    started_at: str
    finished_at: str
    versions: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


class SourceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    name: str
    digest: str
    parameter_count: int
    size_bytes: int
    evaluation: dict[str, Any] | None = None


class RecipeResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = RECORD_SCHEMA_VERSION
    recipe: dict[str, Any]
    source: SourceRecord
    out_root: str
    stages: list[StageRecord]
    final_dir: str
    wall_time_s: float
    reused_stages: list[str] = Field(default_factory=list)

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per model (the source, then each stage) for tables: params, size, wall time, quality."""
        rows = [_row("00-source", "source", self.source.parameter_count, self.source.size_bytes, None,
                     self.source.evaluation)]
        for st in self.stages:
            rows.append(_row(st.label, st.method, st.parameter_count, st.size_bytes, st.wall_time_s, st.evaluation))
        return rows


def _row(stage, method, params, size, wall, ev) -> dict[str, Any]:
    ev = ev or {}
    return {"stage": stage, "method": method, "parameter_count": params, "size_mb": size / 1e6,
            "wall_time_s": wall, "score": ev.get("score"), "recovery": ev.get("recovery"),
            "perplexity": ev.get("perplexity")}
