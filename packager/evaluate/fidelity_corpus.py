"""The fidelity corpus: prompts that measure how far a variant moved from the baseline, without labels.

A task suite tests a few skills with references; it can miss a model that moved where the suite does not look.
The fidelity corpus is the other half of the quality picture: the bundled `data/fidelity_prompts.jsonl` holds
over 500 prompts a deployed assistant reads (chat, instructions, open questions, math, code, tables, extraction,
summaries, rewriting, creative writing, reasoning, multi-turn conversations, system prompts, and 60 prompts in
more than 12 languages other than English), written for this purpose and independent of the task suites and of
the calibration mix. Users give their own JSONL (`eval.fidelity_corpus: FILE`), one prompt per line:

    {"id": "p1", "prompt": "How do I undo the last git commit?"}
    {"id": "p2", "messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}]}

with optional `kind` and `lang` labels. A release measures it like this:

1. The baseline answers every prompt greedily (`eval.fidelity_max_tokens` tokens), and its top-k next-token
   log-probabilities are read teacher-forced along that answer (`reference_outputs`). A prompt whose tokens plus
   the answer do not fit the engine's context is skipped and counted, not failed.
2. Each variant reads the same token sequences teacher-forced (one prefill per prompt, no generation): per
   position its KL to the baseline over the top-k, whether its most likely token is the baseline's (top-1
   agreement), and for each prompt the greedy-prefix match length, the number of leading tokens its own greedy
   answer shares with the baseline's. Under teacher forcing that is the first position where the variant's most
   likely token differs from the baseline's answer: greedy decoding follows the same path up to there.
3. The baseline's noise floor (packager.evaluate.noise_floor) is measured on the same prompts.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from packager.core.progress import progress_bar
from packager.core.prompt_format import answer_text, request_body
from packager.errors import ConfigError, ServerError
from packager.evaluate.suite import ChatMessage
from packager.fsutil import iter_jsonl, sha256_bytes

if TYPE_CHECKING:
    from packager.evaluate.client import OpenAIClient
    from packager.evaluate.fidelity import ItemResult

BUILTIN_CORPORA = {"default": "fidelity_prompts.jsonl"}
T = TypeVar("T")


class FidelityPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    kind: str = ""
    lang: str = ""

    @model_validator(mode="after")
    def _check(self) -> "FidelityPrompt":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("'prompt' is empty")
        if self.messages is not None and (not self.messages or self.messages[-1].role != "user"):
            raise ValueError("'messages' must end with a user turn")
        return self

    def chat_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]

    def tags(self) -> list[str]:
        return [t for t in (self.kind, f"lang:{self.lang}" if self.lang else "") if t]


class FidelityCorpus(BaseModel):
    name: str
    source: str
    sha256: str
    prompts: list[FidelityPrompt]


def load_fidelity_corpus(ref: str | Path) -> FidelityCorpus:
    """The bundled corpus ('default') or a JSONL file of prompts; a bad line raises ConfigError naming it."""
    ref_s = str(ref)
    if ref_s in BUILTIN_CORPORA:
        data = resources.files("packager.data").joinpath(BUILTIN_CORPORA[ref_s]).read_bytes()
        where, name = f"built-in fidelity corpus '{ref_s}'", ref_s
    else:
        p = Path(ref_s)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"Fidelity corpus {p} does not exist (eval.fidelity_corpus). Built-in: "
                              f"{', '.join(BUILTIN_CORPORA)}; null measures fidelity along the suite's "
                              "items.") from None
        except (IsADirectoryError, PermissionError) as e:
            raise ConfigError(f"Fidelity corpus {p} cannot be read: {e.strerror}.") from None
        where, name = str(p), p.stem
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not UTF-8 text (byte {e.start}).") from None
    prompts: list[FidelityPrompt] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(text, where):
        if not isinstance(obj, dict):
            raise ConfigError(f"{where}, line {lineno}: expected a JSON object, got {type(obj).__name__}.")
        try:
            fp = FidelityPrompt.model_validate(obj)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "(prompt)"
            raise ConfigError(f"{where}, line {lineno}, field '{loc}': "
                              f"{err['msg'].removeprefix('Value error, ')}.") from None
        if fp.id in seen:
            raise ConfigError(f"{where}, line {lineno}, field 'id': {fp.id!r} repeats line {seen[fp.id]}.")
        seen[fp.id] = lineno
        prompts.append(fp)
    if not prompts:
        raise ConfigError(f"{where} holds no prompts.")
    return FidelityCorpus(name=name, source=where, sha256=sha256_bytes(data), prompts=prompts)


def spread(seq: list[T], n: int) -> list[T]:
    """`n` elements of `seq` spread evenly over it, in order (all of it when n >= len): a corpus written kind by
    kind is sampled across its kinds, not from its first kind."""
    if n >= len(seq):
        return list(seq)
    return [seq[(i * len(seq)) // n] for i in range(n)]


@dataclass
class ReferenceRun:
    """The baseline's answers on the corpus: the items (with top-k logprobs) and what could not be used."""

    items: list["ItemResult"]
    skipped_too_long: int = 0
    failed: int = 0
    no_logprobs: bool = False  # the first prompt got no prompt logprobs: the endpoint gives none; not tried further


