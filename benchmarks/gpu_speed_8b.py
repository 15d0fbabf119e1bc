"""Speed of every serving format at production size on one GPU (issue 21, item 2): RANDOM weights.

A model with the Llama-3.1-8B architecture (32 layers, hidden 4096, MLP 14336, 32 query / 8 KV heads, vocabulary
128256, untied lm_head, llama3 rope) is written with random weights (normal, std 0.02; norms 1) and a word-level
tokenizer of the same vocabulary size. Its answers are noise. It measures kernels and serving, never quality:
no figure from it may be read as quality. Quality comes from the real bundled model (gpu_h100.json).

Formats, each written in the compressed-tensors layout vLLM loads, with the weights rounded to nearest (GPTQ or
SmoothQuant change the values, not the kernels or the bytes moved):
  bf16        the random checkpoint as written
  fp8         W8A8 FP8: per-channel float8_e4m3 weights, dynamic per-token activations (packager.compress.ct_format)
  w8a8-int8   W8A8 int8: per-channel int8 weights, dynamic per-token activations (packager.compress.ct_format)
  w4a16       W4A16: int4 weights, symmetric, groups of 128, packed by compressed-tensors' own
              PackedQuantizationCompressor ("pack-quantized"; vLLM serves it with its Marlin kernels)
lm_head and the embeddings stay bf16 in every format.

Each format is served by packager.engines.vllm.EngineServer (max_num_seqs 256, max_model_len 4096) and load-tested
by packager.loadtest.runner.run_loadtest: locust (master + 4 workers), closed loop, a concurrency sweep of 1, 32, 128
and 256 users, 12 s a step after a 4 s warm-up, 128 input tokens and 64-192 output tokens (uniform), SLO: TTFT
<= 1000 ms and TPOT <= 50 ms for 90% of requests. One stream = the 1-user step. Goodput at the SLO = the goodput
of the highest load measured to meet the SLO (with --knee-budget-s > 0 the capacity search refines it between
steps; the default run has no search, for device time).

Steps keep their state in --work so they can be split over several commands on one machine:

    PYTHONPATH=/tmp/site:. VLLM_USE_FLASHINFER_SAMPLER=0 python3 benchmarks/gpu_speed_8b.py \
        --work /tmp/g8 --out "$OUT/gpu_speed_8b.json" --steps model,quantize
    ... --steps serve:bf16        (then serve:w4a16, serve:fp8, serve:w8a8-int8; quantize:FORMAT writes one format)
    ... --steps serve:bf16@api4,serve:fp8@api4   (each behind 4 vLLM API server processes, engine.api_server_count;
                                                  its ratios are taken against bf16@api4)

Wiring check without a GPU (tiny architecture, fake OpenAI server; its numbers mean nothing):
    .venv/bin/python benchmarks/gpu_speed_8b.py --work /tmp/g8 --arch tiny --device cpu --fake-engine \
        --steps model,quantize,serve:bf16,serve:w4a16
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

from gpu_proof import atomic_json, device_facts, log, now_utc, versions  # noqa: E402

ARCHS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, rope_scaling={"factor": 8.0, "low_freq_factor": 1.0,
                                                            "high_freq_factor": 4.0,
                                                            "original_max_position_embeddings": 8192,
                                                            "rope_type": "llama3"}),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=64, vocab_size=2048, max_position_embeddings=4096, rope_theta=10000.0),
}
FORMATS = ("bf16", "w4a16", "fp8", "w8a8-int8")
# served variants that reuse another format's checkpoint with another kernel: on Hopper vLLM picks Machete for
# W4A16; "w4a16-marlin" serves the same checkpoint through Marlin (engine.gpu_int4_kernel, which disables Machete)
KERNEL_VARIANTS: dict[str, tuple[str, str]] = {"w4a16-marlin": ("w4a16", "marlin")}
SWEEP_USERS = (1, 32, 128, 256)
STEP_S, WARMUP_S = 12.0, 4.0
SLO = {"ttft_ms": 1000.0, "tpot_ms": 50.0}
GROUP = 128
INSTANCE = "gpu_1x_h100_sxm5"
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


# ---------------------------------------------------------------------------------------------- the model
def tensor_specs(a: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of a LlamaForCausalLM with architecture a (untied lm_head)."""
    h, m, v, d = a["hidden_size"], a["intermediate_size"], a["vocab_size"], a["head_dim"]
    q, kv = a["num_attention_heads"] * d, a["num_key_value_heads"] * d
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for i in range(a["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, q)),
                (p + "mlp.gate_proj.weight", (m, h)), (p + "mlp.up_proj.weight", (m, h)),
                (p + "mlp.down_proj.weight", (h, m)),
                (p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer of vocab_size entries whose vocabulary holds every word of packager's synthetic
    prompts (packager.loadtest.plan.WORDS), so a prompt of n words is n tokens, and every id decodes to a word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from packager.loadtest.plan import WORDS

    words = ["<unk>", "<s>", "</s>"] + sorted(set(WORDS))
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   chat_template=CHAT_TEMPLATE)


def write_random_model(out: Path, arch: str, device: str, shard_gb: float = 4.0) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    a = ARCHS[arch]
    out.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(**a, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False, bos_token_id=1,
                      eos_token_id=2, attention_bias=False, mlp_bias=False, dtype="bfloat16")
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(out)
    word_tokenizer(a["vocab_size"]).save_pretrained(out)
    gen = torch.Generator(device=device).manual_seed(0)
    shards: list[dict[str, Any]] = [{}]
    size, n_params, weight_map = 0, 0, {}
    for name, shape in tensor_specs(a):
        t = (torch.ones(shape, dtype=torch.bfloat16, device=device) if len(shape) == 1 else
             (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * 0.02).to(torch.bfloat16))
        nbytes = t.numel() * 2
        if size + nbytes > shard_gb * 1e9 and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
        n_params += t.numel()
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for fname, sd in zip(names, shards):
        save_file({k: v.cpu().contiguous() for k, v in sd.items()}, str(out / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in sd})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": n_params * 2}, "weight_map": weight_map}, indent=1))
    return {"parameters": n_params, "bytes": n_params * 2, "shards": len(names), "architecture": arch, **a}


# ---------------------------------------------------------------------------------------------- formats
def is_quantized_linear(name: str) -> bool:
    return name.startswith("model.layers.") and name.endswith("_proj.weight")


def w4a16_scheme():
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP, dynamic=False))


