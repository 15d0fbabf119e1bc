"""Knowledge distillation: train the student (the stage's input model, e.g. a pruned one) on the teacher's logits.

Loss per token: ``(1 - alpha) * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + alpha * CE(next token)``,
averaged over every position of fixed-length chunks of the calibration text. The teacher is frozen (eval mode,
no gradients). AdamW with linear warm-up and cosine decay to ``min_lr_ratio * lr``; gradients clipped.

Held-out measurement: the calibration texts are split by a hash of their content (deterministic, the same on
every machine) into training texts and held-out texts; the held-out texts are never trained on. The
held-out KL(teacher || student) at temperature 1 is measured before training, every ``eval_every`` steps and
after training.

Resumable: every ``checkpoint_every`` steps (and at the end) the student weights (safetensors), the
optimizer state (torch.save, our own scratch file, loaded with weights_only=True), the RNG state
(safetensors) and the step, loss curve and counters (JSON) are written atomically to
``ctx.work_dir/distill-checkpoint``. A rerun with the same student, teacher and training arguments continues
from that step; ``steps``, ``max_minutes``, ``eval_every`` and ``checkpoint_every`` may change between runs
(the learning-rate schedule follows the new ``steps``). A checkpoint of a different run is ignored.

Layout: the data (text split, chunks, batches) lives in distill_data.py, the run fingerprint and the checkpoint
files in distill_checkpoint.py (their names stay importable from here); this module holds the arguments, the
loss, the schedule, the training loop and the stage.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from packager.compress.base import METHODS, StageArgs, StageContext
from packager.compress.distill_checkpoint import (  # noqa: F401  (re-exported: other modules import them from here)
    _RESUMABLE_CHANGES,
    CHECKPOINT_DIR,
    _file_fingerprint,
    load_checkpoint,
    read_checkpoint_state,
    run_fingerprint,
    save_checkpoint,
)
from packager.compress.distill_data import _Data, _prepare_data, batch_indices, split_texts  # noqa: F401
from packager.compress.prune import (  # noqa: F401
    calibration_chunks,
    copy_aux_files,
    count_parameters,
    load_causal_lm,
    read_model_config,
)
from packager.errors import ConfigError


class DistillArgs(StageArgs):
    """Distil the teacher into the student (the stage's input model) on the calibration text."""

    kind: Literal["distill"] = "distill"
    requires_calibration_data: ClassVar[bool] = True

    teacher: str | None = Field(None, description="teacher model directory; default: the recipe's source model")
    steps: int = Field(60, ge=1, description="optimizer steps")
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    batch_size: int = Field(4, ge=1, description="chunks per step")
    seq_len: int = Field(128, ge=8, description="tokens per chunk")
    temperature: float = Field(2.0, gt=0.0, le=100.0)
    alpha: float = Field(0.0, ge=0.0, le=1.0, description="weight of the next-token label loss (1-alpha on KL)")
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(8, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine decay ends at lr * min_lr_ratio")
    grad_clip: float | None = Field(1.0, gt=0.0)
    eval_every: int = Field(20, ge=1, description="measure held-out KL every N steps")
    eval_chunks: int = Field(8, ge=1, description="held-out chunks of seq_len tokens for the KL measurement")
    holdout_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="fraction of calibration texts held out")
    checkpoint_every: int = Field(20, ge=1)
    seed: int = 0
    max_minutes: float | None = Field(None, gt=0.0, description="stop training after this wall time (minutes)")
    bf16_autocast: bool | None = Field(
        None, description="bfloat16 autocast for training steps; default: on for cuda and for CPUs with native bf16 "
                          "instructions (avx512_bf16 / amx_bf16), off otherwise")
    gradient_checkpointing: bool = False

    def validate_for(self, model_dir: Path) -> None:
        """The student must be a float checkpoint; an explicit teacher must be a model directory that shares the
        student's vocabulary (config.json only, no weights read)."""
        student_cfg = read_model_config(model_dir)
        if self.teacher is not None:
            teacher = Path(self.teacher).expanduser()
            if not (teacher / "config.json").is_file():
                raise ConfigError(f"The teacher {teacher} is not a transformers model directory (no config.json).")
            _check_pair(student_cfg, read_model_config(teacher), Path(model_dir), teacher)
        elif student_cfg.get("quantization_config"):
            _check_pair(student_cfg, student_cfg, Path(model_dir), Path(model_dir))

    @model_validator(mode="after")
    def _check(self) -> "DistillArgs":
        if self.warmup_steps >= self.steps and self.steps > 1:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be smaller than steps={self.steps}")
        return self


# ------------------------------------------------------------------------------------------------------ helpers
def _now() -> float:
    """The clock of the time budget (a function of its own so tests can move it)."""
    return time.monotonic()


def lr_at(step: int, args: DistillArgs) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine to lr * min_lr_ratio."""
    if args.warmup_steps and step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    span = max(1, args.steps - args.warmup_steps)
    progress = min(1.0, (step - args.warmup_steps) / span)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def distill_loss(student_logits, teacher_logits, input_ids, temperature: float, alpha: float):
    """(total, kd, ce): KD = T^2 * mean over tokens of KL(teacher_T || student_T); CE on next tokens."""
    import torch
    import torch.nn.functional as F

    s = student_logits.float()
    t = teacher_logits.float()
    vocab = s.shape[-1]
    kd = F.kl_div(F.log_softmax(s / temperature, -1).view(-1, vocab),
                  F.log_softmax(t / temperature, -1).view(-1, vocab),
                  log_target=True, reduction="batchmean") * temperature ** 2
    ce = torch.zeros((), device=s.device)
    if alpha > 0:
        ce = F.cross_entropy(s[:, :-1].reshape(-1, vocab), input_ids[:, 1:].reshape(-1))
    return (1 - alpha) * kd + alpha * ce, kd, ce


def heldout_metrics(student, teacher, chunks, batch_size: int, device: str, autocast: bool = False
                    ) -> dict[str, float]:
    """Mean per-token KL(teacher || student) at T=1 (nats), and both models' next-token cross-entropy.
    The stage measures without autocast, so the numbers compare across training settings."""
    import torch
    import torch.nn.functional as F

    kl_sum = ce_s = ce_t = 0.0
    n_kl = n_ce = 0
    was_training = student.training
    student.eval()
    with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
        for i in range(0, chunks.shape[0], batch_size):
            ids = chunks[i: i + batch_size].to(device)
            ls = F.log_softmax(student(input_ids=ids, use_cache=False).logits.float(), -1)
            lt = F.log_softmax(teacher(input_ids=ids, use_cache=False).logits.float(), -1)
            kl_sum += float(F.kl_div(ls, lt, log_target=True, reduction="sum"))
            n_kl += ids.shape[0] * ids.shape[1]
            tgt = ids[:, 1:]
            ce_s += float(-ls[:, :-1].gather(-1, tgt.unsqueeze(-1)).sum())
            ce_t += float(-lt[:, :-1].gather(-1, tgt.unsqueeze(-1)).sum())
            n_ce += tgt.numel()
    student.train(was_training)
    return {"kl_teacher_student_nats": kl_sum / n_kl, "student_ce_nats": ce_s / n_ce, "teacher_ce_nats": ce_t / n_ce}


def default_autocast(device: str) -> bool:
    """bf16 autocast on cuda, and on CPUs with native bf16 matrix instructions. Measured on 2 cores with
    avx512_bf16 (SmolLM2 22-layer student, 60 steps of 4 x 128 tokens): 3.6 s/step against 5.5 s/step in float32,
    and the same held-out KL after training (0.533 against 0.529 nats/token)."""
    if device.startswith("cuda"):
        return True
    from packager.hardware import detect_cpu

    return bool({"avx512_bf16", "amx_bf16"} & set(detect_cpu().flags))


def make_optimizer(student, args: DistillArgs):
    """AdamW, fused where this torch build has it (5-10x faster steps on CPU than the per-tensor loop)."""
    import torch

    params = [p for p in student.parameters() if p.requires_grad]
    kw: dict[str, Any] = dict(lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kw)


def _train_step(student, teacher, ids, optimizer, args: DistillArgs, lr: float, device: str, autocast: bool):
    """One optimizer step; returns (loss, kd, ce) as floats."""
    import torch

    for g in optimizer.param_groups:
        g["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, use_cache=False).logits
        s_logits = student(input_ids=ids, use_cache=False).logits
    loss, kd, ce = distill_loss(s_logits, t_logits, ids, args.temperature, args.alpha)
    if not torch.isfinite(loss):
        raise ConfigError(f"The distillation loss became {float(loss)} at lr={lr:g}; lower lr or raise "
                          "temperature, and check that teacher and student share a tokenizer.")
    loss.backward()
    if args.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(student.parameters(), args.grad_clip)
    optimizer.step()
    return loss.item(), kd.item(), ce.item()


class _Bar:
    """The progress bar over training steps, with the loss and the held-out KL, or nothing."""

    def __init__(self, show: bool, total: int, done: int):
        self.show, self.total, self.done = show, total, done

    def __enter__(self):
        from packager.core.progress import progress_bar

        self._cm = progress_bar("distill", total=self.total, completed=self.done, enabled=self.show,
                                text=["loss {loss}", "held-out KL {kl}"], fields={"loss": "-", "kl": "-"})
        self.bar = self._cm.__enter__()
        return self

    def update(self, step: int, loss: float | None = None, kl: float | None = None) -> None:
        fields: dict[str, Any] = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if kl is not None:
            fields["kl"] = f"{kl:.4f}"
        self.bar.update(completed=step, **fields)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


# -------------------------------------------------------------------------------------------------------- stage
def _resolve_teacher(args: DistillArgs, ctx: StageContext) -> Path:
    if args.teacher is not None:
        teacher = Path(args.teacher).expanduser()
    elif ctx.teacher_dir is not None:
        teacher = Path(ctx.teacher_dir)
    else:
        raise ConfigError("Distillation needs a teacher: set `teacher:` in the stage to a model directory, or run it "
                          "in a recipe whose source model is the teacher.")
    if not (teacher / "config.json").is_file():
        raise ConfigError(f"The teacher {teacher} is not a transformers model directory (no config.json).")
    return teacher


def _check_pair(student_cfg: dict[str, Any], teacher_cfg: dict[str, Any], student_dir: Path, teacher_dir: Path):
    if student_cfg.get("quantization_config"):
        raise ConfigError(f"The student {student_dir} is quantized; distil a float model and quantize afterwards "
                          "(put the distill stage before quantization).")
    if student_cfg.get("vocab_size") != teacher_cfg.get("vocab_size"):
        raise ConfigError(
            f"Teacher and student vocabularies differ (teacher {teacher_cfg.get('vocab_size')} tokens in "
            f"{teacher_dir}, "
            f"student {student_cfg.get('vocab_size')} in {student_dir}); logit distillation needs the same tokenizer.")


@dataclass
class _Run:
    """One distillation run: what it trains and measures with, and where it checkpoints."""

    args: DistillArgs
    ctx: StageContext
    device: str
    autocast: bool
    teacher_dir: Path
    student_dir: Path
    data: _Data
    teacher: Any
    student: Any
    optimizer: Any
    ckpt_dir: Path | None


def _load_models(args: DistillArgs, teacher_dir: Path, student_dir: Path, student_cfg: dict[str, Any], device: str):
    """(the frozen teacher, the student in training mode, the dtype the student is saved in)."""
    import torch

    teacher = load_causal_lm(teacher_dir, device, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = load_causal_lm(student_dir, device, dtype=torch.float32)
    save_dtype = getattr(torch, str(student_cfg.get("dtype") or student_cfg.get("torch_dtype") or "float32"),
                         torch.float32)
    if args.gradient_checkpointing:
        student.gradient_checkpointing_enable()
    student.config.use_cache = False
    student.train()
    return teacher, student, save_dtype


def _heldout(run: _Run) -> dict[str, float]:
    return heldout_metrics(run.student, run.teacher, run.data.eval_chunks, run.args.batch_size, run.device)


def _resume(run: _Run) -> tuple[dict[str, Any], int | None]:
    """(training state, step resumed from): the checkpoint's state (loaded into the student and the optimizer)
    when it belongs to this run, else a fresh state."""
    args, ctx, ckpt_dir = run.args, run.ctx, run.ckpt_dir
    fingerprint = run_fingerprint(args, run.student_dir, run.teacher_dir, int(run.data.train_chunks.shape[0]),
                                  run.data.digest)
    state: dict[str, Any] = {"step": 0, "history": [], "tokens_seen": 0, "train_time_s": 0.0,
                             "heldout_before": None, "fingerprint": fingerprint}
    resumed_from = None
    if ckpt_dir is not None:
        old = read_checkpoint_state(ckpt_dir)
        if old is not None and old.get("fingerprint") == fingerprint:
            state = load_checkpoint(ckpt_dir, run.student, run.optimizer)
            resumed_from = state["step"]
            ctx.log(f"distill: resuming from the checkpoint at step {resumed_from} in {ckpt_dir}")
        elif old is not None:
            ctx.log(f"distill: ignoring the checkpoint in {ckpt_dir}: it belongs to a different student, teacher, "
                    "data or arguments")
    else:
        ctx.log("distill: no work_dir was given, so this run cannot be resumed if interrupted")
    return state, resumed_from


def _train(run: _Run, state: dict[str, Any], deadline: float | None) -> tuple[str, float]:
    """Optimizer steps from state["step"] to args.steps (or the deadline), with held-out measurements and
    checkpoints; updates `state`. Returns (why it stopped, seconds in the loop)."""
    args, ctx, device, ckpt_dir = run.args, run.ctx, run.device, run.ckpt_dir
    train_chunks = run.data.train_chunks
    stopped = "steps"
    window: list[float] = []
    last_ckpt = state["step"]
    tokens_per_step = args.batch_size * args.seq_len
    t_train = t_loop = time.monotonic()
    with _Bar(ctx.show_progress, args.steps, state["step"]) as bar:
        step = state["step"]
        while step < args.steps:
            if deadline is not None and _now() > deadline:
                stopped = "time budget"
                ctx.log(f"distill: stopping at step {step} of {args.steps}: max_minutes={args.max_minutes} reached")
                break
            idx = batch_indices(step, int(train_chunks.shape[0]), args.batch_size, args.seed)
            ids = train_chunks[idx].to(device)
            loss, kd, ce = _train_step(run.student, run.teacher, ids, run.optimizer, args, lr_at(step, args), device,
                                       run.autocast)
            step += 1
            window.append(loss)
            state["step"] = step
            state["tokens_seen"] += tokens_per_step
            point = None
            if step % args.eval_every == 0 or step == args.steps:
                m = _heldout(run)
                point = {"step": step, "train_loss": round(sum(window) / len(window), 6),
                         "heldout_kl_nats": round(m["kl_teacher_student_nats"], 6),
                         "heldout_student_ce_nats": round(m["student_ce_nats"], 6),
                         "lr": lr_at(step - 1, args)}
                state["history"].append(point)
                window = []
            bar.update(step, loss, point["heldout_kl_nats"] if point else None)
            if ckpt_dir is not None and (step % args.checkpoint_every == 0 or step == args.steps):
                state["train_time_s"] += time.monotonic() - t_train
                t_train = time.monotonic()
                save_checkpoint(ckpt_dir, run.student, run.optimizer, state)
                last_ckpt = step
    state["train_time_s"] += time.monotonic() - t_train
    loop_s = time.monotonic() - t_loop
    if ckpt_dir is not None and state["step"] != last_ckpt:
        save_checkpoint(ckpt_dir, run.student, run.optimizer, state)
    return stopped, loop_s


def _save_student(run: _Run, save_dtype, output_dir: Path) -> list[str]:
    """Write the trained student (in its original dtype) and the student's tokenizer and other files."""
    student = run.student
    student.config.use_cache = True
    if run.args.gradient_checkpointing:
        student.gradient_checkpointing_disable()
    student.to(save_dtype)
    student.save_pretrained(str(output_dir), safe_serialization=True)
    return copy_aux_files(run.student_dir, output_dir)


def _report(run: _Run, state: dict[str, Any], *, start_step: int, resumed_from: int | None, stopped: str,
            after: dict[str, float], loop_s: float, wall: float, copied: list[str]) -> dict[str, Any]:
    args, ckpt_dir = run.args, run.ckpt_dir
    before = state["heldout_before"]
    steps_this_run = state["step"] - start_step
    tokens_per_step = args.batch_size * args.seq_len
    return {
        "method": "distill",
        "teacher": str(run.teacher_dir), "student": str(run.student_dir),
        "student_params": count_parameters(run.student), "teacher_params": count_parameters(run.teacher),
        "device": run.device, "bf16_autocast": run.autocast,
        "steps": state["step"], "steps_requested": args.steps, "steps_this_run": steps_this_run,
        "resumed_from_step": resumed_from, "stopped_because": stopped,
        "tokens_seen": state["tokens_seen"],
        "train_chunks": int(run.data.train_chunks.shape[0]), "heldout_chunks": int(run.data.eval_chunks.shape[0]),
        "heldout_texts": run.data.n_held_texts, "seq_len": args.seq_len,
        "heldout_kl_before_nats": round(before["kl_teacher_student_nats"], 6),
        "heldout_kl_after_nats": round(after["kl_teacher_student_nats"], 6),
        "heldout_student_ce_before_nats": round(before["student_ce_nats"], 6),
        "heldout_student_ce_after_nats": round(after["student_ce_nats"], 6),
        "heldout_teacher_ce_nats": round(after["teacher_ce_nats"], 6),
        "loss_curve": state["history"],
        "train_time_s_total": round(state["train_time_s"], 2),
        "train_loop_s_this_run": round(loop_s, 2),
        "train_tokens_per_s_this_run": round(steps_this_run * tokens_per_step / loop_s, 1) if steps_this_run else None,
        "wall_time_s": round(wall, 2),
        "checkpoint_dir": str(ckpt_dir) if ckpt_dir is not None else None,
        "copied_files": copied,
    }


@METHODS.register("distill")
def apply_distill(args: DistillArgs, ctx: StageContext) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    t_start = _now()
    student_dir, output_dir = Path(ctx.input_dir), Path(ctx.output_dir)
    teacher_dir = _resolve_teacher(args, ctx)
    student_cfg, teacher_cfg = read_model_config(student_dir), read_model_config(teacher_dir)
    _check_pair(student_cfg, teacher_cfg, student_dir, teacher_dir)
    device = ctx.device
    autocast = args.bf16_autocast if args.bf16_autocast is not None else default_autocast(device)

    tokenizer = AutoTokenizer.from_pretrained(str(student_dir))
    data = _prepare_data(tokenizer, args, ctx)

    torch.manual_seed(args.seed)
    ctx.log(f"distill: teacher {teacher_dir}, student {student_dir}, device {device}"
            f"{', bf16 autocast' if autocast else ''}")
    teacher, student, save_dtype = _load_models(args, teacher_dir, student_dir, student_cfg, device)
    optimizer = make_optimizer(student, args)

    # ---- resume
    ckpt_dir = Path(ctx.work_dir) / CHECKPOINT_DIR if ctx.work_dir is not None else None
    run = _Run(args, ctx, device, autocast, teacher_dir, student_dir, data, teacher, student, optimizer, ckpt_dir)
    state, resumed_from = _resume(run)
    if state["heldout_before"] is None:
        heldout_before = _heldout(run)
        state["heldout_before"] = heldout_before
        ctx.log(f"distill: held-out KL(teacher || student) before training: "
                f"{heldout_before['kl_teacher_student_nats']:.4f} nats/token")

    # ---- train
    deadline = t_start + args.max_minutes * 60 if args.max_minutes is not None else None
    start_step = state["step"]
    stopped, loop_s = _train(run, state, deadline)

    # ---- measure and write
    after = _heldout(run)
    ctx.log(f"distill: held-out KL(teacher || student) after {state['step']} steps: "
            f"{after['kl_teacher_student_nats']:.4f} nats/token")
    copied = _save_student(run, save_dtype, output_dir)
    wall = _now() - t_start
    return _report(run, state, start_step=start_step, resumed_from=resumed_from, stopped=stopped, after=after,
                   loop_s=loop_s, wall=wall, copied=copied)
