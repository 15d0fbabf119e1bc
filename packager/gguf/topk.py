"""Teacher-forced top-k log-probabilities of a GGUF model, computed in this process by llama.cpp.

Why in-process: llama.cpp's server (`llama-server`, the llamacpp backend) gives log-probabilities of the tokens it
generates, never of the prompt (its OpenAI routes refuse `echo`, and it has no `prompt_logprobs`). The fidelity
figures (mean and p95 KL to the baseline, top-1 agreement, greedy-prefix match; packager.evaluate.fidelity) need
the distribution at every position of the baseline's own answer, given the baseline's tokens before it. So the
same GGUF file is read by llama.cpp's library through llama-cpp-python: its pinned sdist vendors the very
llama.cpp source `llama-server` is built from (the same quantized weights, the same kernels), and on CPUs with
AMX it loads without extra buffer types, as the server runs with `--no-repack` (packager.gguf.amx).

How: one forward pass per answer over prompt + answer tokens with every position's logits kept
(`logits_all`), then a log-softmax over the whole vocabulary at each answer position, of which the top k are
kept (plus the answer's own token, as vLLM's `prompt_logprobs` does), keyed by token id as text. The token ids are
the baseline's: a GGUF export keeps the source tokenizer's ids, so the sequence is the one the baseline read.

Cost: the model's weights are loaded a second time beside the running server (for the duration of the fidelity
pass), plus n_ctx x vocabulary float32 logits (2048 x 49,152 for the bundled model: 0.4 GB). The pass is bound by
prompt processing: the bundled model's Q4_K_M read the 557-prompt corpus's 79,455 tokens (prompts and 32-token
answers) in 219 s on 2 cores, where vLLM reads a safetensors variant's in about 47 s (its prompt logprobs).
Keeping the prompt positions' logits out of the pass (llama-cpp-python reads that per call) took as long.
What does help: every chat prompt starts with the same tokens (the template's system turn), so the context keeps
what it holds of a sequence's start and decodes only the rest. On that corpus 16% of the tokens were kept, the pass
took 0.865 of the time (159 s against 184 s) and gave the same rows, value for value, for all 557 answers
(benchmarks/bench_gguf_topk_prefix.py, benchmarks/results/gguf_topk_prefix.json).
Sequences longer than n_ctx are skipped (no figures for them), not truncated.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from packager.errors import ConfigError


class GgufTopk:
    """Callable `(prompt_ids, output_ids, k, max_positions) -> [{token id: logprob}] | None` over one GGUF file.

    The model loads on the first call (lazily, so an evaluation that measures no fidelity pays nothing); calls
    are serialized (one llama.cpp context). `close()` frees it."""

    def __init__(self, gguf_file: str | Path, *, n_ctx: int, threads: int):
        self.path = Path(gguf_file)
        if not self.path.is_file():
            raise ConfigError(f"{self.path} does not exist: no GGUF to read logprobs from.")
        self.n_ctx = n_ctx
        self.threads = threads
        self._llm: Any = None
        self._lock = threading.Lock()
        self.reused_tokens = 0  # prompt tokens kept from the previous sequence (see _eval)
        self.decoded_tokens = 0

    def _load(self) -> Any:
        if self._llm is None:
            from llama_cpp import Llama

            from packager.gguf.amx import avoid_amx_crash

            avoid_amx_crash()
            self._llm = Llama(model_path=str(self.path), logits_all=True, n_ctx=self.n_ctx,
                              n_batch=min(self.n_ctx, 512), n_threads=self.threads, n_threads_batch=self.threads,
                              verbose=False)
        return self._llm

    def __call__(self, prompt_ids: list[int], output_ids: list[int], k: int,
                 max_positions: int) -> list[dict[str, float]] | None:
        out_ids = output_ids[:max_positions]
        if not prompt_ids or not out_ids:
            return None
        ids = list(prompt_ids) + list(out_ids)
        if len(ids) > self.n_ctx:
            return None
        with self._lock:
            llm = self._load()
            if max(ids) >= llm.n_vocab():
                return None  # not this model's tokenizer
            self._eval(llm, ids, len(prompt_ids))
            # row i of the scores: the logits after token i, i.e. the distribution of token i + 1
            logits = llm.scores[len(prompt_ids) - 1: len(ids) - 1].copy()
        return topk_rows(logits, out_ids, k)

    def _eval(self, llm: Any, ids: list[int], n_prompt: int) -> None:
        """Evaluate `ids`, keeping what the context already holds of their leading tokens (the chat template's
        system turn that every prompt starts with, say): the kept positions' KV cache and logits rows are those a
        fresh pass computes, and only the rest is decoded. At least one prompt token is decoded again."""
        held = list(llm.input_ids[:llm.n_tokens]) if llm.n_tokens else []
        keep = 0
        for a, b in zip(held, ids[:n_prompt - 1]):
            if a != b:
                break
            keep += 1
        if keep and llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            llm.n_tokens = keep
            self.reused_tokens += keep
            llm.eval(ids[keep:])
        else:
            keep = 0
            llm.reset()
            llm.eval(ids)
        self.decoded_tokens += len(ids) - keep

    def close(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None


def topk_rows(logits: Any, targets: list[int], k: int) -> list[dict[str, float]]:
    """Per row of raw `logits` (positions x vocabulary): the log-softmax's k largest entries plus the entry of
    that row's target token, keyed by token id as text."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    lp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    k = max(1, min(k, lp.shape[1]))
    top = np.argpartition(-lp, k - 1, axis=-1)[:, :k]
    rows = []
    for i, target in enumerate(targets):
        row = {str(int(t)): float(lp[i, t]) for t in top[i]}
        row[str(int(target))] = float(lp[i, target])
        rows.append(row)
    return rows
