"""The GGUF fidelity pass with and without keeping the shared leading prompt tokens, in one run.

A GGUF variant's fidelity figures are read in this process by llama.cpp (packager.gguf.topk.GgufTopk), one
teacher-forced forward pass per answer of the fidelity corpus. Every chat prompt begins with the same tokens (the
template's system turn), so the reader keeps what its context already holds of a prompt's start and decodes only
the rest. This script reads the same answers twice with one GGUF, the reader as shipped and then one that starts
each answer from an empty context (the earlier behaviour), in the order the corpus lists them, and records both
times and whether the two gave the same top-k rows, value for value.

    .venv/bin/python benchmarks/bench_gguf_topk_prefix.py --gguf VARIANT/model.gguf \\
        --items RUN/variants/baseline/eval/fidelity_items.jsonl     # writes benchmarks/results/gguf_topk_prefix.json

--items is a baseline's fidelity reference from a release (its prompts' token ids and greedy answers);
--gguf a GGUF export of the same model.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from packager.fsutil import sha256_file  # noqa: E402
from packager.gguf.topk import GgufTopk  # noqa: E402


class FreshTopk(GgufTopk):
    """The reader as it was: every answer from an empty context."""

    def _eval(self, llm: Any, ids: list[int], n_prompt: int) -> None:
        llm.reset()
        llm.eval(ids)
        self.decoded_tokens += len(ids)


def read_all(reader: GgufTopk, items: list[dict[str, Any]], k: int, positions: int) -> tuple[list[Any], float]:
    reader(items[0]["prompt_token_ids"], items[0]["output_token_ids"], k, positions)  # load the model, untimed
    reader.reused_tokens = reader.decoded_tokens = 0
    t0 = time.perf_counter()
    rows = [reader(it["prompt_token_ids"], it["output_token_ids"], k, positions) for it in items]
    return rows, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--items", type=Path, required=True)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--positions", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gguf_topk_prefix.json")
    a = ap.parse_args(argv)
    items = [json.loads(ln) for ln in a.items.read_text().splitlines() if ln.strip()]
    items = [it for it in items if it.get("prompt_token_ids") and it.get("output_token_ids")]
    threads = min(2, os.cpu_count() or 1)
    result: dict[str, Any] = {"benchmark": "gguf_topk_prefix", "gguf_sha256": sha256_file(a.gguf),
                              "gguf_bytes": a.gguf.stat().st_size, "items_sha256": sha256_file(a.items),
                              "answers": len(items), "top_k": a.top_k, "positions_per_answer": a.positions,
                              "threads": threads, "cpu_count": os.cpu_count(), "platform": platform.platform(),
                              "runs": {}}
    out_rows = {}
    for name, cls in (("fresh_context_each_answer", FreshTopk), ("shared_prefix_kept", GgufTopk)):
        r = cls(a.gguf, n_ctx=2048, threads=threads)
        try:
            rows, wall = read_all(r, items, a.top_k, a.positions)
        finally:
            r.close()
        out_rows[name] = rows
        result["runs"][name] = {"wall_s": round(wall, 1), "decoded_tokens": r.decoded_tokens,
                                "reused_tokens": r.reused_tokens,
                                "tokens_per_s": round((r.decoded_tokens + r.reused_tokens) / wall, 1)}
        print(name, result["runs"][name], flush=True)
    a_rows, b_rows = out_rows["fresh_context_each_answer"], out_rows["shared_prefix_kept"]
    result["identical_answers"] = sum(x == y for x, y in zip(a_rows, b_rows))
    f, s = result["runs"]["fresh_context_each_answer"], result["runs"]["shared_prefix_kept"]
    result["time_ratio_kept_to_fresh"] = round(s["wall_s"] / f["wall_s"], 3)
    result["reused_share_of_tokens"] = round(s["reused_tokens"] / (s["reused_tokens"] + s["decoded_tokens"]), 3)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
