"""Prove packager end to end on one NVIDIA GPU with packager's own code (issue 10, item 3).

Steps (each one records its figures, or its error, and the run goes on with the next):
  prepare      the bundled model: packager.core.sources.ensure_default_model() (GGUF -> float32 safetensors)
  pad-heads    (tensor parallelism) a copy of the source model with zero attention heads appended so the
               TP size divides the head counts (same function); later steps use it
  compress     packager.compress.recipe.run_recipe on device "cuda", target gpu: the built-in recipes
               `w8a8-int8` and `fp8`, and W8A8 int8 with SmoothQuant (alpha 0.5), whose calibration
               forward passes run on the GPU
  serve:NAME   one vLLM OpenAI server (packager.engines.vllm.EngineServer, EngineConfig(target="gpu",
               dtype="bfloat16")) for the variant NAME (baseline, w8a8-int8, fp8, w8a8-int8-sq); through it
               packager.evaluate.runner.evaluate_model (default suite, perplexity, fidelity to the baseline)
               and packager.loadtest.runner.run_loadtest (locust, headless, a concurrency sweep)

State lives in --work (model dirs, evaluation and load-test directories, results.json), so the steps can
be split over several commands on the same machine (one command may run 10 minutes at most). After every
step the results are written atomically to --out as well.

    PYTHONPATH=/tmp/site:. VLLM_USE_FLASHINFER_SAMPLER=0 python3 benchmarks/gpu_proof.py \
        --work /tmp/gp --out "$OUT/gpu_h100.json" --steps prepare,compress,serve:baseline
    ... --steps serve:w8a8-int8,serve:fp8

`--fake-engine` swaps the vLLM server for tests/fakes/fake_openai.py (a check of this script's wiring on a
machine without a GPU; its numbers mean nothing and are labelled so).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The local conversion of the bundled GGUF (packager models default) recorded these sha256 sums; the GPU
# host converts the same GGUF with its own transformers and the result is compared file by file.
REFERENCE_SOURCE_FILES = {
    "model.safetensors": "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd",
    "tokenizer.json": "bf346d64f6f0fbcefb4c1b6928a98241467dff36c6fbae5fe1785c4ff90667f4",
}
INSTANCES = ("p5.4xlarge", "gpu_1x_h100_sxm5")  # one H100: AWS list price and Lambda
VARIANT_RECIPES = {
    "w8a8-int8": "w8a8-int8",  # built-in recipe (round to nearest, no calibration)
    "fp8": "fp8",  # built-in recipe (needs compute capability >= 8.9)
    "w8a8-int8-sq": None,  # built here: W8A8 int8 with SmoothQuant alpha 0.5 (calibration on the GPU)
    "prune-distill-w8a8": "prune-distill-w8a8",  # built-in: prune -> distillation (training on the GPU) -> W8A8
}


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def log(msg: str) -> None:
    print(f"[{now_utc()}] {msg}", flush=True)


def atomic_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
    except Exception as e:  # noqa: BLE001 - facts about the host are best effort
        return f"({type(e).__name__}: {e})"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "vllm", "transformers", "compressed-tensors", "locust", "gevent", "pydantic", "httpx",
                 "gguf", "safetensors", "triton"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "(not installed)"
    commit = sh(["git", "-C", str(ROOT), "rev-parse", "--verify", "-q", "HEAD"])
    out["packager_git_commit"] = commit if len(commit) == 40 else "(no git checkout)"
    return out


def device_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {"nvidia_smi": sh(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                               "--format=csv,noheader"])}
    try:
        from packager.hardware import detect_cpu, detect_gpus

        facts["gpus"] = [g.to_dict() for g in detect_gpus()]
        facts["cpu"] = detect_cpu().to_dict()
    except Exception as e:  # noqa: BLE001
        facts["error"] = f"{type(e).__name__}: {e}"
    facts["cpu_count"] = os.cpu_count()
    return facts


class Proof:
    def __init__(self, work: Path, out: Path | None, fake_engine: bool, device: str = "cuda",
                 gpu_type: str | None = None, variants: list[str] | None = None, tensor_parallel_size: int = 1):
        self.device = device
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_type = gpu_type
        self.variants = variants or list(VARIANT_RECIPES)
        self.work = work
        self.out = out
        self.fake_engine = fake_engine
        self.path = work / "results.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {
            "schema_version": 1,
            "what": "packager on one NVIDIA GPU: compress (CUDA), serve with vLLM, evaluate through the engine, "
                    "load-test with locust; SmolLM2-135M-Instruct",
            "fake_engine": fake_engine,
            "started_utc": now_utc(),
            "steps": {},
            "source_model": None,
            "compression": {},
            "variants": {},
            "errors": [],
        }
        os.environ.setdefault("PACKAGER_HOME", str(work / "home"))

    def save(self) -> None:
        self.data["updated_utc"] = now_utc()
        atomic_json(self.path, self.data)
        if self.out is not None:
            atomic_json(self.out, self.data)

    # ------------------------------------------------------------------------------------------ config
    def engine(self):
        from packager.config import EngineConfig

        return EngineConfig(target="gpu", dtype="bfloat16", gpu_type=self.gpu_type, max_model_len=2048, max_num_seqs=64,
                            gpu_memory_utilization=0.8, startup_timeout_s=420.0,
                            tensor_parallel_size=self.tensor_parallel_size)

    def run_config(self):
        from packager.config import RunConfig

        return RunConfig(engine=self.engine())

    def loadtest_config(self):
        from packager.loadtest.config import LengthDistribution, LoadTestConfig, SweepProfile, SyntheticPrompts

        return LoadTestConfig(
            profile=SweepProfile(mode="concurrency", values=[1, 16, 64], step_duration_s=15.0),
            prompts=SyntheticPrompts(input_tokens=LengthDistribution(mean=128),
                                     output_tokens=LengthDistribution(mean=128)),
            max_duration_s=60.0, drain_timeout_s=30.0, request_timeout_s=60.0, workers=4, seed=0)

    # ------------------------------------------------------------------------------------------ steps
    def step_env(self) -> None:
        self.data["device"] = device_facts()
        self.data["tensor_parallel_size"] = self.tensor_parallel_size
        self.data["versions"] = versions()

    def step_prepare(self) -> None:
        from packager.fsutil import sha256_file
        from packager.core.sources import ensure_default_model

        t0 = time.perf_counter()
        m = ensure_default_model(progress=False)
        wall = time.perf_counter() - t0
        same = {}
        for f, ref in REFERENCE_SOURCE_FILES.items():
            p = Path(m.path) / f
            same[f] = (sha256_file(p) == ref) if p.is_file() else None
        self.data["source_model"] = {"path": str(m.path), "name": m.name, "digest": m.digest,
                                     "conversion_wall_time_s": round(wall, 2),
                                     "same_bytes_as_local_conversion": same}

    def step_pad_heads(self) -> None:
        """vLLM splits attention heads over tensor-parallel ranks and refuses a head count that the TP size
        does not divide (SmolLM2-135M: 9 query heads, 3 KV heads). Write a copy of the source model with
        zero heads appended (query heads and KV heads each rounded up to a multiple of the TP size, the
        query/KV group size kept): the new query heads read a new all-zero KV head and their o_proj columns
        are zero, so the network computes the same function. Later steps use the copy as the source."""
        import torch
        from safetensors.torch import load_file, save_file

        sm = self.data.get("source_model")
        if not sm:
            raise RuntimeError("the prepare step has not run (no source model)")
        src = Path(sm.get("unpadded_path") or sm["path"])
        cfg = json.loads((src / "config.json").read_text())
        tp = self.tensor_parallel_size
        nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        hd = cfg.get("head_dim") or cfg["hidden_size"] // nq
        group = nq // nkv
        nkv2 = -(-nkv // tp) * tp
        nq2 = nkv2 * group
        if nq2 % tp:
            raise RuntimeError(f"cannot pad {nq}/{nkv} heads to a multiple of tensor parallel size {tp}")
        dst = self.work / f"source-padded-tp{tp}"
        tmp = dst.with_name(dst.name + ".tmp")
        if tmp.exists():
            import shutil
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file() and f.name not in ("model.safetensors", "config.json", "packager-manifest.json"):
                (tmp / f.name).write_bytes(f.read_bytes())
        sd = load_file(str(src / "model.safetensors"))
        for k, w in list(sd.items()):
            if k.endswith("self_attn.q_proj.weight"):
                sd[k] = torch.cat([w, w.new_zeros((nq2 - nq) * hd, w.shape[1])], 0)
            elif k.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight")):
                sd[k] = torch.cat([w, w.new_zeros((nkv2 - nkv) * hd, w.shape[1])], 0)
            elif k.endswith("self_attn.o_proj.weight"):
                sd[k] = torch.cat([w, w.new_zeros(w.shape[0], (nq2 - nq) * hd)], 1)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        cfg.update(num_attention_heads=nq2, num_key_value_heads=nkv2, head_dim=hd)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        if dst.exists():
            import shutil
            shutil.rmtree(dst)
        os.replace(tmp, dst)
        sm.setdefault("unpadded_path", str(src))
        sm["path"] = str(dst)
        sm["padded_for_tensor_parallel"] = {"tensor_parallel_size": tp, "num_attention_heads": [nq, nq2],
                                            "num_key_value_heads": [nkv, nkv2], "head_dim": hd,
                                            "how": "zero q/k/v rows and zero o_proj columns appended"}

    def source(self):
        from packager.core.sources import resolve_model

        sm = self.data.get("source_model")
        if not sm:
            raise RuntimeError("the prepare step has not run (no source model)")
        return resolve_model(sm["path"])

    def recipe(self, name: str):
        from packager.compress.int8 import W8A8Int8Args
        from packager.compress.recipe import Recipe, load_recipe

        if VARIANT_RECIPES[name] is not None:
            return load_recipe(VARIANT_RECIPES[name])
        return Recipe(name=name, description="W8A8 int8 with SmoothQuant alpha 0.5 (calibration on the GPU)",
                      stages=[W8A8Int8Args(smoothquant_alpha=0.5, n_samples=64, seq_len=512)])

    def step_compress(self, name: str) -> None:
        import torch

        from packager.compress.recipe import run_recipe

        model = self.source()
        recipe = self.recipe(name)
        out_root = self.work / "compressed" / name
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        res = run_recipe(model, recipe, out_root, engine=self.engine(), device=self.device, progress=False,
                         log=lambda m: log(f"compress {name}: {m}"))
        wall = time.perf_counter() - t0
        st = res.stages[-1]
        self.data["compression"][name] = {
            "recipe": res.recipe, "model_dir": res.final_dir, "device": st.device,
            "wall_time_s": round(wall, 3), "stage_wall_time_s": st.wall_time_s, "peak_rss_mb": st.peak_rss_mb,
            "cuda_peak_allocated_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                                       if torch.cuda.is_available() else None),
            "size_bytes": st.size_bytes, "source_size_bytes": res.source.size_bytes,
            "parameter_count": st.parameter_count, "report": st.report, "digest": st.digest,
            "reused": bool(res.reused_stages), "notes": st.notes,
            "stages": [{"label": x.label, "method": x.method, "device": x.device, "wall_time_s": x.wall_time_s,
                        "peak_rss_mb": x.peak_rss_mb, "parameter_count": x.parameter_count, "report": x.report}
                       for x in res.stages],
        }
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # leave the GPU to the vLLM server started next

    def model_dir(self, name: str) -> str:
        if name == "baseline":
            return str(self.source().path)
        c = self.data["compression"].get(name)
        if not c:
            raise RuntimeError(f"variant {name!r} was not compressed (see errors)")
        return c["model_dir"]

    def server(self, name: str, model_dir: str):
        if self.fake_engine:
            sys.path.insert(0, str(ROOT / "tests"))
            from fakes.fake_openai import FakeOpenAIServer

            return FakeOpenAIServer(model=name, ttft_ms=5, itl_ms=1, output_tokens=32)
        from packager.engines.vllm import EngineServer

        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return EngineServer(model_dir, self.engine(), served_name=name, log_path=logs / f"vllm-{name}.log")

    def step_serve(self, name: str) -> None:
        from packager.config import PricingConfig
        from packager.evaluate.runner import evaluate_model, load_summary
        from packager.loadtest.runner import run_loadtest

        cfg = self.run_config()
        mdir = self.model_dir(name)
        v: dict[str, Any] = {"model_dir": mdir, "engine": cfg.engine.model_dump(mode="json")}
        self.data["variants"][name] = v
        baseline = None
        if name != "baseline":
            bdir = self.work / "eval" / "baseline"
            if (bdir / "summary.json").is_file():
                baseline = load_summary(bdir)
        srv = self.server(name, mdir)
        t0 = time.perf_counter()
        srv.start()
        try:
            v["engine_startup_s"] = round(time.perf_counter() - t0, 2)
            log(f"serve {name}: engine ready at {srv.base_url} after {v['engine_startup_s']} s")
            self.save()
            ev_dir = self.work / "eval" / name
            s = evaluate_model(None, cfg, url=srv.base_url, baseline=baseline, out_dir=ev_dir, name=name,
                               show_progress=False)
            v["evaluation"] = {k: getattr(s, k, None) for k in (
                "suite", "n_items", "n_errors", "score", "score_by_category", "perplexity", "perplexity_tokens",
                "baseline_name", "baseline_score", "recovery", "recovery_by_category", "fidelity_agreement",
                "fidelity_mean_kl", "fidelity_kl_positions", "wall_time_s")}
            log(f"serve {name}: score {s.score:.4f} recovery {s.recovery} perplexity {s.perplexity}")
            self.save()
            lt = {}
            for i, inst in enumerate(INSTANCES):
                if i == 0:
                    r = run_loadtest(srv.base_url, self.loadtest_config(), cfg.slo, PricingConfig(instance=inst),
                                     self.work / "loadtest" / name, model=name)
                    lt = summarize_loadtest(r)
                    lt["cost_by_instance"] = {}
                lt["cost_by_instance"][inst] = cost_for(inst, lt)
            v["loadtest"] = lt
        finally:
            srv.stop()

    # ------------------------------------------------------------------------------------------ driver
    def run(self, steps: list[str]) -> None:
        self.step_env()
        self.save()
        for step in steps:
            t0 = time.perf_counter()
            log(f"step {step}: start")
            try:
                if step == "prepare":
                    self.step_prepare()
                elif step == "pad-heads":
                    self.step_pad_heads()
                elif step == "compress":
                    for name in self.variants:
                        try:
                            self.step_compress(name)
                        except Exception as e:  # noqa: BLE001 - record it, try the next method
                            self.error(f"compress:{name}", e)
                        self.save()
                elif step.startswith("serve:"):
                    self.step_serve(step.split(":", 1)[1])
                else:
                    raise ValueError(f"unknown step {step!r}")
                self.data["steps"][step] = {"ok": True, "wall_time_s": round(time.perf_counter() - t0, 2)}
            except Exception as e:  # noqa: BLE001 - record it, go on with the next step
                self.error(step, e)
                self.data["steps"][step] = {"ok": False, "wall_time_s": round(time.perf_counter() - t0, 2)}
            log(f"step {step}: {'ok' if self.data['steps'][step]['ok'] else 'FAILED'} "
                f"({self.data['steps'][step]['wall_time_s']} s)")
            self.save()

    def error(self, step: str, e: BaseException) -> None:
        tb = traceback.format_exc()
        log(f"step {step} failed: {type(e).__name__}: {e}\n{tb}")
        self.data["errors"].append({"step": step, "error": f"{type(e).__name__}: {str(e)[:4000]}",
                                    "traceback_tail": tb[-3000:], "at_utc": now_utc()})


def _lat(s) -> dict[str, Any]:
    return {"p50_ms": s.p50_ms, "p90_ms": s.p90_ms, "p95_ms": s.p95_ms, "p99_ms": s.p99_ms, "mean_ms": s.mean_ms,
            "count": s.count}


def _phase(p) -> dict[str, Any]:
    return {"label": p.label, "load": p.load, "duration_s": round(p.duration_s, 2), "requests_ok": p.requests_ok,
            "requests_failed": p.requests_failed, "request_throughput_per_s": round(p.request_throughput_per_s, 3),
            "output_token_throughput_per_s": round(p.output_token_throughput_per_s, 1),
            "input_token_throughput_per_s": round(p.input_token_throughput_per_s, 1),
            "output_tokens_mean": p.output_tokens_mean, "input_tokens_mean": p.input_tokens_mean,
            "ttft": _lat(p.ttft), "tpot": _lat(p.tpot), "itl": _lat(p.itl), "e2e": _lat(p.e2e),
            "goodput_requests_per_s": round(p.goodput_requests_per_s, 3), "meets_slo": p.meets_slo}


def summarize_loadtest(r) -> dict[str, Any]:
    c = r.cost
    return {
        "generator": "locust (packager.loadtest.runner.run_loadtest, headless, master + workers)",
        "config": r.config, "slo": r.slo.model_dump(mode="json"), "complete": r.complete,
        "summary_basis": r.summary_basis, "summary": _phase(r.summary), "phases": [_phase(p) for p in r.phases],
        "sweep": r.sweep.model_dump(mode="json") if r.sweep else None,
        "cost": c.model_dump(mode="json") if c else None,
        "generator_health": r.generator.model_dump(mode="json"), "warnings": r.warnings,
        "wall_time_s": round(r.wall_time_s, 2),
    }


def cost_for(instance: str, lt: dict[str, Any]) -> dict[str, Any]:
    """USD per 1M output tokens on `instance` at the summary phase's measured output throughput (the same
    formula as packager.loadtest.pricing.usd_per_million_tokens, utilisation 1)."""
    from packager.config import PricingConfig
    from packager.loadtest.pricing import resolve_price, usd_per_million_tokens

    q = resolve_price(PricingConfig(instance=instance))
    tps = lt["summary"]["output_token_throughput_per_s"]
    peak = (lt.get("sweep") or {}).get("peak_output_token_throughput_per_s")
    return {"usd_per_hour": q.usd_per_hour, "output_tokens_per_s": tps,
            "usd_per_million_output_tokens": usd_per_million_tokens(q.usd_per_hour, tps),
            "usd_per_million_output_tokens_at_peak": usd_per_million_tokens(q.usd_per_hour, peak) if peak else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/packager-gpu-proof"))
    ap.add_argument("--out", type=Path, default=None, help="also write the results JSON here")
    ap.add_argument("--steps", default="prepare,compress,serve:baseline,serve:w8a8-int8,serve:fp8")
    ap.add_argument("--variants", default=",".join(VARIANT_RECIPES), help="what the compress step makes")
    ap.add_argument("--fake-engine", action="store_true", help="wiring check only: a fake OpenAI server")
    ap.add_argument("--device", default="cuda", help="compression device (cuda on the GPU host)")
    ap.add_argument("--gpu-type", default=None, help="wiring check only: the GPU to plan for without one")
    ap.add_argument("--tensor-parallel-size", type=int, default=1,
                    help="GPUs per vLLM server (EngineConfig.tensor_parallel_size); compression stays on one device")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    p = Proof(a.work, a.out, a.fake_engine, a.device, a.gpu_type, [v for v in a.variants.split(",") if v],
              tensor_parallel_size=a.tensor_parallel_size)
    p.run([s.strip() for s in a.steps.split(",") if s.strip()])
    return 1 if any(not s["ok"] for s in p.data["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
