"""The official Anthropic Python SDK through weir: the streamed text equals what the mock
streams to the SDK directly, every event through message_stop comes through with the
usage, a non-streaming call works, and an upstream failure mid-stream is an exception in
the SDK, never a silently shortened answer. Run by crates/weir/tests/proxy_sdk.rs."""

import anthropic

from weirenv import (FAULT_AFTER, KNOBS, MOCK_URL, RETRIES, TIMEOUT, TOKENS, WEIR_KEY,
                     WEIR_URL, check)

MESSAGES = [{"role": "user", "content": "Say something deterministic."}]
# Above every knob's token count, so the mock ends with end_turn, not max_tokens.
MAX_TOKENS = 4096


def through_weir(prefix=""):
    return anthropic.Anthropic(base_url=f"{WEIR_URL}{prefix}", api_key=WEIR_KEY,
                               timeout=TIMEOUT, max_retries=RETRIES)


def direct(knobs):
    # The mock takes the knobs weir's upstream URL carries as query parameters.
    return anthropic.Anthropic(base_url=MOCK_URL, api_key="unused", timeout=TIMEOUT,
                               max_retries=RETRIES, default_query=knobs)


def stream(client):
    """The text and final message of the SDK's streaming helper, as applications use it."""
    with client.messages.stream(model="mock", max_tokens=MAX_TOKENS, messages=MESSAGES) as s:
        text = "".join(s.text_stream)
        return text, s.get_final_message()


def raw_events(client):
    return list(client.messages.create(model="mock", max_tokens=MAX_TOKENS,
                                       messages=MESSAGES, stream=True))


def main():
    print(f"anthropic {anthropic.__version__}")
    want, direct_final = stream(direct(KNOBS))
    check(len(want) > 0 and direct_final.usage.output_tokens == TOKENS,
          "the mock streams to the SDK directly")

    text, final = stream(through_weir())
    check(text == want, f"streamed text through weir equals direct ({len(text)} chars)",
          f"weir:   {text!r}\ndirect: {want!r}")
    check(final.stop_reason == "end_turn" and final.usage.output_tokens == TOKENS
          and final.usage.input_tokens > 0 and final.content[0].text == want,
          "the final message: stop_reason, usage and the whole text", repr(final))

    events = raw_events(through_weir())
    kinds = [e.type for e in events]
    check(kinds[0] == "message_start" and kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
          and kinds.count("content_block_delta") == TOKENS,
          f"raw events message_start .. {TOKENS} deltas .. message_stop", repr(kinds))
    check(events[-2].usage.output_tokens == TOKENS, "message_delta carries the usage", repr(events[-2]))

    text, _ = stream(through_weir("/slow"))
    check(text == want, "the same text after ': keep-alive' comments while the upstream is silent")

    message = through_weir().messages.create(model="mock", max_tokens=MAX_TOKENS, messages=MESSAGES)
    check(message.content[0].text == want and message.stop_reason == "end_turn"
          and message.usage.output_tokens == TOKENS,
          "non-streaming call through weir: the same text in one message", repr(message))

    for fault in ["reset", "error"]:
        got = []
        try:
            with through_weir(f"/{fault}").messages.stream(
                    model="mock", max_tokens=MAX_TOKENS, messages=MESSAGES) as s:
                for piece in s.text_stream:
                    got.append(piece)
                s.get_final_message()
            raised = None
        except anthropic.APIError as e:
            raised = e
        partial = "".join(got)
        check(raised is not None,
              f"upstream {fault} after {FAULT_AFTER} tokens raises in the SDK ({type(raised).__name__}: {raised})",
              f"the SDK returned normally with {len(partial)} chars: {partial!r}")
        check(len(got) == FAULT_AFTER and want.startswith(partial),
              f"upstream {fault}: the {len(got)} text deltas before it are the start of the text",
              repr(got))


if __name__ == "__main__":
    main()
