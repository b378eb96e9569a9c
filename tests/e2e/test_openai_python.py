"""The official openai Python SDK against a real node serving the real default model."""

from __future__ import annotations

import base64
import json
import math
import struct

import openai
import pytest

pytestmark = pytest.mark.e2e

Q = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def test_list_and_retrieve_models(openai_client, model_id):
    models = openai_client.models.list()
    ids = [m.id for m in models.data]
    assert model_id in ids
    m = openai_client.models.retrieve(model_id)
    assert m.id == model_id and m.object == "model" and m.owned_by == "closedmesh" and m.created > 0
    ext = m.model_extra["closedmesh"]
    assert ext["served_by"] == "local" and ext["context_length"] == 2048 and ext["state"] == "ready"
    with pytest.raises(openai.NotFoundError) as e:
        openai_client.models.retrieve("no-such-model")
    assert e.value.code == "model_not_found"


def test_chat_completion(openai_client, model_id):
    r = openai_client.chat.completions.create(model=model_id, messages=Q, max_tokens=48, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == model_id
    assert r.system_fingerprint and r.created > 0
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content.strip()
    assert c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 48
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_with_usage(openai_client, model_id):
    stream = openai_client.chat.completions.create(model=model_id, messages=Q, max_tokens=32, temperature=0,
                                                   stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason in ("stop", "length")
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert last.usage.completion_tokens > 0 and text.strip()
    # The streamed text equals the non-streamed answer under greedy sampling.
    full = openai_client.chat.completions.create(model=model_id, messages=Q, max_tokens=32, temperature=0)
    assert full.choices[0].message.content == text
    assert full.usage.completion_tokens == last.usage.completion_tokens


def test_stream_without_usage_has_no_usage_chunk(openai_client, model_id):
    chunks = list(openai_client.chat.completions.create(model=model_id, messages=Q, max_tokens=8, stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason is not None


def test_length_finish_and_max_completion_tokens_wins(openai_client, model_id):
    msgs = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]
    r = openai_client.chat.completions.create(model=model_id, messages=msgs, max_tokens=50,
                                              max_completion_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_seed_reproducible(openai_client, model_id):
    kw = dict(model=model_id, messages=[{"role": "user", "content": "Tell me a fun fact."}], max_tokens=40,
              temperature=1.2, top_p=0.95, seed=1234)
    openai_client.chat.completions.create(**kw)  # warm: the compared calls both find the prompt cached (see test_n_choices)
    a = openai_client.chat.completions.create(**kw).choices[0].message.content
    b = openai_client.chat.completions.create(**kw).choices[0].message.content
    c = openai_client.chat.completions.create(**{**kw, "seed": 99}).choices[0].message.content
    assert a == b
    assert a != c


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_never_in_output(openai_client, model_id, stream):
    msgs = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    base = openai_client.chat.completions.create(model=model_id, messages=msgs, max_tokens=60, temperature=0)
    text = base.choices[0].message.content
    # Pick a stop that spans several characters (often several tokens) in the real output.
    assert "5" in text, text
    cut = text.index("5")
    stop = text[cut: cut + 3]
    kw = dict(model=model_id, messages=msgs, max_tokens=60, temperature=0, stop=[stop, "@@never@@"])
    if stream:
        chunks = list(openai_client.chat.completions.create(stream=True, **kw))
        out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][0]
    else:
        r = openai_client.chat.completions.create(**kw)
        out, reason = r.choices[0].message.content, r.choices[0].finish_reason
    assert out == text[:cut]
    assert stop not in out and reason == "stop"


def test_json_object_mode(openai_client, model_id):
    r = openai_client.chat.completions.create(
        model=model_id, temperature=0, max_tokens=200, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give a JSON object describing a cat with a name and an age."}])
    assert r.choices[0].finish_reason == "stop"
    json.loads(r.choices[0].message.content)


def test_json_schema_mode(openai_client, model_id):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 30},
                                               "likes": {"type": "array", "items": {"type": "string", "maxLength": 12},
                                                         "maxItems": 3}},
              "required": ["name", "age", "likes"], "additionalProperties": False}
    r = openai_client.chat.completions.create(
        model=model_id, temperature=0, max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": schema}},
        messages=[{"role": "user", "content": "Describe a cat."}])
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"name", "age", "likes"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int) and 0 <= data["age"] <= 30
    assert isinstance(data["likes"], list) and all(isinstance(x, str) for x in data["likes"])


EOS_BAN = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation tokens: answers run to max_tokens


@pytest.fixture(scope="module")
def tokenizer(model_path):
    from runtime.engine.llama_model import LlamaModel

    m = LlamaModel(model_path)
    yield m
    m.close()


