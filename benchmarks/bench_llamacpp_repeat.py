"""Do llama-server's greedy answers repeat from run to run? The default suite's prompts sent twice at each of three
settings to one llama-server (packager's launcher and arguments) serving a GGUF: 8 concurrent requests, 8 with
`cache_prompt: false` (no reuse of a slot's cached prefix), and one request at a time. Per setting: the wall time
of each pass, and how many answers differ between its two passes and from the one-at-a-time answers.

    .venv/bin/python benchmarks/bench_llamacpp_repeat.py GGUF_ARTIFACT_DIR \
        [--out benchmarks/results/llamacpp_repeat.json]

GGUF_ARTIFACT_DIR: a directory holding model.gguf (a release's variants/gguf-q8_0/stages/01-gguf, or
`packager gguf export`). About 8 minutes on 2 cores. packager evaluates through llama.cpp one request at a time
(packager.engines.select: reproducible_concurrency) because of what this measures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = (("concurrency 8", 8, None), ("concurrency 8, cache_prompt false", 8, False), ("one at a time", 1, None))


def main() -> int:
    import httpx

    from packager.config import EngineConfig
    from packager.core.prompt_format import request_body
    from packager.engines.llamacpp import LlamaCppServer
    from packager.evaluate.suite import load_suite
    from packager.gguf.artifact import gguf_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "llamacpp_repeat.json")
    a = ap.parse_args()
    items = load_suite("default").items

    def one_pass(base: str, conc: int, cache: bool | None) -> tuple[list[str], float]:
        def one(it):
            path, prompt = request_body("chat", it.chat_messages())
            body = {"model": "m", **prompt, "max_tokens": it.max_tokens, "temperature": 0.0, "seed": 0}
            if cache is not None:
                body["cache_prompt"] = cache
            r = httpx.post(base + path, json=body, timeout=300)
            r.raise_for_status()
            return r.json()["choices"][0]["message"]["content"]
        t0 = time.monotonic()
        with ThreadPoolExecutor(conc) as ex:
            out = list(ex.map(one, items))
        return out, round(time.monotonic() - t0, 1)

    engine = EngineConfig(backend="llamacpp", max_model_len=2048)
    answers: dict[str, list[list[str]]] = {}
    walls: dict[str, list[float]] = {}
    with LlamaCppServer(a.artifact, engine, served_name="m") as srv:
        for label, conc, cache in SETTINGS:
            for _ in range(2):
                out, wall = one_pass(srv.base_url, conc, cache)
                answers.setdefault(label, []).append(out)
                walls.setdefault(label, []).append(wall)
                print(f"{label}: {wall} s", flush=True)
        slots = srv.slots

    def differ(x: list[str], y: list[str]) -> int:
        return sum(p != q for p, q in zip(x, y))

    ref = answers["one at a time"][0]
    doc = {"benchmark": "bench_llamacpp_repeat", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "gguf": gguf_path(a.artifact).name, "artifact": a.artifact.name, "quant_dir": a.artifact.parent.parent.name,
           "suite": "default", "items": len(items), "server": {"slots": slots, "max_model_len": engine.max_model_len},
           "settings": {label: {"concurrency": conc, "cache_prompt": cache, "wall_s": walls[label],
                                "answers_differing_between_its_two_passes": differ(*answers[label]),
                                "answers_differing_from_one_at_a_time": differ(answers[label][0], ref)}
                        for label, conc, cache in SETTINGS}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    for label, d in doc["settings"].items():
        print(f"{label}: {d['answers_differing_between_its_two_passes']} of {len(items)} answers differ between "
              f"two passes; {d['answers_differing_from_one_at_a_time']} from one at a time; wall {d['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
