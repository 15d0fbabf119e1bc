"""Shared fixtures. Unit tests use a tiny randomly initialised Llama (built from a config, no download);
integration tests use the bundled SmolLM2-135M-Instruct and share one vLLM server per session."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Keep every test run's cache (converted model, bentoml store, registries) in one place that survives
# between runs on the same machine, unless the caller chose one.
os.environ.setdefault("PACKAGER_HOME", str(Path.home() / ".cache" / "packager"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
# Every vLLM engine the tests start (directly, in a bento, or in a CLI subprocess) skips torch.compile: on 2 CPU
# cores one then starts in about 75 s instead of about 250 s. The tests check behaviour, not speed.
os.environ.setdefault("PACKAGER_ENGINE__ENFORCE_EAGER", "true")

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


# benchmarks/bench_reliability.py points this at benchmarks/results/reliability.json; a plain test run writes
# beside the system's temp files, so `make test` never rewrites the committed figures the README quotes.
RELIABILITY_RESULTS = Path(os.environ.get("PACKAGER_RELIABILITY_RESULTS",
                                          Path(tempfile.gettempdir()) / "packager-reliability.json"))


def record_reliability(section: str, data: dict) -> None:
    """Merge one section into the reliability figures' JSON (atomically): RELIABILITY_RESULTS."""
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


def process_report(pid: int) -> str:
    """What a process that hangs, and the machine around it, are doing: for a hang that leaves no Python stack
    (a process stopped, blocked in the kernel or starved of CPU never runs faulthandler's SIGABRT handler)."""
    import subprocess

    def read(path: str) -> str:
        try:
            return Path(path).read_text(errors="replace").strip()
        except OSError as e:
            return f"<{type(e).__name__}: {e.strerror}>"

    keep = ("State", "Threads", "VmRSS", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt", "Cpus_allowed_list",
            "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
    out = [f"pid {pid}: " + "; ".join(line.replace("\t", " ") for line in read(f"/proc/{pid}/status").splitlines()
                                    if line.split(":")[0] in keep)]
    stat = read(f"/proc/{pid}/stat")
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) > 39:  # after "pid (comm)": state=0 ... utime=11 stime=12 nice=16 policy=38 (clock ticks)
        tck = os.sysconf("SC_CLK_TCK")
        out.append(f"cpu used: user {int(fields[11]) / tck:.2f} s, system {int(fields[12]) / tck:.2f} s; "
                   f"nice {fields[16]}, policy {fields[38]}")
    status = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in read(f"/proc/{pid}/status").splitlines()
              if ":" in line}
    summary = (f"state {status.get('State')}, wchan {read(f'/proc/{pid}/wchan')!r}, "
               + (f"cpu user {int(fields[11]) / os.sysconf('SC_CLK_TCK'):.2f} s" if len(fields) > 39 else "cpu ?"))
    out.append(f"wchan {read(f'/proc/{pid}/wchan')!r}; syscall {read(f'/proc/{pid}/syscall')!r}")
    out.append("kernel stack: " + read(f"/proc/{pid}/stack").replace("\n", " | "))
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        tstat = read(f"{task}/stat")
        out.append(f"  thread {task.name} {read(f'{task}/comm')!r}: state {tstat.rsplit(')', 1)[-1].split()[:1]}, "
                   f"wchan {read(f'{task}/wchan')!r}")
    out.append(f"loadavg {read('/proc/loadavg')}")
    for res in ("cpu", "memory", "io"):
        out.append(f"pressure {res}: " + read(f"/proc/pressure/{res}").replace("\n", " | "))
    mem = {line.split(":")[0]: line.split(":")[1].strip() for line in read("/proc/meminfo").splitlines() if ":" in line}
    out.append(f"memory: total {mem.get('MemTotal')}, available {mem.get('MemAvailable')}, swap free {mem.get('SwapFree')}")
    try:
        ps = subprocess.run(["ps", "-eo", "pid,ppid,ni,cls,stat,pcpu,rss,etime,wchan:22,args", "--sort=-pcpu"],
                            capture_output=True, text=True, timeout=10).stdout
        rows = ps.splitlines()
        user = [r for r in rows[1:] if r.split()[1] not in ("0", "2")]  # kernel threads left out
        out += [row[:160] for row in rows[:1] + user[:15]]
    except (OSError, subprocess.TimeoutExpired) as e:
        out.append(f"ps: {e}")
    # the facts that tell a stopped, blocked or starved process apart, repeated at the end of the report
    out.append(f"in short: pid {pid} {summary}; loadavg {read('/proc/loadavg')}; "
               f"memory available {mem.get('MemAvailable')}; "
               f"pressure cpu {read('/proc/pressure/cpu').splitlines()[:1]}, "
               f"memory {read('/proc/pressure/memory').splitlines()[:1]}, io {read('/proc/pressure/io').splitlines()[:1]}")
    return "\n".join(out)


