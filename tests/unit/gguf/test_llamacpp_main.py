"""packager.gguf.llamacpp_main: streams get a final usage chunk counted where llama-cpp-python generates."""
from __future__ import annotations

from packager.gguf.llamacpp_main import counting_generate, with_stream_usage

EOG = 2


class FakeLlama:
    """The shape of llama_cpp.Llama that matters: generate() yields tokens; completions iterate it."""

    def generate(self, tokens, **_kw):
        yield from [11, 12, 13, EOG, 99]  # stops after the end-of-generation token in real use

    def create_chat_completion(self, messages, stream=False, max_tokens=16):
        out = []
        for t in self.generate([1] * (3 + len(messages))):
            if t == EOG:
                break
            out.append(t)
        if not stream:
            return {"usage": {"prompt_tokens": 3 + len(messages), "completion_tokens": len(out)}}
        return iter([{"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
                      "choices": [{"delta": {"content": str(t)}}]} for t in out])


FakeLlama.generate = counting_generate(FakeLlama.generate, lambda self, t: t == EOG)
FakeLlama.create_chat_completion = with_stream_usage(FakeLlama.create_chat_completion)


def test_a_stream_ends_with_the_usage_its_non_streamed_twin_reports():
    llm = FakeLlama()
    chunks = list(llm.create_chat_completion([{"role": "user", "content": "x"}], stream=True))
    assert [c["choices"][0]["delta"]["content"] for c in chunks[:-1]] == ["11", "12", "13"]
    last = chunks[-1]
    assert last["choices"] == [] and last["id"] == "c1" and last["object"] == "chat.completion.chunk"
    plain = llm.create_chat_completion([{"role": "user", "content": "x"}])
    assert last["usage"] == {**plain["usage"], "total_tokens": 4 + 3} == {"prompt_tokens": 4, "completion_tokens": 3,
                                                                         "total_tokens": 7}


def test_non_streamed_answers_are_left_alone():
    out = FakeLlama().create_chat_completion([{"role": "user", "content": "x"}], stream=False)
    assert set(out) == {"usage"}
