#!/usr/bin/env python3
"""The official `openai` Python client against `gemma3n serve` (started by
crates/cli/tests/openai_client.rs on the tiny fixture with the tiny tokenizer).

Usage: client_test.py BASE_URL API_KEY MODEL_ID
Exits non-zero (with the failing check) if anything differs from what the API promises.
"""

import sys

import openai
from openai import OpenAI


def main() -> int:
    base, key, model = sys.argv[1], sys.argv[2], sys.argv[3]
    client = OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)

    ids = [m.id for m in client.models.list().data]
    assert model in ids, ids

    # Non-streaming chat.
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "w40 w41 w42"}], temperature=0, max_tokens=8
    )
    text = r.choices[0].message.content
    assert r.object == "chat.completion", r
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    # Streaming chat: the same text, then usage.
    parts, usage, finish = [], None, None
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "w40 w41 w42"}],
        temperature=0,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert "".join(parts) == text, (parts, text)
    assert finish == r.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens

    # Logprobs.
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "w7"}], temperature=0, max_tokens=4,
        logprobs=True, top_logprobs=2,
    )
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens, lp
    for t in lp:
        assert len(t.top_logprobs) == 2 and t.logprob <= 0.0
        assert abs(t.logprob - t.top_logprobs[0].logprob) < 1e-5  # greedy: the top one

    # Text completions, streamed and not.
    c = client.completions.create(model=model, prompt="w7 w8 w9", temperature=0, max_tokens=5)
    streamed = "".join(
        ch.choices[0].text for ch in client.completions.create(
            model=model, prompt="w7 w8 w9", temperature=0, max_tokens=5, stream=True
        ) if ch.choices
    )
    assert c.choices[0].text == streamed, (c.choices[0].text, streamed)

    # Errors arrive as the client's typed exceptions.
    def expect(exc, **kw):
        try:
            client.chat.completions.create(**kw)
        except exc as e:
            assert e.body is not None, e
            return
        raise AssertionError(f"expected {exc.__name__} for {kw}")

    msgs = [{"role": "user", "content": "w1"}]
    expect(openai.NotFoundError, model="no-such-model", messages=msgs)
    expect(openai.BadRequestError, model=model, messages=msgs, n=2)
    expect(openai.BadRequestError, model=model, messages=msgs, temperature=9)
    expect(openai.UnprocessableEntityError, model=model,
           messages=[{"role": "user", "content": [{"type": "file", "file": {"file_id": "x"}}]}])
    bad = OpenAI(base_url=base, api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError:
        pass
    print(f"openai {openai.__version__}: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
