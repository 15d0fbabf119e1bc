"""Teacher-forced fidelity: how far a model's next-token distributions are from a baseline's, along the baseline's
own greedy answers (top-k prompt logprobs of an OpenAI-compatible endpoint), and the per-item results they are
read from. Used by the runner (suite answers), the fidelity corpus and the noise floor."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from packager.errors import ServerError
from packager.evaluate.client import OpenAIClient
from packager.evaluate.sequential import KLStop, look, reading_order

FIDELITY_MAX_POSITIONS = 24

# (prompt ids, output ids, k, max positions) -> top-k log-probabilities at each output position (keyed by token id
# as text), None when there are none: the endpoint's prompt logprobs by default; a GGUF read in this process by
# llama.cpp where the server gives none (packager.gguf.topk)
TopkFn = Callable[[list[int], list[int], int, int], "list[dict[str, float]] | None"]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


class ItemResult(BaseModel):
    id: str
    tags: list[str]
    scorer: str
    output: str
    score: float
    finish_reason: str | None = None
    latency_s: float
    error: str | None = None
    prompt_token_ids: list[int] | None = None
    output_token_ids: list[int] | None = None
    # teacher-forced top-k log-probabilities along this model's own greedy output (baseline runs only)
    topk_logprobs: list[dict[str, float]] | None = None


def _teacher_forced_topk(client: OpenAIClient, model: str, prompt_ids: list[int], output_ids: list[int],
                         k: int, max_positions: int = FIDELITY_MAX_POSITIONS) -> list[dict[str, float]] | None:
    """Top-k next-token log-probabilities at each position of `output_ids` (the first `max_positions`) given the
    prompt, keyed by token id (as text)."""
    out_ids = output_ids[:max_positions]
    if not out_ids:
        return None
    try:
        resp = client.post("/v1/completions", {
            "model": model, "prompt": prompt_ids + out_ids, "max_tokens": 1, "temperature": 0.0,
            "prompt_logprobs": k,
        })
    except ServerError:
        return None
    plp = resp["choices"][0].get("prompt_logprobs") or resp.get("prompt_logprobs")
    if not plp:
        return None
    tail = plp[len(prompt_ids):len(prompt_ids) + len(out_ids)]
    return [{tok: v["logprob"] for tok, v in (pos or {}).items()} for pos in tail]


def endpoint_topk(client: OpenAIClient, model: str) -> TopkFn:
    """The endpoint's teacher-forced top-k (its prompt logprobs) as a TopkFn."""
    def topk(prompt_ids: list[int], output_ids: list[int], k: int, max_positions: int) -> list[dict[str, float]] | None:
        return _teacher_forced_topk(client, model, prompt_ids, output_ids, k, max_positions=max_positions)
    return topk


def kl_topk(p_logprobs: dict[str, float], q_logprobs: dict[str, float]) -> float:
    """KL(p || q) over p's top-k support plus one 'rest' bucket.

    Tokens of p's top-k that q did not return get q's smallest returned probability (q's top-k cut-off, an
    upper bound of their probability), so the estimate never divides by zero and is the same for every variant.
    """
    if not p_logprobs:
        return 0.0
    q_floor = min(q_logprobs.values()) if q_logprobs else -30.0
    eps = 1e-9
    kl = 0.0
    p_mass = q_mass = 0.0
    for tok, lp in p_logprobs.items():
        p = math.exp(lp)
        lq = q_logprobs.get(tok, q_floor)
        q = math.exp(lq)
        p_mass += p
        q_mass += q
        kl += p * (lp - lq)
    p_rest, q_rest = max(1.0 - p_mass, eps), max(1.0 - q_mass, eps)
    kl += p_rest * (math.log(p_rest) - math.log(q_rest))
    return max(kl, 0.0)


class Fidelity(BaseModel):
    """How far a model's next-token distributions are from the baseline's, along the baseline's own greedy outputs
    (teacher-forced), plus how often its greedy output equals the baseline's (None where not measured)."""

    agreement: float | None = None  # whole greedy outputs equal
    mean_kl: float | None = None
    p95_kl: float | None = None
    top1_agreement: float | None = None  # per position: the same most likely next token
    positions: int = 0
    # greedy-prefix match: per answer, the leading tokens the model's greedy answer shares with the baseline's
    prefix_match_mean: float | None = None  # tokens, mean over answers
    prefix_match_share: float | None = None  # the same, as a share of each answer's measured length
    full_match: float | None = None  # answers whose every measured token matches (greedy outputs equal)
    answers: int = 0
    # with a KLStop: the answers there were to read, and why reading stopped before the last (None: it did not)
    answers_planned: int = 0
    stopped_early: str | None = None
    settled: str | None = None  # with a KLStop: "above" / "below" its limit where the reading stopped there