def test_logit_bias_forces_and_bans_tokens(openai_client, model_id, tokenizer):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    plain = openai_client.chat.completions.create(model=model_id, messages=msgs, max_tokens=12, temperature=0)
    words = plain.choices[0].message.content.split()
    assert words, plain
    first = tokenizer.tokenize(" " + words[1] if len(words) > 1 else words[0], add_special=False, parse_special=False)
    banned = first[0]
    piece = tokenizer.detokenize([banned])
    assert piece in plain.choices[0].message.content
    r = openai_client.chat.completions.create(model=model_id, messages=msgs, max_tokens=12, temperature=0,
                                              logit_bias={str(banned): -100})
    assert piece not in r.choices[0].message.content
    forced = tokenizer.tokenize(" banana", add_special=False, parse_special=False)[0]
    r = openai_client.chat.completions.create(model=model_id, messages=msgs, max_tokens=5, temperature=0.7,
                                              logit_bias={str(forced): 100})
    assert r.choices[0].message.content == tokenizer.detokenize([forced]) * 5
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=model_id, messages=msgs, logit_bias={"99999999": 5})
    assert e.value.param == "logit_bias"


def test_n_choices(openai_client, model_id):
    story = [{"role": "user", "content": "Write the first line of a fairy tale."}]
    # The same request once before, so that both compared calls find the prompt in the KV cache and run the
    # same computation: llama.cpp's logits differ slightly between a cold and a cached prompt (it is not
    # batch-invariant), and at temperature 1.5 a slight difference can change a sampled token.
    openai_client.chat.completions.create(model=model_id, messages=story, max_tokens=6, temperature=1.5, n=3,
                                          seed=7, logit_bias=EOS_BAN)
    r = openai_client.chat.completions.create(model=model_id, messages=story, max_tokens=6, temperature=1.5, n=3,
                                              seed=7, logit_bias=EOS_BAN)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" and c.message.content for c in r.choices)
    assert r.usage.completion_tokens == 3 * 6  # counted over every choice
    assert len({c.message.content for c in r.choices}) > 1  # distinct samples, reproducible through the seed
    again = openai_client.chat.completions.create(model=model_id, messages=story, max_tokens=6, temperature=1.5, n=3,
                                                  seed=7, logit_bias=EOS_BAN)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]


def test_content_parts_and_system_message(openai_client, model_id):
    a = openai_client.chat.completions.create(
        model=model_id, temperature=0, max_tokens=16,
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": [{"type": "text", "text": "Name a "}, {"type": "text", "text": "color."}]}])
    b = openai_client.chat.completions.create(
        model=model_id, temperature=0, max_tokens=16,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}])
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_completions_endpoint(openai_client, model_id):
    r = openai_client.completions.create(model=model_id, prompt="The capital of France is", max_tokens=8,
                                         temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text and r.usage.completion_tokens <= 8
    chunks = list(openai_client.completions.create(model=model_id, prompt="The capital of France is", max_tokens=8,
                                                   temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    multi = openai_client.completions.create(model=model_id, prompt=["One, two,", "Red, green,"], max_tokens=4,
                                             temperature=0)
    assert [c.index for c in multi.choices] == [0, 1]


def test_embeddings(openai_client, model_id):
    r = openai_client.embeddings.create(model=model_id, input=["a cat sat on the mat", "quantum chromodynamics"])
    assert [d.index for d in r.data] == [0, 1]
    v0, v1 = r.data[0].embedding, r.data[1].embedding
    assert len(v0) == 576 and math.isclose(sum(x * x for x in v0), 1.0, rel_tol=1e-3)
    assert v0 != v1 and r.usage.prompt_tokens > 0
    f = openai_client.embeddings.create(model=model_id, input="a cat sat on the mat", encoding_format="float")
    assert f.data[0].embedding == pytest.approx(v0, abs=1e-5)
    raw = openai_client.embeddings.with_raw_response.create(model=model_id, input="a cat sat on the mat",
                                                            encoding_format="base64")
    b64 = json.loads(raw.text)["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(v0)}f", base64.b64decode(b64))
    assert list(decoded) == pytest.approx(v0, abs=1e-5)


def test_errors_through_sdk(openai_client, model_id):
    with pytest.raises(openai.NotFoundError) as e:
        openai_client.chat.completions.create(model="gpt-4o", messages=Q)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=model_id, messages=[])
    assert e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=model_id, messages=Q, temperature="hot")
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi " * 3000}])
    assert e.value.code == "context_length_exceeded"
    # and the node still serves
    assert openai_client.chat.completions.create(model=model_id, messages=Q, max_tokens=2).choices
