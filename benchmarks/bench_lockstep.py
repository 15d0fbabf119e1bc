"""Lockstep in closed-loop load tests: the release's old default step (every request 128 tokens in and exactly 64
out, all users starting at once, every request measured), its new one (32-96 out), and the new one with the step's
first 5 s left out (`warmup_s`), on one llama-server, alternated twice, through `packager loadtest`.

    python benchmarks/bench_lockstep.py [--quant q4_k_m] [--users 16] [--step-s 20]

Writes benchmarks/results/lockstep.json. Users that start together and ask for the same lengths finish together
and start again together: every wave's prompts are prefilled at once, and TTFT is that whole prefill."""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_engines as be  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "lockstep.json"
PACKAGER = str(Path(sys.executable).with_name("packager"))


CONDITIONS = ("old", "new", "new+warmup")


def _config(users: int, step_s: float, cond: str, seed: int) -> dict:
    out = {"mean": 64} if cond == "old" else {"dist": "uniform", "mean": 64, "min": 32, "max": 96}
    return {"loadtest": {"profile": {"kind": "concurrency", "users": users, "duration_s": step_s},
                         "prompts": {"kind": "synthetic", "input_tokens": {"mean": 128}, "output_tokens": out},
                         "warmup_s": 5 if cond == "new+warmup" else 0, "max_duration_s": step_s,
                         "seed": seed}}  # prompts of their own: none found in the server's prompt cache


def _run(url: str, cfg: dict, work: Path, name: str) -> dict:
    import yaml

    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = work / name
    subprocess.run([PACKAGER, "loadtest", "--target", url, "-c", str(path), "--out", str(out)], check=True,
                   capture_output=True, timeout=300)
    ph = json.loads((out / "loadtest.json").read_text())["phases"][0]
    return {"requests_measured": ph["requests_sent"], "requests_warmup_excluded": ph["requests_warmup_excluded"],
            "output_tokens_per_s": round(ph["output_token_throughput_per_s"], 1),
            "ttft_ms_p50": round(ph["ttft"]["p50_ms"]), "ttft_ms_p95": round(ph["ttft"]["p95_ms"]),
            "tpot_ms_p50": round(ph["tpot"]["p50_ms"], 1), "slo_attainment": round(ph["slo_attainment_fraction"], 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quant", default="q4_k_m")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--step-s", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)

    from packager.config import EngineConfig
    from packager.engines.llamacpp import LlamaCppServer, cpu_threads
    from packager.provenance import now_iso

    home = be.packager_home_path() / "bench-engines"
    model = be._models(home, [f"llamacpp-{a.quant}"])[f"llamacpp-{a.quant}"]
    runs = []
    with tempfile.TemporaryDirectory() as tmp, \
            LlamaCppServer(model, EngineConfig(backend="llamacpp", max_model_len=2048), served_name=a.quant,
                           log_path=Path(tmp) / "server.log") as srv:
        for i, cond in enumerate(CONDITIONS * 2):
            name = f"{i}-{cond.replace('+', '-')}"
            r = {"run": i, "step": cond, **_run(srv.base_url, _config(a.users, a.step_s, cond, 1000 + i), Path(tmp),
                                                            name)}
            print(json.dumps(r), flush=True)
            runs.append(r)
    out = {"benchmark": "bench_lockstep", "when": now_iso(), "how": __doc__.split("\n\n")[0],
           "machine": {"cpus": cpu_threads(), "platform": platform.platform()},
           "server": f"llama-server, packager's arguments, the bundled model's {a.quant.upper()} GGUF",
           "users": a.users, "step_s": a.step_s,
           "old": "128 tokens in, exactly 64 out, every request measured",
           "new": "128 tokens in, 32-96 out (uniform), every request measured (the release's default)",
           "new+warmup": "the same, requests started in the first 5 s left out (not the default: see "
                         "packager.release.estimate.default_loadtest)",
           "runs": runs}
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
