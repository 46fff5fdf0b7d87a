"""Both official SDKs through a redacting weir route: the planted PII that the mock sends
never reaches the SDK, the SDK's text is exactly what weir put on the wire (the token
frames weir rewrites parse like the upstream's), and the streams still end with their
final frames and usage. That weir's redaction equals redacting the whole text is
crates/weir-server/tests/proxy_redact.rs's to show. Run by crates/weir/tests/proxy_sdk.rs."""

import json
import urllib.request

import anthropic_sdk
import openai_sdk
from weirenv import PII_KNOBS, TIMEOUT, WEIR_KEY, WEIR_URL, check, pii_found


def wire_text(path, body, headers, text_of):
    """The token text of weir's response, read off the wire without an SDK."""
    request = urllib.request.Request(f"{WEIR_URL}{path}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        raw = response.read().decode()
    text = []
    for block in raw.split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data and data != ["[DONE]"]:
            text.append(text_of(event, json.loads("\n".join(data))))
    return "".join(text)


def openai_text(event, data):
    choices = data.get("choices") or [{}]
    return choices[0].get("delta", {}).get("content") or ""


def anthropic_text(event, data):
    delta = data.get("delta", {}) if event == "content_block_delta" else {}
    return delta.get("text", "")


def main():
    tokens = int(PII_KNOBS["tokens"])

    redacted, chunks = openai_sdk.stream(openai_sdk.through_weir("/pii"))
    original, _ = openai_sdk.stream(openai_sdk.direct(PII_KNOBS))
    planted = pii_found(original)
    check(len(planted) >= 5, f"OpenAI: the mock planted PII ({len(planted)} values found by pattern)")
    leaked = [p for p in planted if p in redacted]
    check(not leaked, "OpenAI: no planted e-mail or key reaches the SDK", repr(leaked))
    wire = wire_text("/pii/v1/chat/completions",
                     {"model": "mock", "stream": True, "messages": openai_sdk.MESSAGES},
                     {"authorization": f"Bearer {WEIR_KEY}"}, openai_text)
    check(redacted == wire, f"OpenAI: the SDK's text is weir's wire text ({len(wire)} chars)",
          f"sdk:  {redacted!r}\nwire: {wire!r}")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == ["stop"] and chunks[-1].usage.completion_tokens == tokens,
          "OpenAI: the redacted stream ends with finish_reason and usage", repr(chunks[-3:]))

    redacted, final = anthropic_sdk.stream(anthropic_sdk.through_weir("/pii"))
    original, _ = anthropic_sdk.stream(anthropic_sdk.direct(PII_KNOBS))
    planted = pii_found(original)
    check(len(planted) >= 5, f"Anthropic: the mock planted PII ({len(planted)} values found by pattern)")
    leaked = [p for p in planted if p in redacted]
    check(not leaked, "Anthropic: no planted e-mail or key reaches the SDK", repr(leaked))
    wire = wire_text("/pii/v1/messages",
                     {"model": "mock", "stream": True, "max_tokens": anthropic_sdk.MAX_TOKENS,
                      "messages": anthropic_sdk.MESSAGES},
                     {"x-api-key": WEIR_KEY, "anthropic-version": "2023-06-01"}, anthropic_text)
    check(redacted == wire, f"Anthropic: the SDK's text is weir's wire text ({len(wire)} chars)",
          f"sdk:  {redacted!r}\nwire: {wire!r}")
    check(final.stop_reason == "end_turn" and final.usage.output_tokens == tokens
          and final.content[0].text == redacted,
          "Anthropic: the redacted stream ends with message_delta and message_stop", repr(final))


if __name__ == "__main__":
    main()
