"""The sampler chain (runtime/engine/sampling.py) on the real model and llama.cpp, without a server.

Issue 10: before these fixes, a penalty raised TypeError inside the engine thread, a grammar whose
every candidate was masked made llama.cpp abort the process (GGML_ABORT on an end-of-generation token
for greedy sampling, std::terminate "Unexpected empty grammar stack" for sampled), and a schema grammar
of a million nested groups overflowed the stack.
"""

from __future__ import annotations

import json

import pytest

from runtime.engine.grammar import MAX_STRING_LENGTH, grammar_for_response_format, schema_to_gbnf
from runtime.engine.llama_model import LlamaContext, LlamaModel
from runtime.engine.events import SamplingParams
from runtime.engine.sampling import BAN_BIAS, GrammarDeadEnd, GrammarError, Sampler, effective_bias

BRACE_TOKENS = [107, 6150, 26754, 34026, 38894, 39428, 39876, 40343]
PROMPT = "<|im_start|>user\nDescribe a cat as JSON.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model(model_path):
    m = LlamaModel(model_path)
    yield m
    m.close()


@pytest.fixture(scope="module")
def ctx(model):
    c = LlamaContext(model, n_seq=1, n_ctx_seq=512, n_batch=128, threads=2)
    prompt = model.tokenize(PROMPT, False, True)
    assert c.decode([(t, i, 0, False) for i, t in enumerate(prompt)]) == 0  # kept for every test
    yield c
    c.close()


def generate(model: LlamaModel, ctx: LlamaContext, params: SamplingParams, n: int) -> list[int]:
    """Greedy-or-sampled continuation of PROMPT under ``params`` (at most ``n`` tokens)."""
    prompt = model.tokenize(PROMPT, False, True)
    ctx.seq_remove(0, len(prompt) - 1, -1)  # the prompt's cache stays; its last token is decoded again
    assert ctx.decode([(prompt[-1], len(prompt) - 1, 0, True)]) == 0
    sampler = Sampler(params, model.vocab, model.n_vocab)
    out: list[int] = []
    idx, pos = 0, len(prompt)
    try:
        for _ in range(n):
            tok = sampler.sample(ctx.ctx, idx)
            if model.is_eog(tok):
                break
            out.append(tok)
            assert ctx.decode([(tok, pos, 0, True)]) == 0
            idx, pos = 0, pos + 1
    finally:
        sampler.close()
    return out


def test_brace_tokens_are_exactly_the_tokens_starting_with_a_brace(model):
    starts = [t for t in range(model.n_vocab) if model.token_bytes(t).startswith(b"{")]
    assert starts == BRACE_TOKENS


@pytest.mark.parametrize("temperature, penalty", [
    (0.0, {"presence_penalty": 1.5, "frequency_penalty": 1.5, "repeat_penalty": 1.5}),
    (1.0, {"presence_penalty": -2.0, "frequency_penalty": 0.5, "repeat_penalty": 0.5})])
def test_penalties_build_and_sample(model, ctx, temperature, penalty):
    """Each penalty's effect on answers is shown end to end in tests/e2e/test_sampling_params.py."""
    assert generate(model, ctx, SamplingParams(temperature=temperature, seed=1, **penalty), 6)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_banned_tokens_yield_to_the_grammar(model, ctx, temperature):
    """Issue 10 break 1 (a): json_object with every '{' token banned. The ban is a finite bias, so the
    only tokens the grammar allows are still candidates; the answer starts with '{'."""
    params = SamplingParams(temperature=temperature, seed=1, logit_bias={t: float("-inf") for t in BRACE_TOKENS},
                            grammar=grammar_for_response_format({"type": "json_object"}))
    out = generate(model, ctx, params, 8)
    assert out[0] in BRACE_TOKENS


def test_a_ban_is_still_a_ban_without_a_grammar(model, ctx):
    greedy = generate(model, ctx, SamplingParams(temperature=0.0), 1)
    banned = generate(model, ctx, SamplingParams(temperature=0.0, logit_bias={greedy[0]: float("-inf")}), 1)
    assert banned and banned[0] != greedy[0]
    assert effective_bias(-100) == effective_bias(float("-inf")) == BAN_BIAS and effective_bias(-99.5) == -99.5


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_grammar_that_allows_no_token_fails_the_request_not_the_process(model, ctx, temperature):
    """A grammar that demands a character no token can write (NUL) masks every candidate: llama.cpp
    would throw inside accept and abort the process; the sampler raises GrammarDeadEnd instead."""
    with pytest.raises(GrammarDeadEnd, match="allows no token"):
        generate(model, ctx, SamplingParams(temperature=temperature, grammar='root ::= "\\x00"'), 4)
    assert generate(model, ctx, SamplingParams(temperature=0.0), 2)  # the context is still usable
    assert issubclass(GrammarDeadEnd, GrammarError)


def test_const_with_control_characters_decodes_to_the_const(model, ctx):
    """Issue 10 break 1 (b)."""
    const = "\u0000\u0001\ud7ff"
    out = generate(model, ctx, SamplingParams(temperature=0.0, grammar=schema_to_gbnf({"const": const})), 40)
    assert json.loads(model.detokenize(out)) == const


def test_unparsable_or_unencodable_grammars_are_refused(model):
    for bad in ["root ::= (", "root ::= \"\ud800\""]:
        with pytest.raises(GrammarError, match="could not be parsed"):
            Sampler(SamplingParams(grammar=bad), model.vocab, model.n_vocab)


SCHEMAS = [
    {"type": "object"},
    {"type": "string", "minLength": 1, "maxLength": MAX_STRING_LENGTH},
    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 100},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string", "format": "uuid"}], "items": False},
    {"type": ["integer", "null", "boolean"]},
    {"enum": ["a\\b", "\"q\"", 1, None, [1, {"k": "\n"}]]},
    {"type": "string", "format": "date-time"},
    {"type": "integer", "minimum": -17, "maximum": 42},
    {"type": "integer", "exclusiveMinimum": 999},
    {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}, "c": {"type": "null"}},
     "additionalProperties": {"type": "boolean"}},
    {"type": "object", "properties": {}, "additionalProperties": False},
    {"type": "object", "properties": {"a": {}, "ab": {}, "q\"": {}, "\u00e9\ud800": {}}, "additionalProperties": True},
    {"$defs": {"n": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}},
                     "required": ["kids"], "additionalProperties": False}}, "$ref": "#/$defs/n"},
    {"anyOf": [{"type": "string", "format": "time"}, {"type": "object", "properties": {"x": {"const": 1}}}]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_llama_cpp_parses_every_supported_feature(model, schema):
    s = Sampler(SamplingParams(grammar=schema_to_gbnf(schema)), model.vocab, model.n_vocab)
    s.close()