def _fail_hung(proc, args, waited_s: float, finish) -> None:
    """Fail the test for a `packager` command still running after `waited_s`: the state of the process and the
    machine, then its Python stacks (SIGABRT under faulthandler), then SIGKILL if SIGABRT did not end it.
    `finish(timeout_s)` collects the output until the process exits: (stdout, stderr), or TimeoutExpired."""
    import signal
    import subprocess

    before = process_report(proc.pid)
    proc.send_signal(signal.SIGABRT)
    after = ""
    try:
        out, err = finish(30)
    except subprocess.TimeoutExpired:
        after = "\n--- 30 s after SIGABRT it still ran; its state then (SIGKILL next) ---\n" + process_report(proc.pid)
        proc.kill()
        out, err = finish(None)
    # The process's own state goes last: CI shows the tail of a failure, and that is what tells a hang apart.
    pytest.fail(f"`packager {' '.join(args)}` still ran after {waited_s:.0f} s.\n"
                f"--- stdout ---\n{out[-600:]}\n--- stderr (Python stacks on SIGABRT) ---\n{err[-6000:]}\n"
                f"--- its state and the machine's when it was found hung ---\n{before}{after}")


def _cli_argv(args) -> list[str]:
    import sys

    return [sys.executable, "-X", "faulthandler", "-m", "packager.cli", *args]


def run_cli(*args: str, timeout_s: float = 600, env: dict[str, str] | None = None, cwd=None):
    """Run the real `packager` CLI (`python -m packager.cli ARGS`), output captured as text. When it is
    still running after `timeout_s`, the test fails with the process's and the machine's state, its Python
    stacks (faulthandler, on SIGABRT) and its output: a hang in CI says where it hung."""
    import subprocess

    proc = subprocess.Popen(_cli_argv(args), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _fail_hung(proc, args, timeout_s, lambda t: proc.communicate(timeout=t))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class CliProcess:
    """A `packager` command left running (a live monitor, say) whose stdout lines the test reads as they come,
    each with a deadline; a command that goes silent fails the test as `run_cli` does."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd=None):
        import queue
        import subprocess
        import threading

        self.args = args
        self.proc = subprocess.Popen(_cli_argv(args), env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self._lines: queue.Queue = queue.Queue()
        self._out: list[str] = []
        self._err: list[str] = []
        self._pumps = [threading.Thread(target=self._pump, args=(self.proc.stdout, self._out, self._lines.put), daemon=True),
                       threading.Thread(target=self._pump, args=(self.proc.stderr, self._err, None), daemon=True)]
        for t in self._pumps:
            t.start()

    @staticmethod
    def _pump(stream, keep: list, put) -> None:
        for line in stream:
            keep.append(line)
            if put is not None:
                put(line)
        if put is not None:
            put(None)

    def _finish(self, timeout_s):
        self.proc.wait(timeout=timeout_s)  # TimeoutExpired goes to the caller
        for t in self._pumps:
            t.join(10)
        return "".join(self._out), "".join(self._err)

    def readline(self, timeout_s: float) -> str:
        """The next line of stdout; fails the test if none comes within `timeout_s` or the command exited."""
        import queue

        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            _fail_hung(self.proc, self.args, timeout_s, self._finish)
        if line is None:
            out, err = self._finish(30)
            pytest.fail(f"`packager {' '.join(self.args)}` exited with code {self.proc.returncode} before the next "
                        f"line.\n--- stderr ---\n{err[-8000:]}\n--- stdout ---\n{out[-2000:]}")
        return line

    def wait(self, timeout_s: float):
        """Wait for the exit; (returncode, stdout, stderr)."""
        import subprocess

        try:
            out, err = self._finish(timeout_s)
        except subprocess.TimeoutExpired:
            _fail_hung(self.proc, self.args, timeout_s, self._finish)
        return self.proc.returncode, out, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_engine(**kw):
    """The engine settings of a vLLM server a test starts itself: the defaults, without torch.compile."""
    from packager.config import EngineConfig

    return EngineConfig(enforce_eager=True, **kw)


test_engine.__test__ = False  # a helper, not a test


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
    from packager.core.sources import ensure_default_model

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
    """One real vLLM OpenAI server on the bundled model (dtype auto, CPU build) for the whole session."""
    from packager.engines.vllm import EngineServer

    srv = EngineServer(default_model.path, test_engine(), served_name="default")
    srv.start()
    yield srv
    srv.stop()
