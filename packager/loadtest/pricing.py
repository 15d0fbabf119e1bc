"""Instance prices (USD per hour) and the cost of a million tokens.

The bundled table is packager/data/pricing.yaml (public on-demand list prices with their sources and
notes). A user table in the same shape replaces it (PricingConfig.price_table / --price-table):

    sources: {S1: "where the prices come from"}
    instances:
      - {provider: aws, name: c7i.xlarge, usd_per_hour: 0.1785, source: S1, as_of: 2025-06, ...}

An explicit `usd_per_hour` (--usd-per-hour) overrides the table. Prices are resolved BEFORE a load test
starts, so a bad price never costs a run and nothing is written.
"""
from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from packager.config import PricingConfig
from packager.core.validation import parse_model
from packager.errors import ConfigError

BUNDLED_TABLE = "pricing.yaml"


class InstancePrice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str
    name: str = Field(min_length=1)
    usd_per_hour: float = Field(ge=0)
    vcpus: int | None = None
    memory_gib: float | None = None
    accelerator: str | None = None
    usd_per_gpu_hour: float | None = Field(None, ge=0)
    region: str | None = None
    source: str | None = None
    as_of: str | None = None
    note: str | None = None


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: dict[str, str] = Field(default_factory=dict)
    instances: list[InstancePrice] = Field(min_length=1)
    location: str = "(in memory)"

    @model_validator(mode="after")
    def _check(self) -> "PriceTable":
        seen: set[str] = set()
        for row in self.instances:
            if row.name in seen:
                raise ValueError(f"instance {row.name!r} appears twice")
            seen.add(row.name)
            if row.source is not None and self.sources and row.source not in self.sources:
                raise ValueError(f"instance {row.name!r} cites source {row.source!r}, which is not under 'sources'")
        return self

    def names(self) -> list[str]:
        return [r.name for r in self.instances]

    def get(self, name: str) -> InstancePrice:
        for r in self.instances:
            if r.name == name:
                return r
        lowered = {r.name.lower(): r for r in self.instances}
        if name.lower() in lowered:
            return lowered[name.lower()]
        close = difflib.get_close_matches(name, self.names(), n=5, cutoff=0.5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ConfigError(
            f"Unknown instance {name!r} in the price table {self.location}.{hint} Known instances: "
            f"{', '.join(self.names())}. Give one of them with --instance, a price with --usd-per-hour, "
            "or your own table with --price-table.")


class PriceQuote(BaseModel):
    """The price a cost estimate uses, and where it came from."""

    model_config = ConfigDict(extra="forbid")

    usd_per_hour: float = Field(ge=0)
    instance: str | None = None
    source: str  # a sentence: the table and the row's source/date, or "given with --usd-per-hour"
    table: str | None = None


def load_price_table(path: str | Path | None = None) -> PriceTable:
    """The bundled table (path=None) or a YAML file in the same shape; ConfigError names any bad row."""
    if path is None:
        text = resources.files("packager.data").joinpath(BUNDLED_TABLE).read_text(encoding="utf-8")
        where = "packager/data/pricing.yaml (bundled)"
    else:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"Price table {p} does not exist; "
                              "give a YAML file like packager/data/pricing.yaml.") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"Price table {p} cannot be read: {e}.") from None
        where = str(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"Price table {where} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Price table {where} must be a mapping with 'instances' (and 'sources'), "
                          f"got {type(data).__name__}.")
    return parse_model(PriceTable, {**data, "location": where}, f"Price table {where}")


def resolve_price(pricing: PricingConfig) -> PriceQuote:
    """The hourly price to use: an explicit usd_per_hour wins, else the instance's row of the table."""
    if pricing.usd_per_hour is not None:
        if pricing.usd_per_hour < 0:  # PricingConfig refuses it too; kept for objects built without validation
            raise ConfigError(f"usd_per_hour must be >= 0, got {pricing.usd_per_hour}.")
        return PriceQuote(usd_per_hour=pricing.usd_per_hour, instance=pricing.instance,
                          source="given explicitly (usd_per_hour)", table=None)
    if not pricing.instance:
        raise ConfigError("No price: give an instance from the price table (--instance) or a price (--usd-per-hour).")
    table = load_price_table(pricing.price_table)
    row = table.get(pricing.instance)
    src = table.sources.get(row.source or "", row.source or "unknown source")
    parts = [f"{table.location}: {row.provider} {row.name}", f"{row.region}" if row.region else "",
             f"source {row.source} ({src})" if row.source else "", f"as of {row.as_of}" if row.as_of else "",
             f"note: {row.note}" if row.note else ""]
    return PriceQuote(usd_per_hour=row.usd_per_hour, instance=row.name, table=table.location,
                      source="; ".join(x for x in parts if x))


def usd_per_million_tokens(usd_per_hour: float, tokens_per_s: float, utilisation_fraction: float = 1.0) -> float | None:
    """USD per 1M tokens = usd_per_hour / (tokens_per_s * utilisation * 3600) * 1e6; None when nothing was produced.

    utilisation_fraction is the share of paid hours the server runs at this throughput (1.0: always busy).
    """
    if usd_per_hour < 0:
        raise ConfigError(f"usd_per_hour must be >= 0, got {usd_per_hour}.")
    if not 0 < utilisation_fraction <= 1:
        raise ConfigError(f"utilisation_fraction must be in (0, 1], got {utilisation_fraction}.")
    if tokens_per_s <= 0:
        return None
    return usd_per_hour / (tokens_per_s * utilisation_fraction * 3600.0) * 1e6
