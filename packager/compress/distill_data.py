"""The data of a distillation run (see distill.py): the calibration texts split by content hash into training
and held-out texts, both cut into token chunks, and the chunk indices of every training step."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from packager.compress.base import StageContext
from packager.compress.prune import calibration_chunks
from packager.errors import ConfigError


class DataArgs(Protocol):
    """The settings of a distillation stage (DistillArgs) that shape its data."""

    holdout_fraction: float
    seq_len: int
    eval_chunks: int


def split_texts(texts: list[str], holdout_fraction: float) -> tuple[list[str], list[str]]:
    """(train, held-out) by the sha256 of each text: the lowest round(n * fraction) digests are held out.
    With a single text, its last fraction (by characters, cut at a line break when possible) is held out."""
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ConfigError("Distillation needs calibration texts and none were given; give the recipe calibration "
                          "data (the bundled corpus or your own texts).")
    if len(texts) == 1:
        t = texts[0]
        cut = int(len(t) * (1 - holdout_fraction))
        nl = t.rfind("\n", 0, cut)
        cut = nl if nl > len(t) // 2 else cut
        return [t[:cut]], [t[cut:]]
    k = min(max(round(len(texts) * holdout_fraction), 1), len(texts) - 1)
    order = sorted(range(len(texts)), key=lambda i: (hashlib.sha256(texts[i].encode()).hexdigest(), i))
    held = set(order[:k])
    return [t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held]


def batch_indices(step: int, n_chunks: int, batch_size: int, seed: int) -> list[int]:
    """Chunk indices of step `step`: epochs of a seeded permutation, a pure function of the step (so a resumed
    run sees exactly the batches an uninterrupted one would)."""
    import torch

    out = []
    for g in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(g, n_chunks)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        out.append(int(torch.randperm(n_chunks, generator=gen)[pos]))
    return out


@dataclass
class _Data:
    """The tokenised calibration text of a run: training and held-out chunks."""

    train_chunks: Any
    eval_chunks: Any
    n_train_texts: int
    n_held_texts: int
    digest: str  # sha256 of both chunk tensors: part of the run fingerprint


def _prepare_data(tokenizer, args: DataArgs, ctx: StageContext) -> _Data:
    """Split the calibration texts into training and held-out texts and cut both into chunks of seq_len."""
    train_texts, held_texts = split_texts(ctx.calibration_texts, args.holdout_fraction)
    train_chunks = calibration_chunks(tokenizer, train_texts, args.seq_len)
    try:
        eval_chunks = calibration_chunks(tokenizer, held_texts, args.seq_len, args.eval_chunks)
    except ConfigError:
        # The held-out texts are shorter than one chunk: hold out the last training chunks instead.
        n_eval = min(args.eval_chunks, train_chunks.shape[0] // 10)
        if n_eval < 1:
            raise ConfigError(
                f"The calibration texts give only {train_chunks.shape[0]} chunk(s) of seq_len={args.seq_len} tokens, "
                "too few to hold any out for measuring the KL to the teacher; give more text or a smaller seq_len."
            ) from None
        train_chunks, eval_chunks = train_chunks[:-n_eval], train_chunks[-n_eval:]
    data_digest = hashlib.sha256(train_chunks.numpy().tobytes() + eval_chunks.numpy().tobytes()).hexdigest()
    ctx.log(f"distill: {train_chunks.shape[0]} training chunks and {eval_chunks.shape[0]} held-out chunks of "
            f"{args.seq_len} tokens ({len(train_texts)} / {len(held_texts)} texts)")
    return _Data(train_chunks, eval_chunks, len(train_texts), len(held_texts), data_digest)
