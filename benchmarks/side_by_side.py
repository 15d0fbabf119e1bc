"""Engines served one after another, round by round, and measured alike: the loop behind the benchmarks that
compare W8A8 schemes (bench_int8_activations.py, gpu_int8_activations.py) or vLLM CPU settings
(bench_vllm_cpu_threads.py) side by side in one run.

Each round serves every contender once, through packager's bare engine (packager.engines.vllm.EngineServer), the
order reversed every other round so that drift on the machine hits every contender alike, and measures output
tokens/s at each stream count with the client of bench_compression.py (greedy, 64 output tokens per request,
ignore_eos). `medians` gives each contender's median over the rounds and its ratio to a reference contender.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable


@dataclass(frozen=True)
class Contender:
    model_dir: Path
    engine: Any  # packager.config.EngineConfig


def serve_rounds(contenders: dict[str, Contender], work: Path, rounds: Iterable[int], streams: tuple[int, ...],
                 per_stream: int, label: str = "model",
                 while_served: Callable[[str, Any, dict[str, Any]], None] | None = None,
                 after: Callable[[str, Path, dict[str, Any]], None] | None = None,
                 on_row: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """One row per round and contender: {"round", label, "server_start_s", "<n>_streams": throughput}.
    `while_served(name, server, row)` runs before the measurement, `after(name, log_path, row)` once the server has
    stopped, and `on_row(rows so far)` after each row (to save partial results)."""
    from bench_compression import _throughput

    from packager.engines.vllm import EngineServer

    rows: list[dict[str, Any]] = []
    for r in rounds:
        order = list(contenders.items()) if r % 2 == 0 else list(reversed(contenders.items()))
        for name, c in order:
            log = work / f"{name}_{r}.log"
            t = time.perf_counter()
            with EngineServer(c.model_dir, c.engine, served_name="m", log_path=log) as srv:
                row: dict[str, Any] = {"round": r, label: name, "server_start_s": round(time.perf_counter() - t, 1)}
                if while_served is not None:
                    while_served(name, srv, row)
                for s in streams:
                    row[f"{s}_streams"] = asyncio.run(_throughput(srv.base_url, "m", s, per_stream, 64))
            if after is not None:
                after(name, log, row)
            rows.append(row)
            print({"round": r, label: name, **{s: row[f"{s}_streams"]["output_tokens_per_s"] for s in streams}},
                  flush=True)
            if on_row is not None:
                on_row(rows)
    return rows


def medians(rows: list[dict[str, Any]], names: Iterable[str], streams: tuple[int, ...], reference: str,
            label: str = "model") -> dict[str, Any]:
    """Per stream count: each contender's median output tokens/s over the rounds, and its ratio to the reference's."""
    names = list(names)
    summary: dict[str, Any] = {}
    for s in streams:
        key = f"{s}_streams"
        med = {n: statistics.median(x[key]["output_tokens_per_s"] for x in rows if x[label] == n) for n in names}
        summary[key] = {**{f"{n}_median_tok_s": v for n, v in med.items()},
                        **{f"ratio_{n}_to_{reference}": round(med[n] / med[reference], 3)
                           for n in names if n != reference}}
    return summary
