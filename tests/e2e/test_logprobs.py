"""Log probabilities (issue 13), end to end: the official openai SDK against a real node serving the
real default model, on chat completions (logprobs + top_logprobs) and completions (legacy logprobs),
streaming and not.

The node reports the log-softmax of the model's raw logits at each step (before penalties, logit_bias,
grammar and temperature), so under greedy sampling the sampled token is always the most likely one.
"""

from __future__ import annotations

import math

import openai
import pytest

pytestmark = pytest.mark.e2e

Q = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def check_entry(e, top_n: int) -> None:
    assert e.logprob <= 0.0 and math.isfinite(e.logprob)
    assert bytes(e.bytes).decode("utf-8", errors="replace") == e.token
    assert len(e.top_logprobs) == top_n
    values = [t.logprob for t in e.top_logprobs]
    assert values == sorted(values, reverse=True)
    assert all(v <= 0.0 for v in values)
    if top_n:
        assert e.logprob <= values[0] + 1e-6  # nothing is more likely than the most likely token


def test_chat_greedy_logprobs(openai_client, model_id):
    r = openai_client.chat.completions.create(
        model=model_id, messages=Q, max_tokens=24, temperature=0, logprobs=True, top_logprobs=5
    )
    c = r.choices[0]
    content = c.logprobs.content
    assert len(content) == r.usage.completion_tokens  # one entry per generated token
    assert "".join(e.token for e in content) == c.message.content
    for e in content:
        check_entry(e, 5)
        # Greedy: the sampled token is the most likely one.
        assert e.token == e.top_logprobs[0].token and e.logprob == pytest.approx(e.top_logprobs[0].logprob)
    # Without the flag, nothing is computed or sent.
    plain = openai_client.chat.completions.create(model=model_id, messages=Q, max_tokens=24, temperature=0)
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == c.message.content


def test_chat_logprobs_without_alternatives_and_sampled(openai_client, model_id):
    r = openai_client.chat.completions.create(
        model=model_id, messages=Q, max_tokens=16, temperature=1.3, seed=3, logprobs=True
    )
    content = r.choices[0].logprobs.content
    assert content and "".join(e.token for e in content) == r.choices[0].message.content
    for e in content:
        check_entry(e, 0)
    story = [{"role": "user", "content": "Tell me a story about a dragon."}]
    r = openai_client.chat.completions.create(
        model=model_id, messages=story, max_tokens=32, temperature=2, seed=3, logprobs=True, top_logprobs=20
    )
    for e in r.choices[0].logprobs.content:
        check_entry(e, 20)
    # At temperature 2, sampling picks tokens other than the most likely one; their logprob is then below
    # the top one. (Seeded, so this run is reproducible.)
    assert any(e.logprob < e.top_logprobs[0].logprob for e in r.choices[0].logprobs.content)


def test_chat_stream_logprobs_match_the_answer(openai_client, model_id):
    kw = dict(model=model_id, messages=Q, max_tokens=24, temperature=0, logprobs=True, top_logprobs=3)
    whole = openai_client.chat.completions.create(**kw)
    text, entries = [], []
    for chunk in openai_client.chat.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            if ch.delta.content:
                text.append(ch.delta.content)
            if ch.logprobs is not None:
                entries += ch.logprobs.content
    assert "".join(text) == whole.choices[0].message.content
    assert [(e.token, round(e.logprob, 4)) for e in entries] == [
        (e.token, round(e.logprob, 4)) for e in whole.choices[0].logprobs.content
    ]
    for e in entries:
        check_entry(e, 3)


def test_chat_stream_helper_accumulates_logprobs(openai_client, model_id):
    """openai-python's stream helper, the strictest accumulator, assembles the logprobs chunks."""
    with openai_client.chat.completions.stream(
        model=model_id, messages=Q, max_tokens=16, temperature=0, logprobs=True, top_logprobs=2
    ) as stream:
        final = stream.get_final_completion()
    c = final.choices[0]
    assert "".join(e.token for e in c.logprobs.content) == c.message.content
    for e in c.logprobs.content:
        check_entry(e, 2)


def test_completions_legacy_logprobs(openai_client, model_id):
    prompt = "The capital of France is"
    r = openai_client.completions.create(model=model_id, prompt=prompt, max_tokens=12, temperature=0, logprobs=3)
    c = r.choices[0]
    lp = c.logprobs
    assert "".join(lp.tokens) == c.text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for tok, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value <= 0.0
        assert tok in top and top[tok] == pytest.approx(value)
        assert 3 <= len(top) <= 4  # the 3 most likely, and the sampled token if it is not among them
        assert max(top.values()) == pytest.approx(value)  # greedy: the sampled token is the most likely
    stream_tokens, stream_offsets = [], []
    for chunk in openai_client.completions.create(
        model=model_id, prompt=prompt, max_tokens=12, temperature=0, logprobs=3, stream=True
    ):
        ch = chunk.choices[0]
        if ch.logprobs is not None:
            stream_tokens += ch.logprobs.tokens
            stream_offsets += ch.logprobs.text_offset
    assert stream_tokens == lp.tokens and stream_offsets == lp.text_offset
    plain = openai_client.completions.create(model=model_id, prompt=prompt, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(
    "kw, param",
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_chat_bad_logprobs_are_400(openai_client, model_id, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=model_id, messages=Q, max_tokens=4, **kw)
    assert e.value.body["param"] == param


def test_completions_bad_logprobs_are_400(openai_client, model_id):
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.completions.create(model=model_id, prompt="x", max_tokens=4, logprobs=6)
    assert e.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.completions.create(model=model_id, prompt="x", max_tokens=4, logprobs=1, echo=True)
    assert e.value.body["param"] == "echo"


@pytest.mark.parametrize("stop", [" Paris", "Par", "France is"])
def test_stop_string_tokens_have_no_entries(openai_client, model_id, stop):
    """Tokens wholly inside the stop string (never shown) have no entry; a token partly shown keeps its
    entry. The greedy answer is "The capital of France is Paris." (checked first)."""
    full = openai_client.chat.completions.create(model=model_id, messages=Q, max_tokens=24, temperature=0)
    assert full.choices[0].message.content.startswith("The capital of France is Paris")
    r = openai_client.chat.completions.create(
        model=model_id, messages=Q, max_tokens=24, temperature=0, stop=[stop], logprobs=True
    )
    c = r.choices[0]
    assert c.finish_reason == "stop" and stop not in c.message.content
    tokens = [e.token for e in c.logprobs.content]
    joined = "".join(tokens)
    assert joined.startswith(c.message.content)
    assert len("".join(tokens[:-1])) < len(c.message.content)  # the last entry's token was at least partly shown
    if stop == " Paris":  # a stop string on token boundaries: the entries spell exactly the content
        assert joined == c.message.content
