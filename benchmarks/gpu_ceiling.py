"""What caps GPU serving at hundreds of streams (issue 21): RANDOM weights, speed only, no quality.

gpu_speed_8b_frontends.json found that, behind 4 vLLM API server processes, bf16 and FP8 of the Llama-3.1-8B
architecture reach the same ceiling (about 14,000 output tok/s at 512 users, 34-35 ms per output token), although
FP8's matrix products are 1.46x faster at one stream. This run tells the candidates apart on one warm engine per
served variant, at one fixed load (--users closed-loop users, 128 input tokens, 64-192 output tokens):

  * the load generator: packager's locust load test with N worker processes (phase "locustN"), and vLLM's own
    `vllm bench serve` (phase "bench": asyncio, one process, random dataset, same lengths, --ignore-eos);
  * the frontend: the variant name's "@apiN" (API server processes) and "+siK" (`--stream-interval K`: the engine
    sends every K-th token, so the API servers and the client handle K times fewer stream events);
  * the KV cache: "+kv8" serves the variant with an FP8 KV cache (packager's engine.kv_cache_dtype: fp8), half
    the bytes a decode step reads per cached token;
  * the GPU: nvidia-smi's utilization (share of time a kernel ran), sampled every 0.5 s during each phase.

Each phase also records the CPU time every process group used (locust master, locust workers, vLLM API servers,
vLLM engine core, vllm bench), from /proc, as cores busy on average: a group near its process count in cores is
saturated.

    PYTHONPATH=/tmp/site:. VLLM_USE_FLASHINFER_SAMPLER=0 python3 benchmarks/gpu_ceiling.py --work /tmp/g8 \
        --out "$OUT/gpu_ceiling.json" --steps serve:fp8@api4,serve:bf16@api4
    (the checkpoints come from gpu_speed_8b.py --steps model,quantize:fp8 in the same --work)

Wiring check without a GPU (tiny architecture, fake OpenAI server; numbers mean nothing):
    .venv/bin/python benchmarks/gpu_ceiling.py --work /tmp/gc --arch tiny --device cpu --fake-engine \
        --steps model,serve:bf16 --phases locust2 --users 4 --phase-s 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_vs_vllm_bench import VLLM_BENCH_ENTRY  # noqa: E402
from gpu_proof import log, now_utc  # noqa: E402
from gpu_speed_8b import SLO, Bench, engine_config, engine_server, ratio, write_format  # noqa: E402


def parse_variant(name: str) -> tuple[str, int, int, str]:
    """"fp8@api4+si8+kv8" -> ("fp8", 4 API servers, stream interval 8, KV cache "fp8"); missing parts are 1 and
    "auto" (the KV cache in the model's dtype)."""
    head, *tail = name.split("+")
    fmt, _, api = head.partition("@")
    si, kv = 1, "auto"
    ok = not api or (api.startswith("api") and api[3:].isdigit())
    for t in tail:
        if t.startswith("si") and t[2:].isdigit():
            si = int(t[2:])
        elif t == "kv8":
            kv = "fp8"
        else:
            ok = False
    if not ok:
        raise ValueError(f"variant {name!r}: expected FORMAT[@apiN][+siK][+kv8]")
    return fmt, int(api[3:]) if api else 1, si, kv


# ---------------------------------------------------------------------------------------------- sampling
def group_of(cmdline: str) -> str | None:
    if "VLLM::EngineCore" in cmdline or "EngineCore" in cmdline:
        return "vllm_engine_core"
    if "APIServer" in cmdline or "vllm.entrypoints" in cmdline or "packager.engines.vllm_serve" in cmdline:
        return "vllm_api_servers"
    if "vllm.benchmarks.serve" in cmdline:
        return "vllm_bench"
    if "gpu_ceiling.py" in cmdline:
        return None
    if "locust" in cmdline:
        return "locust_workers" if "--worker" in cmdline else ("locust_master" if "--master" in cmdline
                                                               else "locust_other")
    return None


def cpu_times() -> dict[int, tuple[str, float, float]]:
    """pid -> (group, utime + stime in seconds, when read) for the processes of interest."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            g = group_of(cmd)
            if g is None:
                continue
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(d.name)] = (g, (int(f[11]) + int(f[12])) / tick, time.monotonic())
        except (OSError, IndexError, ValueError):
            continue
    return out


class Sampler:
    """CPU per process group (from /proc, every second) and GPU utilization (nvidia-smi, every 0.5 s)."""

    def __init__(self, gpu: bool):
        self.gpu, self.stop_ev = gpu, threading.Event()
        self.first: dict[int, tuple[str, float, float]] = {}
        self.last: dict[int, tuple[str, float, float]] = {}
        self.procs: dict[str, set[int]] = {}
        self.smi: subprocess.Popen | None = None

    def _loop(self) -> None:
        while not self.stop_ev.wait(1.0):
            now = cpu_times()
            for pid, v in now.items():
                self.first.setdefault(pid, v)
                self.procs.setdefault(v[0], set()).add(pid)
            self.last.update(now)

    def __enter__(self) -> Sampler:
        self.t0 = time.monotonic()
        self.first = cpu_times()
        self.th = threading.Thread(target=self._loop, daemon=True)
        self.th.start()
        if self.gpu:
            self.smi_out = open(os.devnull, "w")
            self.smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,power.draw",
                                         "--format=csv,noheader,nounits", "-lms", "500"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_ev.set()
        self.th.join(timeout=5)
        self.wall = time.monotonic() - self.t0
        self.smi_lines: list[str] = []
        if self.smi is not None:
            self.smi.terminate()
            try:
                out, _ = self.smi.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.smi.kill()
                out, _ = self.smi.communicate()
            self.smi_lines = [ln for ln in out.splitlines() if ln.strip()]

    def summary(self) -> dict[str, Any]:
        # each process's CPU time over the span it was seen in, as cores busy on average; summed per group
        busy: dict[str, float] = {}
        for pid, (g, c1, t1) in self.last.items():
            _, c0, t0 = self.first.get(pid, (g, c1, t1))
            if t1 - t0 >= 1.0:
                busy[g] = busy.get(g, 0.0) + max(0.0, c1 - c0) / (t1 - t0)
        out: dict[str, Any] = {"wall_s": round(self.wall, 1), "cores_busy": {
            g: {"cores": round(b, 2), "processes": len(self.procs.get(g, ()))} for g, b in sorted(busy.items())}}
        util = []
        for ln in self.smi_lines:
            try:
                util.append(float(ln.split(",")[0]))
            except ValueError:
                continue
        if util:
            util.sort()
            out["gpu_util_pct"] = {"mean": round(sum(util) / len(util), 1), "p50": util[len(util) // 2],
                                   "min": util[0], "samples": len(util)}
        return out


# ---------------------------------------------------------------------------------------------- phases
def locust_phase(url: str, work: Path, users: int, workers: int, phase_s: float, model: str) -> dict[str, Any]:
    from packager.config import PricingConfig, SLOConfig
    from packager.loadtest.config import LengthDistribution, LoadTestConfig, SweepProfile, SyntheticPrompts
    from packager.loadtest.runner import run_loadtest

    cfg = LoadTestConfig(
        profile=SweepProfile(mode="concurrency", values=[users], step_duration_s=phase_s),
        prompts=SyntheticPrompts(input_tokens=LengthDistribution(mean=128),
                                 output_tokens=LengthDistribution(dist="uniform", mean=128, min=64, max=192),
                                 unique_prompts=4096),
        max_duration_s=600.0, max_requests=1_000_000, drain_timeout_s=30.0, request_timeout_s=120.0,
        workers=workers, warmup_s=4.0, seed=3, prompt_format="chat")
    r = run_loadtest(url, cfg, SLOConfig(**SLO), PricingConfig(instance="gpu_1x_h100_sxm5"), work, model=model)
    p = r.phases[-1]
    return {"tool": f"packager loadtest (locust, {workers} workers)", "users": users,
            "requests_ok": p.requests_ok, "requests_failed": p.requests_failed,
            "output_tokens_per_s": round(p.output_token_throughput_per_s, 1),
            "goodput_output_tokens_per_s": round(p.goodput_output_tokens_per_s, 1),
            "slo_attainment_fraction": round(p.slo_attainment_fraction, 3), "meets_slo": p.meets_slo,
            "ttft_ms_p50": p.ttft.p50_ms, "ttft_ms_p95": p.ttft.p95_ms,
            "tpot_ms_p50": p.tpot.p50_ms, "tpot_ms_p95": p.tpot.p95_ms}


def bench_phase(url: str, model_dir: Path, work: Path, users: int, phase_s: float, model: str,
                tok_s_guess: float = 14000.0) -> dict[str, Any]:
    n = max(users * 2, int(tok_s_guess * phase_s / 128))
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", VLLM_BENCH_ENTRY, "--backend", "openai-chat", "--base-url", url,
           "--endpoint", "/v1/chat/completions", "--model", model, "--tokenizer", str(model_dir),
           "--dataset-name", "random", "--random-input-len", "128", "--random-output-len", "128",
           "--random-range-ratio", "0.5", "--ignore-eos", "--num-prompts", str(n), "--max-concurrency", str(users),
           "--request-rate", "inf", "--seed", "3", "--percentile-metrics", "ttft,tpot,itl,e2el",
           "--metric-percentiles", "50,95", "--save-result", "--result-dir", str(work),
           "--result-filename", "vllm.json", "--disable-tqdm"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(120.0, phase_s * 8))
    (work / "stdout.log").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    if p.returncode != 0 or not (work / "vllm.json").exists():
        raise RuntimeError(f"vllm bench serve failed ({p.returncode}): {p.stderr[-2000:]}")
    j = json.loads((work / "vllm.json").read_text())
    return {"tool": "vllm bench serve (one process, asyncio)", "users": users, "requests": n,
            "wall_s": round(time.monotonic() - t0, 1), "completed": j.get("completed"),
            "failed": j.get("failed"), "output_tokens_per_s": round(j.get("output_throughput", 0.0), 1),
            "ttft_ms_p50": j.get("median_ttft_ms"), "ttft_ms_p95": j.get("p95_ttft_ms"),
            "tpot_ms_p50": j.get("median_tpot_ms"), "tpot_ms_p95": j.get("p95_tpot_ms"),
            "itl_ms_p50": j.get("median_itl_ms")}


# ---------------------------------------------------------------------------------------------- driver
class Ceiling(Bench):
    """gpu_speed_8b's steps (model, and the state in --work) with its own serve step; no ratios."""

    STATE = "ceiling.json"

    def fresh(self) -> dict[str, Any]:
        return {"benchmark": "gpu_ceiling", "weights": "RANDOM (normal, std 0.02): speed only, no quality",
                "started_utc": now_utc(), "slo": SLO, "variants": {}, "errors": []}

    def ratios(self) -> None:
        """Each format's best goodput among its locust phases that met the SLO, and its ratio to bf16's."""
        best: dict[str, dict[str, Any]] = {}
        for vname, v in self.data["variants"].items():
            for key, ph in v["phases"].items():
                if not key.startswith("locust") or not ph.get("meets_slo"):
                    continue
                # weights and KV cache: "fp8" and "fp8+kv8" (FP8 weights, FP8 KV cache) are told apart
                fkey = v["format"] + ("+kv8" if v.get("kv_cache_dtype", "auto") != "auto" else "")
                cur = best.get(fkey)
                if cur is None or ph["goodput_output_tokens_per_s"] > cur["goodput_output_tokens_per_s"]:
                    best[fkey] = {"variant": vname, "phase": key, "users": ph["users"],
                                         "goodput_output_tokens_per_s": ph["goodput_output_tokens_per_s"]}
        self.data["best_goodput_meeting_slo"] = best
        base = best.get("bf16", {}).get("goodput_output_tokens_per_s")
        if base:
            self.data["best_goodput_meeting_slo_vs_bf16"] = {
                f: ratio(b["goodput_output_tokens_per_s"], base) for f, b in best.items() if f != "bf16"}

    def step_quantize(self, only: str | None = None) -> None:
        fmt = only or "fp8"
        self.data.setdefault("checkpoints", {})[fmt] = write_format(self.work / "bf16", self.work / fmt, fmt,
                                                                     self.a.device)

    def step_serve(self, name: str) -> None:
        fmt, api, si, kv = parse_variant(name)
        # one record per served variant and engine batch; its phases keyed by load generator and users, so runs
        # with other --max-num-seqs or --users in the same --work add to the state instead of replacing it
        key = f"{name} seqs{self.a.max_num_seqs}"
        v = self.data["variants"].setdefault(key, {"format": fmt, "api_server_count": api, "stream_interval": si,
                                                    "kv_cache_dtype": kv, "max_num_seqs": self.a.max_num_seqs,
                                                    "phases": {}})
        cfg = engine_config("auto", api, self.a.max_num_seqs).model_copy(update={"kv_cache_dtype": kv})
        if si > 1:
            cfg = cfg.model_copy(update={"extra_args": ["--stream-interval", str(si)]})
        srv = engine_server(self.a, fmt, cfg, name)
        t0 = time.perf_counter()
        srv.start()
        try:
            v["engine_startup_s"] = round(time.perf_counter() - t0, 1)
            for users in self.a.users:
                for ph in self.a.phases:
                    self.phase(srv.base_url, name, fmt, ph, v, users)
                    self.save()
        finally:
            srv.stop()

    def phase(self, url: str, name: str, fmt: str, ph: str, v: dict[str, Any], users: int) -> None:
        """One load phase on the running engine, recorded in v["phases"]; an error is recorded, not raised. A
        load measured again on the same engine is kept as a repeat ("locust8@768#2")."""
        log(f"{name}: phase {ph} at {users} users")
        key = f"{ph}@{users}"
        n = 1
        while (key if n == 1 else f"{key}#{n}") in v["phases"]:
            n += 1
        key = key if n == 1 else f"{key}#{n}"
        try:
            with Sampler(gpu=not self.a.fake_engine) as s:
                d = self.work / "runs" / name / key.replace("@", "_").replace("#", "_")
                if ph.startswith("locust"):
                    res = locust_phase(url, d, users, int(ph[6:]), self.a.phase_s, name)
                elif ph == "bench":
                    res = bench_phase(url, self.work / fmt, d, users, self.a.phase_s, name)
                else:
                    raise ValueError(f"unknown phase {ph!r}: locustN or bench")
            res.update(s.summary())
            v["phases"][key] = res
            log(f"{name} {ph}: {json.dumps(res)}")
        except Exception as e:  # recorded; the next phase still runs
            v["phases"][key] = {"error": repr(e)}
            log(f"{name} {ph} FAILED: {e!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--steps", required=True, help="model, quantize:FORMAT, serve:FORMAT[@apiN][+siK][+kv8], ...")
    ap.add_argument("--arch", default="llama-3.1-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--users", type=lambda t: [int(x) for x in t.split(",") if x], default=[512],
                    help="closed-loop users, one phase set per value in this order, on the same engine: 512,768")
    ap.add_argument("--max-num-seqs", type=int, default=512)
    ap.add_argument("--phases", type=lambda t: [x for x in t.split(",") if x], default=["locust8", "locust12", "bench"])
    ap.add_argument("--phase-s", type=float, default=16.0)
    ap.add_argument("--fake-engine", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    Ceiling(a).run([s for s in a.steps.split(",") if s])
    return 0


if __name__ == "__main__":
    sys.exit(main())
