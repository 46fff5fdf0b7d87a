"""The official OpenAI Python SDK through weir: the streamed text equals what the mock
streams to the SDK directly, the final chunk, finish_reason and usage come through, a
non-streaming call works, and an upstream failure mid-stream is an exception in the SDK,
never a silently shortened answer. Run by crates/weir/tests/proxy_sdk.rs."""

import openai

from weirenv import (FAULT_AFTER, KNOBS, MOCK_URL, RETRIES, TIMEOUT, TOKENS, WEIR_KEY,
                     WEIR_URL, check)

MESSAGES = [{"role": "user", "content": "Say something deterministic."}]


def through_weir(prefix=""):
    return openai.OpenAI(base_url=f"{WEIR_URL}{prefix}/v1", api_key=WEIR_KEY,
                         timeout=TIMEOUT, max_retries=RETRIES)


def direct(knobs):
    # The mock takes the knobs weir's upstream URL carries as query parameters.
    return openai.OpenAI(base_url=f"{MOCK_URL}/v1", api_key="unused", timeout=TIMEOUT,
                         max_retries=RETRIES, default_query=knobs)


def stream(client):
    """The streamed text and every chunk, read the way applications read them."""
    chunks = list(client.chat.completions.create(
        model="mock", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def main():
    print(f"openai {openai.__version__}")
    want, direct_chunks = stream(direct(KNOBS))
    check(len(want) > 0 and len(direct_chunks) >= TOKENS, "the mock streams to the SDK directly",
          f"{len(direct_chunks)} chunks")

    text, chunks = stream(through_weir())
    check(text == want, f"streamed text through weir equals direct ({len(text)} chars)",
          f"weir:   {text!r}\ndirect: {want!r}")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == ["stop"], "one final chunk with finish_reason stop", repr(finishes))
    usage = chunks[-1].usage
    check(usage is not None and usage.completion_tokens == TOKENS
          and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens,
          f"last chunk carries usage ({usage})", repr(chunks[-1]))
    check(len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks),
          "every chunk has one id and object chat.completion.chunk")

    text, _ = stream(through_weir("/slow"))
    check(text == want, "the same text after ': keep-alive' comments while the upstream is silent")

    completion = through_weir().chat.completions.create(model="mock", messages=MESSAGES)
    check(completion.choices[0].message.content == want,
          "non-streaming call through weir: the same text in one chat.completion",
          repr(completion))
    check(completion.choices[0].finish_reason == "stop" and completion.usage.completion_tokens == TOKENS,
          "non-streaming call: finish_reason and usage", repr(completion))

    for fault in ["reset", "error"]:
        got = []
        try:
            for chunk in through_weir(f"/{fault}").chat.completions.create(
                    model="mock", messages=MESSAGES, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    got.append(chunk.choices[0].delta.content)
            raised = None
        except openai.APIError as e:
            raised = e
        partial = "".join(got)
        check(raised is not None,
              f"upstream {fault} after {FAULT_AFTER} tokens raises in the SDK ({type(raised).__name__}: {raised})",
              f"the SDK returned normally with {len(partial)} chars: {partial!r}")
        check(len(got) == FAULT_AFTER and want.startswith(partial),
              f"upstream {fault}: the {len(got)} tokens before it are the start of the text", repr(got))


if __name__ == "__main__":
    main()