def teacher_forced_fidelity(baseline_items: dict[str, ItemResult], client: OpenAIClient, model: str, top_k: int,
                            concurrency: int, ids: list[str] | None = None, topk_fn: TopkFn | None = None,
                            progress: str | None = None, stop: KLStop | None = None) -> Fidelity:
    """KL(baseline || model) and top-1 agreement at each position of the baseline's outputs (of `ids`, default
    every item that has the baseline's top-k). Positions the endpoint gives no prompt logprobs for are left out.
    `topk_fn` reads the model's top-k another way (default: the endpoint's prompt logprobs). `progress`: the title
    of a progress bar over the answers read (None: no bar). `stop`: read the answers in a seeded random order and
    stop once the mean KL has settled above or below `stop.limit` (packager.evaluate.sequential); every figure is
    then of the answers read."""
    from packager.core.progress import progress_bar

    read = topk_fn or endpoint_topk(client, model)
    pairs: list[tuple[dict[str, float], dict[str, float]]] = []
    prefixes: list[tuple[int, int]] = []  # (matched leading tokens, measured tokens) per answer
    kls: list[float] = []  # per position read
    per_answer: list[tuple[float, int]] = []  # (sum of its positions' KLs, positions) per answer read

    def one(b: ItemResult) -> tuple[list[tuple[dict[str, float], dict[str, float]]], tuple[int, int] | None]:
        if not (b.topk_logprobs and b.prompt_token_ids and b.output_token_ids):
            return [], None
        mine = read(b.prompt_token_ids, b.output_token_ids, top_k, len(b.topk_logprobs))
        if not mine:
            return [], None
        got = list(zip(b.topk_logprobs, mine))
        return got, (greedy_prefix_match(b.output_token_ids[:len(got)], [q for _, q in got]), len(got))

    chosen = [baseline_items[i] for i in (ids if ids is not None else list(baseline_items)) if i in baseline_items]
    if stop is not None:
        chosen = reading_order(chosen)
    step = stop.chunk if stop is not None else max(1, len(chosen))
    stopped: str | None = None
    settled: str | None = None
    with progress_bar(progress or "fidelity", total=len(chosen), enabled=progress is not None) as bar, \
            ThreadPoolExecutor(concurrency) as ex:
        for start in range(0, len(chosen), step):
            for fut in as_completed([ex.submit(one, b) for b in chosen[start:start + step]]):
                got, prefix = fut.result()
                pairs.extend(got)
                answer_kls = [kl_topk(p, q) for p, q in got]
                kls.extend(answer_kls)
                if prefix is not None:
                    prefixes.append(prefix)
                    per_answer.append((sum(answer_kls), len(got)))
                bar.advance()
            if stop is not None and start + step < len(chosen):
                lk = look(per_answer, len(chosen), stop)
                if lk.settled:
                    settled = lk.settled
                    stopped = (f"read {start + step} of {len(chosen)} answers: the mean KL {lk.mean_kl:.4g} "
                               f"(+/- {lk.half_width:.2g}, {stop.z:g} standard errors) lies {lk.settled} the limit "
                               f"{stop.limit:.4g}")
                    break
    if not pairs:
        return Fidelity()
    kls.sort()
    top1 = [float(bool(p) and bool(q) and max(p, key=p.__getitem__) == max(q, key=q.__getitem__)) for p, q in pairs]
    return Fidelity(mean_kl=_mean(kls), p95_kl=kls[min(len(kls) - 1, math.ceil(0.95 * len(kls)) - 1)],
                    top1_agreement=_mean(top1), positions=len(pairs),
                    prefix_match_mean=_mean([float(m) for m, _ in prefixes]),
                    prefix_match_share=_mean([m / n for m, n in prefixes]),
                    full_match=_mean([float(m == n) for m, n in prefixes]), answers=len(prefixes),
                    answers_planned=len(chosen), stopped_early=stopped, settled=settled)


def greedy_prefix_match(reference_ids: list[int], model_topk: list[dict[str, float]]) -> int:
    """How many leading tokens of the reference answer the model's own greedy answer shares: teacher-forced along
    the reference, greedy decoding follows the same path until the first position whose most likely token (the
    top-k key with the highest log-probability; keys are token ids as text) differs from the reference's."""
    n = 0
    for ref, q in zip(reference_ids, model_topk):
        if not q or max(q, key=q.__getitem__) != str(ref):
            break
        n += 1
    return n


def load_items(path: Path) -> dict[str, ItemResult]:
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = ItemResult.model_validate_json(line)
            out[r.id] = r
    return out
