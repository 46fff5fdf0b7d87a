"""The official OpenAI and Anthropic Python SDKs through weir over https:// (weir's
tls_cert/tls_key, a test CA given to the SDKs' HTTP client): the streamed text equals
what the mock streams to the SDK directly, and without the CA the SDKs refuse weir's
certificate. Run by crates/weir-server/tests/proxy_h2_tls.rs, which sets WEIR_CA."""

import os
import ssl

import anthropic
import openai

from weirenv import KNOBS, MOCK_URL, RETRIES, TIMEOUT, WEIR_KEY, WEIR_URL, check

CA = os.environ["WEIR_CA"]
MESSAGES = [{"role": "user", "content": "Say something deterministic."}]
MAX_TOKENS = 4096


def trusting_ca():
    return ssl.create_default_context(cafile=CA)


def openai_text(client):
    chunks = client.chat.completions.create(model="mock", messages=MESSAGES, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def anthropic_text(client):
    with client.messages.stream(model="mock", max_tokens=MAX_TOKENS, messages=MESSAGES) as s:
        return "".join(s.text_stream)


def main():
    print(f"openai {openai.__version__}, anthropic {anthropic.__version__}")
    check(WEIR_URL.startswith("https://"), f"weir serves {WEIR_URL}")

    def openai_client(base, key, http_client=None, query=None):
        return openai.OpenAI(base_url=f"{base}/v1", api_key=key, timeout=TIMEOUT,
                             max_retries=RETRIES, default_query=query, http_client=http_client)

    want = openai_text(openai_client(MOCK_URL, "unused", query=KNOBS))
    check(len(want) > 0, "the mock streams to the OpenAI SDK directly")
    text = openai_text(openai_client(WEIR_URL, WEIR_KEY,
                                     openai.DefaultHttpxClient(verify=trusting_ca())))
    check(text == want, f"OpenAI SDK over https: the streamed text equals direct ({len(text)} chars)",
          f"weir:   {text!r}\ndirect: {want!r}")
    try:
        openai_text(openai_client(WEIR_URL, WEIR_KEY))
        refused = None
    except openai.APIConnectionError as e:
        refused = e
    check(refused is not None, "OpenAI SDK without the test CA refuses weir's certificate",
          "the SDK trusted a certificate no system root signed")

    def anthropic_client(base, key, http_client=None, query=None):
        return anthropic.Anthropic(base_url=base, api_key=key, timeout=TIMEOUT,
                                   max_retries=RETRIES, default_query=query,
                                   http_client=http_client)

    want = anthropic_text(anthropic_client(MOCK_URL, "unused", query=KNOBS))
    check(len(want) > 0, "the mock streams to the Anthropic SDK directly")
    text = anthropic_text(anthropic_client(WEIR_URL, WEIR_KEY,
                                           anthropic.DefaultHttpxClient(verify=trusting_ca())))
    check(text == want,
          f"Anthropic SDK over https: the streamed text equals direct ({len(text)} chars)",
          f"weir:   {text!r}\ndirect: {want!r}")


if __name__ == "__main__":
    main()