def _too_long_error(msg: str) -> bool:
    m = msg.lower()
    return "context length" in m or "maximum model length" in m or "too long" in m or "max_model_len" in m


def reference_outputs(client: "OpenAIClient", model: str, corpus: FidelityCorpus, *, max_tokens: int, top_k: int,
                      concurrency: int, max_prompts: int | None = None,
                      show_progress: bool = False, fmt: str = "chat") -> ReferenceRun:
    """The baseline's greedy answers to the corpus's prompts, each with its top-k logprobs teacher-forced along
    the answer (positions: the answer's tokens, at most `max_tokens`)."""
    from packager.evaluate.fidelity import ItemResult, _teacher_forced_topk

    prompts = spread(corpus.prompts, max_prompts) if max_prompts else corpus.prompts
    ctx_len = client.max_model_len()
    skipped = failed = 0

    def one(fp: FidelityPrompt) -> ItemResult | str:
        msgs = fp.chat_messages()
        path, prompt = request_body(fmt, msgs)
        if ctx_len is not None:
            ids = (client.tokenize(model, prompt=prompt["prompt"]) if fmt == "completion"
                   else client.tokenize(model, messages=msgs))
            if ids is not None and len(ids) + max_tokens > ctx_len:
                return "too_long"
        t0 = time.perf_counter()
        try:
            resp = client.post(path, {"model": model, **prompt, "max_tokens": max_tokens, "temperature": 0.0,
                                      "seed": 0, "return_token_ids": True})
        except ServerError as e:
            return "too_long" if _too_long_error(str(e)) else "failed"
        choice = resp["choices"][0]
        prompt_ids = resp.get("prompt_token_ids") or choice.get("prompt_token_ids")
        out_ids = choice.get("token_ids")
        if not prompt_ids or not out_ids:
            return "failed"
        topk = _teacher_forced_topk(client, model, prompt_ids, out_ids, top_k, max_positions=max_tokens)
        if not topk:
            return "failed"
        return ItemResult(id=fp.id, tags=fp.tags(), scorer="fidelity", output=answer_text(fmt, choice),
                          score=0.0, finish_reason=choice.get("finish_reason"), latency_s=time.perf_counter() - t0,
                          prompt_token_ids=prompt_ids, output_token_ids=out_ids[:len(topk)], topk_logprobs=topk)

    results: list[ItemResult] = []
    # One prompt first: an endpoint that gives no prompt logprobs is found before hundreds of answers are generated.
    first = one(prompts[0])
    if first == "failed":
        return ReferenceRun(items=[], failed=len(prompts), no_logprobs=True)
    if first == "too_long":
        skipped += 1
    else:
        assert not isinstance(first, str)
        results.append(first)
    prompts_left = prompts[1:]
    with progress_bar(f"fidelity corpus ({len(prompts)} prompts)", total=len(prompts), enabled=show_progress) as bar, \
            ThreadPoolExecutor(concurrency) as ex:
        bar.advance()
        for fut in as_completed([ex.submit(one, fp) for fp in prompts_left]):
            r = fut.result()
            if r == "too_long":
                skipped += 1
            elif r == "failed":
                failed += 1
            else:
                assert not isinstance(r, str)
                results.append(r)
            bar.advance()
    order = {fp.id: i for i, fp in enumerate(prompts)}
    results.sort(key=lambda r: order[r.id])
    return ReferenceRun(items=results, skipped_too_long=skipped, failed=failed)