def quantize_w4a16(w) -> dict[str, Any]:
    """Round-to-nearest symmetric int4 in groups of GROUP columns, packed by compressed-tensors itself."""
    import torch
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor

    out_f, in_f = w.shape
    g = w.to(torch.float32).reshape(out_f, in_f // GROUP, GROUP)
    scale = (g.abs().amax(dim=2) / 7.5).clamp(min=1e-8).to(torch.bfloat16)  # llm-compressor's symmetric int4 range
    sd = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale}, w4a16_scheme())
    return {k: v for k, v in sd.items()}


def quantization_config(fmt: str) -> dict[str, Any]:
    from compressed_tensors.quantization import QuantizationConfig

    from packager.compress import ct_format

    if fmt in ("fp8", "w8a8-int8"):
        return ct_format.quantization_config("fp8" if fmt == "fp8" else "int8", ["lm_head"])
    return QuantizationConfig(config_groups={"group_0": w4a16_scheme()}, format="pack-quantized",
                              quantization_status="compressed", ignore=["lm_head"]).to_dict()


def write_format(src: Path, dst: Path, fmt: str, device: str) -> dict[str, Any]:
    """Quantize every decoder Linear of src into dst in format fmt, shard by shard, the arithmetic on device."""
    from packager.compress import ct_format
    from packager.compress.checkpoint import copy_non_weight_files, stream_shards

    total = [0]  # bytes of the tensors written

    def transform(name: str, w) -> dict[str, Any]:
        if not is_quantized_linear(name):
            total[0] += w.numel() * w.element_size()
            return {name: w}
        w = w.to(device)
        if fmt == "w4a16":
            base = name[: -len(".weight")]
            out = {f"{base}.{k}": v for k, v in quantize_w4a16(w).items()}
        else:
            q, s = ct_format.quantize_fp8_per_channel(w) if fmt == "fp8" else ct_format.quantize_int8_per_channel(w)
            out = {name: q, name + "_scale": s}
        total[0] += sum(v.numel() * v.element_size() for v in out.values())
        return {k: v.cpu() for k, v in out.items()}

    t0 = time.perf_counter()
    dst.mkdir(parents=True, exist_ok=True)
    copy_non_weight_files(src, dst)
    stream_shards(src, dst, transform)
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = quantization_config(fmt)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return {"format": fmt, "bytes": total[0], "wall_s": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------------------------------- serving
def engine_config(int4_kernel: str = "auto", api_server_count: int = 1, max_num_seqs: int = 256):
    from packager.config import EngineConfig

    return EngineConfig(target="gpu", dtype="bfloat16", max_model_len=4096, max_num_seqs=max_num_seqs,
                        gpu_memory_utilization=0.85, startup_timeout_s=560.0, gpu_int4_kernel=int4_kernel,
                        api_server_count=api_server_count)


def split_served(name: str) -> tuple[str, int]:
    """A served variant's name -> (format or kernel variant, API server processes): "fp8@api4" serves fp8 behind
    4 API server processes; a name without "@apiN" behind one."""
    fmt, _, tag = name.partition("@")
    if tag and not (tag.startswith("api") and tag[3:].isdigit() and int(tag[3:]) >= 1):
        raise ValueError(f"served variant {name!r}: the part after '@' must be apiN (N API server processes)")
    return fmt, int(tag[3:]) if tag else 1


def sweep_config(budget_s: float, users: tuple[int, ...] = SWEEP_USERS, workers: int = 4):
    from packager.loadtest.config import (
        KneeSearch,
        LengthDistribution,
        LoadTestConfig,
        SweepProfile,
        SyntheticPrompts,
    )

    return LoadTestConfig(
        profile=SweepProfile(mode="concurrency", values=list(users), step_duration_s=STEP_S),
        prompts=SyntheticPrompts(input_tokens=LengthDistribution(mean=128),
                                 output_tokens=LengthDistribution(dist="uniform", mean=128, min=64, max=192),
                                 unique_prompts=4096),
        max_duration_s=600.0, max_requests=1_000_000, drain_timeout_s=30.0, request_timeout_s=120.0, workers=workers,
        warmup_s=WARMUP_S, seed=2, prompt_format="chat",
        knee=KneeSearch(enabled=budget_s > 0, precision=0.15, budget_s=max(budget_s, 1.0), probe_duration_s=STEP_S,
                        max_probes=4, extend_factor=2.0))


def phase_summary(p) -> dict[str, Any]:
    return {"load": p.load, "requests_ok": p.requests_ok, "requests_failed": p.requests_failed,
            "output_tokens_per_s": round(p.output_token_throughput_per_s, 1),
            "goodput_output_tokens_per_s": round(p.goodput_output_tokens_per_s, 1),
            "slo_attainment_fraction": round(p.slo_attainment_fraction, 3), "meets_slo": p.meets_slo,
            "ttft_ms_p50": p.ttft.p50_ms, "ttft_ms_p95": p.ttft.p95_ms, "tpot_ms_p50": p.tpot.p50_ms,
            "tpot_ms_p95": p.tpot.p95_ms}


def load_summary(r) -> dict[str, Any]:
    """The sweep's phases; one stream = its 1-user step; at the SLO = the highest load measured to meet the SLO
    (the capacity search's knee when it ran, else the sweep's highest step meeting it) and its goodput."""
    out: dict[str, Any] = {"sweep": [phase_summary(p) for p in r.phases]}
    out["one_stream"] = next((s for s in out["sweep"] if s["load"].get("users") == 1), None)
    met = [s for s in out["sweep"] if s["meets_slo"]]
    best = max(met, key=lambda s: s["load"].get("users", 0)) if met else None
    at: dict[str, Any] = {"users": best["load"].get("users") if best else None, "source": "sweep",
                          "goodput_output_tokens_per_s": best["goodput_output_tokens_per_s"] if best else None,
                          "output_tokens_per_s": best["output_tokens_per_s"] if best else None}
    k = r.knee
    if k is not None:
        out["knee"] = k.model_dump(mode="json")
        hit = [p for p in k.probes if k.knee is not None and p.load == k.knee]
        if hit and (at["users"] is None or k.knee > at["users"]):
            at = {"users": k.knee, "source": hit[-1].source,
                  "goodput_output_tokens_per_s": hit[-1].goodput_output_tokens_per_s,
                  "output_tokens_per_s": hit[-1].output_tokens_per_s}
    out["at_slo"] = at
    out["best_meeting_slo"] = best_meeting_slo(out)
    return out


def best_meeting_slo(v: dict[str, Any]) -> dict[str, Any] | None:
    """The load measured (sweep step or capacity-search probe) with the most goodput among those meeting the SLO.
    At the knee, attainment is near its 90% floor, so a slightly lower load can give more goodput; a deployment
    sized for goodput runs there. Read from a format's stored sweep and knee probes, so it can be recomputed."""
    rows = [(s["load"].get("users"), s["goodput_output_tokens_per_s"], s["output_tokens_per_s"], "sweep")
            for s in v.get("sweep", []) if s.get("meets_slo")]
    rows += [(p["load"], p["goodput_output_tokens_per_s"], p["output_tokens_per_s"], p.get("source", "probe"))
             for p in (v.get("knee") or {}).get("probes", []) if p.get("meets_slo")]
    if not rows:
        return None
    users, good, out, src = max(rows, key=lambda r: r[1])
    return {"users": users, "goodput_output_tokens_per_s": round(good, 1), "output_tokens_per_s": round(out, 1),
            "source": src}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def engine_server(a: argparse.Namespace, ckpt: str, cfg, name: str):
    """The engine serving the checkpoint `ckpt` of a.work as `name` (its log in a.work/logs), or with
    --fake-engine a fake OpenAI server (the wiring check without a GPU)."""
    if a.fake_engine:
        sys.path.insert(0, str(ROOT / "tests"))
        from fakes.fake_openai import FakeOpenAIServer

        return FakeOpenAIServer(model=name, ttft_ms=5, itl_ms=2, output_tokens=64)
    from packager.engines.vllm import EngineServer

    (a.work / "logs").mkdir(exist_ok=True)
    return EngineServer(str(a.work / ckpt), cfg, served_name=name, log_path=a.work / "logs" / f"vllm-{name}.log")


class Bench:
    """Steps run in order, each recorded (an error does not stop the next), the state kept in --work/STATE so the
    steps can be split over several commands on one machine."""

    STATE = "results.json"

    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.work: Path = a.work
        self.work.mkdir(parents=True, exist_ok=True)
        self.state = self.work / self.STATE
        self.data: dict[str, Any] = json.loads(self.state.read_text()) if self.state.is_file() else self.fresh()

    def fresh(self) -> dict[str, Any]:
        return {"benchmark": "gpu_speed_8b", "weights": "RANDOM (normal, std 0.02): speed only, no quality",
                "started_utc": now_utc(), "slo": SLO, "instance_for_prices": INSTANCE, "formats": {}, "errors": []}

    def save(self) -> None:
        atomic_json(self.state, self.data)
        if self.a.out:
            atomic_json(self.a.out, self.data)

    def step_model(self) -> None:
        self.data["device"] = device_facts() if not self.a.fake_engine else {"fake": True}
        self.data["versions"] = versions()
        t0 = time.perf_counter()
        self.data["model"] = write_random_model(self.work / "bf16", self.a.arch, self.a.device)
        self.data["model"]["wall_s"] = round(time.perf_counter() - t0, 1)

    def step_quantize(self, only: str | None = None) -> None:
        for fmt in [only] if only else FORMATS[1:]:
            self.data["formats"].setdefault(fmt, {})["checkpoint"] = write_format(
                self.work / "bf16", self.work / fmt, fmt, self.a.device)
            log(f"quantize {fmt}: {self.data['formats'][fmt]['checkpoint']}")
            self.save()

    def server(self, fmt: str, v: dict[str, Any]):
        from packager.engines.vllm import vllm_env

        base, api = split_served(fmt)
        ckpt, kernel = KERNEL_VARIANTS.get(base, (base, "auto"))
        cfg = engine_config(kernel, api, self.a.max_num_seqs)
        v["api_server_count"], v["max_num_seqs"] = api, self.a.max_num_seqs
        v["vllm_disabled_kernels"] = vllm_env(cfg, base={}).get("VLLM_DISABLED_KERNELS", "")
        return engine_server(self.a, ckpt, cfg, fmt)

    def step_serve(self, fmt: str) -> None:
        from packager.config import PricingConfig, SLOConfig
        from packager.loadtest.runner import run_loadtest

        v = self.data["formats"].setdefault(fmt, {})
        srv = self.server(fmt, v)
        t0 = time.perf_counter()
        srv.start()
        try:
            v["engine_startup_s"] = round(time.perf_counter() - t0, 1)
            log(f"serve {fmt}: ready after {v['engine_startup_s']} s")
            slo, price = SLOConfig(**SLO), PricingConfig(instance=INSTANCE)
            v["sweep_users"] = list(self.a.users)
            v["loadgen_workers"] = self.a.lt_workers
            r = run_loadtest(srv.base_url, sweep_config(self.a.knee_budget_s, self.a.users, self.a.lt_workers), slo,
                             price,
                             self.work / "lt" / fmt, model=fmt)
            v.update(load_summary(r))
            log(f"serve {fmt}: one stream {v['one_stream']['output_tokens_per_s']} tok/s; goodput at the SLO "
                f"{v['at_slo']['goodput_output_tokens_per_s']} tok/s at {v['at_slo']['users']} users")
        finally:
            srv.stop()
            logf = self.work / "logs" / f"vllm-{fmt}.log"
            if logf.is_file():  # which kernels vLLM chose, as it says in its log
                v["engine_kernel_lines"] = [ln.strip()[-200:] for ln in logf.read_text(errors="replace").splitlines()
                                            if "Kernel" in ln or "kernel for" in ln][:6]

    def step_ratios(self) -> None:
        """Nothing of its own: run() recomputes the ratios after every step, so `--steps ratios` redoes them
        from a stored results.json."""

    def ratios(self) -> None:
        f = self.data["formats"]
        out: dict[str, Any] = {}
        for fmt, v in f.items():
            name, api = split_served(fmt)
            if name == "bf16":
                continue
            base = f.get("bf16" if api == 1 else f"bf16@api{api}", {})  # against bf16 behind as many API servers
            one = (v.get("one_stream", {}).get("output_tokens_per_s"),
                   base.get("one_stream", {}).get("output_tokens_per_s"))
            kn = ((v.get("at_slo") or {}).get("goodput_output_tokens_per_s"),
                  (base.get("at_slo") or {}).get("goodput_output_tokens_per_s"))
            bm = [(best_meeting_slo(x) or {}).get("goodput_output_tokens_per_s") for x in (v, base)]
            out[fmt] = {"one_stream_tok_s_vs_bf16": ratio(*one), "goodput_at_slo_vs_bf16": ratio(*kn),
                        "best_goodput_meeting_slo_vs_bf16": ratio(*bm)}
        self.data["ratios_vs_bf16"] = out

    def run(self, steps: list[str]) -> None:
        for step in steps:
            t0 = time.perf_counter()
            log(f"step {step}")
            try:
                if step.startswith("serve:"):
                    self.step_serve(step.split(":", 1)[1])
                elif step.startswith("quantize:"):
                    self.step_quantize(step.split(":", 1)[1])
                else:
                    getattr(self, f"step_{step}")()
            except Exception as e:  # recorded; the next step still runs
                self.data["errors"].append({"step": step, "error": repr(e), "trace": traceback.format_exc()[-3000:]})
                log(f"step {step} FAILED: {e!r}")
            self.data.setdefault("step_wall_s", {})[step] = round(time.perf_counter() - t0, 1)
            self.ratios()
            self.save()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--steps", required=True)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="llama-3.1-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--knee-budget-s", type=float, default=0.0, help="capacity search after the sweep; 0: none")
    ap.add_argument("--users", type=lambda t: tuple(int(x) for x in t.split(",")), default=SWEEP_USERS,
                    help="the sweep's concurrency steps, comma-separated (default 1,32,128,256)")
    ap.add_argument("--max-num-seqs", type=int, default=256, help="the engine's batch (default 256)")
    ap.add_argument("--lt-workers", type=int, default=4, help="locust worker processes (default 4)")
    ap.add_argument("--fake-engine", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    Bench(a).run([s for s in a.steps.split(",") if s])
    return 0


if __name__ == "__main__":
    sys.exit(main())
