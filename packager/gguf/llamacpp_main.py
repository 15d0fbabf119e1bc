"""`python -m packager.gguf.llamacpp_main [llama_cpp.server flags]`: llama-cpp-python's OpenAI server, plus
the `usage` chunk at the end of every stream.

llama-cpp-python 0.3.36 ignores `stream_options.include_usage`: a streamed answer carries no token counts, so
the bento's gateway metrics (packager_output_tokens, TPOT) and the load test's tokens/s and cost per token
came out as zero for GGUF variants (seen in the first end-to-end release with one). This launcher counts the
tokens exactly where llama-cpp-python produces them (`Llama.generate`: the prompt it is given, and every
generated token except the end-of-generation one, as its non-streamed `usage` does) and appends, after the
last chunk of every stream, one chunk with `choices: []` and `usage`, as OpenAI does with include_usage.
The bento's gateway removes that chunk for clients that did not ask for usage. The server answers one
request at a time (its own lock), so per-model counters are not shared between concurrent requests.

On a CPU with AMX (Sapphire Rapids and later), llama.cpp's AMX weight buffers crash this build on the first prompt
of four tokens or more with a quantized model (a segfault in ggml_backend_amx_mul_mat; seen here with Q4_0 and
Q4_K_M, llama.cpp issue 20824). `avoid_amx_crash` turns llama.cpp's extra buffer types off there (the
`use_extra_bufts` model parameter; weights stay in plain CPU buffers, without AMX or repacking), for every `Llama`
this process creates. PACKAGER_LLAMACPP_EXTRA_BUFTS=1 keeps them on, =0 turns them off on any CPU.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterator

ENV_EXTRA_BUFTS = "PACKAGER_LLAMACPP_EXTRA_BUFTS"


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    return any(line.startswith("flags") and " amx_int8" in f" {line}" for line in cpuinfo.splitlines())


def extra_bufts_wanted(environ: dict[str, str] | None = None, cpuinfo: str | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get(ENV_EXTRA_BUFTS) in ("0", "1"):
        return env[ENV_EXTRA_BUFTS] == "1"
    return not cpu_has_amx(cpuinfo)


def avoid_amx_crash() -> bool:
    """Make every llama.cpp model of this process load without extra buffer types where they crash (see the
    module docstring). Returns whether they stay on."""
    import llama_cpp.llama_cpp as lib

    if extra_bufts_wanted():
        return True
    if getattr(lib.llama_model_default_params, "_packager_no_extra_bufts", False):
        return False
    default = lib.llama_model_default_params

    def without_extra_bufts():
        params = default()
        params.use_extra_bufts = False
        return params

    without_extra_bufts._packager_no_extra_bufts = True  # type: ignore[attr-defined]
    without_extra_bufts.__wrapped__ = default  # type: ignore[attr-defined]
    setattr(lib, "llama_model_default_params", without_extra_bufts)
    return False


def usage_chunk(last: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"id": last.get("id"), "object": last.get("object"), "created": last.get("created"),
            "model": last.get("model"), "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def with_stream_usage(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap Llama.create_chat_completion / Llama.__call__: a stream gets a final usage chunk."""

    def call(self, *args: Any, **kwargs: Any) -> Any:
        out = fn(self, *args, **kwargs)
        if not kwargs.get("stream"):
            return out

        def chunks() -> Iterator[dict[str, Any]]:
            last = None
            for ch in out:
                last = ch
                yield ch
            counts = getattr(self, "_packager_counts", None)
            if last is not None and counts is not None:
                yield usage_chunk(last, counts["prompt"], counts["completion"])

        return chunks()

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def counting_generate(generate: Callable[..., Any], is_eog: Callable[[Any, int], bool]) -> Callable[..., Any]:
    """Wrap Llama.generate: record the prompt length and the generated tokens (end-of-generation excluded)."""

    def wrapped(self, tokens, *args: Any, **kwargs: Any):
        counts = {"prompt": len(tokens), "completion": 0}
        self._packager_counts = counts
        for token in generate(self, tokens, *args, **kwargs):
            if not is_eog(self, token):
                counts["completion"] += 1
            yield token

    wrapped.__wrapped__ = generate  # type: ignore[attr-defined]
    return wrapped


def install() -> None:
    import llama_cpp

    avoid_amx_crash()
    Llama = llama_cpp.Llama
    if getattr(Llama.generate, "__wrapped__", None) is not None:
        return
    # setattr: patching methods of a class is what this does (mypy refuses a plain assignment to a method)
    setattr(Llama, "generate", counting_generate(
        Llama.generate, lambda self, t: bool(llama_cpp.llama_vocab_is_eog(self._model.vocab, t))))
    setattr(Llama, "create_chat_completion", with_stream_usage(Llama.create_chat_completion))
    setattr(Llama, "__call__", with_stream_usage(Llama.__call__))


def main(argv: list[str] | None = None) -> None:
    install()
    from llama_cpp.server.__main__ import main as server_main

    sys.argv = ["python -m llama_cpp.server", *(sys.argv[1:] if argv is None else argv)]
    server_main()


if __name__ == "__main__":
    main()
