"""Shared fixtures. Unit tests use a tiny randomly initialised Llama (built from a config, no download);
integration tests use the bundled SmolLM2-135M-Instruct and share one vLLM server per session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Keep every test run's cache (converted model, bentoml store, registries) in one place that survives
# between runs on the same machine, unless the caller chose one.
os.environ.setdefault("PACKAGER_HOME", str(Path.home() / ".cache" / "packager"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` on a Prometheus text page whose labels include `labels` (0 when none)."""
    import re

    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        m = re.match(r"^([^{ ]+)(?:\{(.*)\})? (\S+)", line)
        if m is None or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


RELIABILITY_RESULTS = Path(os.environ.get("PACKAGER_RELIABILITY_RESULTS",
                                          Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "reliability.json"))


def record_reliability(section: str, data: dict) -> None:
    """Merge one section into benchmarks/results/reliability.json (atomically): the reliability tests' figures."""
    import json

    from packager.fsutil import atomic_write_json
    from packager.provenance import now_iso

    try:
        doc = json.loads(RELIABILITY_RESULTS.read_text())
        if not isinstance(doc, dict):
            doc = {}
    except (FileNotFoundError, ValueError):
        doc = {}
    doc.setdefault("schema_version", 1)
    doc["machine"] = {"cpu_count": os.cpu_count()}
    doc[section] = {**data, "measured_at": now_iso()}
    atomic_write_json(RELIABILITY_RESULTS, doc)


def corrupt_tail(path: Path, n: int = 8) -> None:
    """Flip the last n bytes of a file in place (a tampered or damaged artifact, same size)."""
    with open(path, "r+b") as f:
        f.seek(-n, 2)
        last = f.read(n)
        f.seek(-n, 2)
        f.write(bytes(b ^ 0xFF for b in last))


def sigint_default() -> None:
    """preexec_fn for a command a test interrupts with SIGINT: a test run started in the background of a
    shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt in the child."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args: str, timeout_s: float = 600, env: dict[str, str] | None = None, cwd=None):
    """Run the real `packager` CLI (`python -m packager.cli ARGS`), output captured as text. When it is
    still running after `timeout_s`, its Python stacks are dumped (faulthandler, on SIGABRT) and the test
    fails with them and its output: a hang in CI says where it hung."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "packager.cli", *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"`packager {' '.join(args)}` still ran after {timeout_s:.0f} s; its stacks and output:\n"
                    f"--- stderr ---\n{err[-8000:]}\n--- stdout ---\n{out[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def default_model():
    """The bundled SmolLM2-135M-Instruct as a verified safetensors checkpoint (converted once, cached)."""
    from packager.models import ensure_default_model

    return ensure_default_model()


def build_tiny_llama(out: Path, tokenizer_dir: Path, layers: int = 4, hidden: int = 64, heads: int = 4,
                     kv_heads: int = 2, intermediate: int = 128, seed: int = 0) -> Path:
    """A randomly initialised Llama with the bundled model's tokenizer: fast enough for unit tests of
    compression code, real enough for transformers, GPTQModel and vLLM to load."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=49152, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, default_model) -> Path:
    """Path of a tiny random Llama checkpoint (4 layers, hidden 64) with the real tokenizer."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), default_model.path)


@pytest.fixture(scope="session")
def vllm_default_server(default_model):
    """One real vLLM OpenAI server on the bundled model (bfloat16, CPU build) for the whole session."""
    from packager.config import EngineConfig
    from packager.engine import EngineServer

    srv = EngineServer(default_model.path, EngineConfig(dtype="bfloat16"), served_name="default")
    srv.start()
    yield srv
    srv.stop()
