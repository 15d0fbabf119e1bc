"""Resumable distillation (see distill.py): the fingerprint that identifies a run (arguments, student, teacher,
data), and the checkpoint folder it writes every ``checkpoint_every`` steps: the student weights (safetensors),
the optimizer state (torch.save, our own scratch file, loaded with weights_only=True), the RNG state
(safetensors) and the step, loss curve and counters (JSON), written atomically."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.fsutil import atomic_dir, atomic_write_text

if TYPE_CHECKING:
    from packager.compress.base import StageArgs

CHECKPOINT_DIR = "distill-checkpoint"
# Arguments that may change between an interrupted run and its continuation.
_RESUMABLE_CHANGES = {"steps", "max_minutes", "eval_every", "checkpoint_every"}


def _file_fingerprint(model_dir: Path) -> dict[str, Any]:
    """Cheap identity of a model directory: config.json digest, and per weight file its size and the sha256 of
    its first and last MiB."""
    out: dict[str, Any] = {"config": hashlib.sha256((Path(model_dir) / "config.json").read_bytes()).hexdigest()}
    for p in sorted(Path(model_dir).glob("*.safetensors")):
        size = p.stat().st_size
        h = hashlib.sha256()
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read(1 << 20))
        out[p.name] = [size, h.hexdigest()]
    return out


def run_fingerprint(args: StageArgs, student_dir: Path, teacher_dir: Path, n_train_chunks: int,
                    data_digest: str) -> str:
    payload = {
        "args": {k: v for k, v in args.model_dump().items() if k not in _RESUMABLE_CHANGES and k != "teacher"},
        "student": _file_fingerprint(student_dir), "teacher": _file_fingerprint(teacher_dir),
        "n_train_chunks": n_train_chunks, "data": data_digest,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def save_checkpoint(ckpt_dir: Path, student, optimizer, state: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file, save_model

    with atomic_dir(ckpt_dir) as tmp:
        save_model(student, str(tmp / "student.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / "rng.safetensors"))
        atomic_write_text(tmp / "state.json", json.dumps(state, indent=1))


def load_checkpoint(ckpt_dir: Path, student, optimizer) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file, load_model

    load_model(student, str(ckpt_dir / "student.safetensors"))
    optimizer.load_state_dict(torch.load(ckpt_dir / "optimizer.pt", weights_only=True,
                                         map_location=next(student.parameters()).device))
    rng = load_file(str(ckpt_dir / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return json.loads((ckpt_dir / "state.json").read_text())


def read_checkpoint_state(ckpt_dir: Path) -> dict[str, Any] | None:
    p = Path(ckpt_dir) / "state.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
