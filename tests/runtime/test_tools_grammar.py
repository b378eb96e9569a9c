"""Tool-call grammars (runtime/tools/grammar.py) in llama.cpp's own grammar engine, with the real
model's vocabulary: every format and choice builds a grammar llama.cpp parses; canned calls that match
the tools' schemas are accepted to the end, calls that break them are refused at the breaking token.
And the lazy grammar of auto mode (runtime/engine/sampling.py) on the real model: free text before the
trigger, held to the grammar after it, and a trigger whose text the grammar refuses passed over instead
of aborting the process."""

from __future__ import annotations

import ctypes
import json
import math

import llama_cpp
import pytest

from runtime.engine.events import SamplingParams
from runtime.engine.llama_model import LlamaContext, LlamaModel
from runtime.engine.sampling import GrammarDeadEnd, Sampler
from runtime.tools.formats import FORMATS, GENERIC, HERMES, LLAMA3, MISTRAL, PHI4, QWEN_XML
from runtime.tools.grammar import tool_grammar
from runtime.tools.spec import parse_tools
from tests.runtime.test_sampling import PROMPT, generate

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def model(model_path):
    m = LlamaModel(model_path)
    yield m
    m.close()


def accepts(model: LlamaModel, gbnf: str, text: str) -> bool:
    """Whether llama.cpp's grammar engine takes ``text`` (tokenized by the model) to a complete match:
    each token is offered to the grammar before it is accepted, then the end of generation."""
    g = llama_cpp.llama_sampler_init_grammar(model.vocab, gbnf.encode(), b"root")
    assert g, "llama.cpp could not parse the grammar"
    one = (llama_cpp.llama_token_data * 1)()
    arr = llama_cpp.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)

    def allowed(tok: int) -> bool:
        one[0].id, one[0].logit, one[0].p = tok, 0.0, 0.0
        arr.size, arr.selected = 1, -1
        llama_cpp.llama_sampler_apply(g, ctypes.byref(arr))
        return one[0].logit > -math.inf

    try:
        for tok in model.tokenize(text, add_special=False, parse_special=True):
            if not allowed(tok):
                return False
            llama_cpp.llama_sampler_accept(g, tok)
        return allowed(llama_cpp.llama_vocab_eos(model.vocab))
    finally:
        llama_cpp.llama_sampler_free(g)


def spec(choice=None, parallel=None):
    body: dict = {"tools": TOOLS}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    return parse_tools(body)


@pytest.mark.parametrize("fmt", list(FORMATS.values()))
@pytest.mark.parametrize("choice", ["auto", "required", NAMED])
@pytest.mark.parametrize("parallel", [True, False])
def test_every_grammar_parses_in_llama_cpp(model, fmt, choice, parallel):
    g = tool_grammar(spec(choice, parallel), fmt)
    assert g is not None
    p = llama_cpp.llama_sampler_init_grammar(model.vocab, g.gbnf.encode(), b"root")
    assert p, g.gbnf
    llama_cpp.llama_sampler_free(p)
    lazy = choice == "auto" and fmt.native
    assert bool(g.triggers) == lazy


def test_no_grammar_when_tools_are_off():
    assert tool_grammar(spec("none"), HERMES) is None


W = '{"city": "Paris", "days": 3}'
GOOD = [
    (GENERIC, "auto", f'{{"tool_call": {{"name": "get_weather", "arguments": {W}}}}}'),
    (GENERIC, "auto", '{"response": "It is sunny."}'),
    (
        GENERIC,
        "auto",
        f'{{"tool_calls": [{{"name": "get_weather", "arguments": {W}}}, {{"name": "get_time", "arguments": {{}}}}]}}',
    ),
    (GENERIC, "required", '{"tool_call": {"name": "get_time", "arguments": {}}}'),
    (GENERIC, NAMED, '{"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}'),
    (HERMES, "required", f'<tool_call>\n{{"name": "get_weather", "arguments": {W}}}\n</tool_call>'),
    (PHI4, "required", f'<|tool_call|>{{"name": "get_weather", "arguments": {W}}}<|/tool_call|>'),
    (LLAMA3, "required", f'{{"name": "get_weather", "parameters": {W}}}'),
    (MISTRAL, "required", f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {W}}}]'),
    (
        QWEN_XML,
        "required",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
    ),
]


@pytest.mark.parametrize("fmt, choice, text", GOOD)
def test_valid_calls_are_accepted_and_parse(model, fmt, choice, text):
    s = spec(choice)
    g = tool_grammar(s, fmt)
    assert accepts(model, g.gbnf, text)
    parsed = fmt.parse(text, s)
    assert parsed.calls or parsed.content == "It is sunny."


BAD = [
    (GENERIC, "auto", '{"tool_call": {"name": "get_weather", "arguments": {"city": 5}}}'),  # wrong type
    (GENERIC, "auto", '{"tool_call": {"name": "get_weather", "arguments": {"days": 3}}}'),  # missing required
    (GENERIC, "auto", '{"tool_call": {"name": "nope", "arguments": {}}}'),  # unknown tool
    (GENERIC, "required", '{"response": "no"}'),  # required: a call, not words
    (GENERIC, NAMED, '{"tool_call": {"name": "get_time", "arguments": {}}}'),  # not the named tool
    (GENERIC, "auto", '{"tool_call": {"name": "get_weather", "arguments": {"city": "P", "days": 9}}}'),  # > max
    (HERMES, "required", "Sure! Let me check."),
    (LLAMA3, "required", '{"name": "get_weather", "parameters": {"city": "a\nb"}}'),  # raw newline in a string
]


@pytest.mark.parametrize("fmt, choice, text", BAD)
def test_calls_that_break_the_schema_are_refused(model, fmt, choice, text):
    assert not accepts(model, tool_grammar(spec(choice), fmt).gbnf, text)


def test_parallel_false_allows_one_call(model):
    one = spec("required", parallel=False)
    two = f'<tool_call>{{"name": "get_time", "arguments": {{}}}}</tool_call><tool_call>{{"name": "get_time", "arguments": {{}}}}</tool_call>'
    assert not accepts(model, tool_grammar(one, HERMES).gbnf, two)
    assert accepts(model, tool_grammar(spec("required"), HERMES).gbnf, two)
    g = tool_grammar(one, GENERIC).gbnf
    assert not accepts(model, g, '{"tool_calls": [{"name": "get_time", "arguments": {}}]}')


# -- the lazy grammar on the real model --------------------------------------------------------------


@pytest.fixture(scope="module")
def ctx(model):
    c = LlamaContext(model, n_seq=1, n_ctx_seq=512, n_batch=128, threads=2)
    prompt = model.tokenize(PROMPT, False, True)
    assert c.decode([(t, i, 0, False) for i, t in enumerate(prompt)]) == 0
    yield c
    c.close()


OBJ = {
    "type": "object",
    "properties": {"kind": {"const": "cat"}},
    "required": ["kind"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("temperature, seed", [(0.0, None), (1.0, 3), (1.0, 11)])
def test_lazy_grammar_holds_the_text_from_its_trigger_on(model, ctx, temperature, seed):
    """The model, asked to describe a cat as JSON, writes free text, then an object that the grammar
    (triggered by its first brace) holds to the schema, and ends there."""
    from runtime.engine.grammar import schema_to_gbnf

    params = SamplingParams(
        temperature=temperature, seed=seed, grammar=schema_to_gbnf(OBJ), grammar_triggers=(r"\{",)
    )
    text = model.detokenize(generate(model, ctx, params, 60))
    if "{" in text:
        tail = text[text.index("{") :]
        assert json.loads(tail) == {"kind": "cat"}, text
    else:  # never triggered: the whole answer was free (greedy writes code without a brace here)
        assert text


def test_a_trigger_whose_text_the_grammar_refuses_is_passed_over_not_fatal(model, ctx):
    """Each non-space character triggers, and the grammar refuses every one but a brace: llama.cpp's own
    lazy grammar would throw inside accept here (ending the process); ours looks further on."""
    from runtime.engine.grammar import schema_to_gbnf

    params = SamplingParams(temperature=1.0, seed=3, grammar=schema_to_gbnf(OBJ), grammar_triggers=(r"(\S)",))
    text = model.detokenize(generate(model, ctx, params, 60))
    assert text
    if "{" in text:
        assert json.loads(text[text.index("{") :]) == {"kind": "cat"}


def test_a_lazy_grammar_that_never_triggers_leaves_the_answer_free(model, ctx):
    from runtime.engine.grammar import schema_to_gbnf

    free = generate(model, ctx, SamplingParams(temperature=0.0), 30)
    lazy = generate(
        model, ctx, SamplingParams(temperature=0.0, grammar=schema_to_gbnf(OBJ), grammar_triggers=("NEVER",)), 30
    )
    assert lazy == free


def test_a_sampler_with_a_lazy_grammar_closes_cleanly(model):
    s = Sampler(SamplingParams(grammar='root ::= "x"', grammar_triggers=("x",)), model.vocab, model.n_vocab)
    s.close()
    s.close()  # twice is harmless


# -- property-based: lazy tool grammars triggered anywhere, with whatever follows the marker -------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

def force(sampler: Sampler, tok: int) -> bool:
    """Take ``tok`` as if the sampler had chosen it (its own paths: free while a lazy grammar waits,
    checked by the grammar once triggered); False when the triggered grammar refuses it."""
    if sampler._awaiting:  # noqa: SLF001
        sampler._accept_free(tok)  # noqa: SLF001
        return True
    if not sampler._grammar_allows(tok):  # noqa: SLF001
        return False
    sampler._accept(tok)  # noqa: SLF001
    return True


_leaf = st.sampled_from([{"type": "string"}, {"type": "integer"}, {"type": "boolean"}, {"enum": ["a", 1, None]},
                         {"type": "string", "maxLength": 3}, {"type": "array", "items": {"type": "integer"}}])
_params = st.builds(lambda props, req: {"type": "object", "properties": props, "required": list(props)[:req]},
                    st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), _leaf, max_size=3),
                    st.integers(0, 3))
_junk = st.text(st.sampled_from(list('{}[]":, \nabc1<>/_=')), max_size=12)


@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(params=_params, fmt=st.sampled_from([HERMES, PHI4, QWEN_XML, LLAMA3, MISTRAL]), before=_junk, after=_junk,
       temperature=st.sampled_from([0.0, 1.0]), parallel=st.booleans())
def test_lazy_tool_grammars_triggered_anywhere_never_break_the_process(model, ctx, params, fmt, before, after,
                                                                        temperature, parallel):
    """The model is made to have written ``before`` + the format's marker + ``after`` (fed to the sampler as
    its own tokens), then samples on: the trigger is taken or passed over, never a llama.cpp abort; a
    taken trigger holds the rest to the grammar."""
    s = parse_tools({"tools": [{"type": "function", "function": {"name": "f", "parameters": params}}],
                     "parallel_tool_calls": parallel})
    g = tool_grammar(s, fmt)
    assert g is not None and g.triggers
    marker = fmt.open if fmt is not LLAMA3 else '{"name"'
    prefix = (before if fmt is not LLAMA3 else "") + marker + after
    prompt = model.tokenize(PROMPT, False, True)
    ctx.seq_remove(0, len(prompt) - 1, -1)
    assert ctx.decode([(prompt[-1], len(prompt) - 1, 0, True)]) == 0
    sampler = Sampler(SamplingParams(temperature=temperature, seed=5, grammar=g.gbnf, grammar_triggers=g.triggers),
                      model.vocab, model.n_vocab)
    pos = len(prompt)
    try:
        for tok in model.tokenize(prefix, add_special=False, parse_special=True):
            if not force(sampler, tok):
                break  # the grammar, triggered, refuses the rest: the model could not have written it
            assert ctx.decode([(tok, pos, 0, True)]) == 0
            pos += 1
        out: list[int] = []
        for _ in range(8):
            tok = sampler.sample(ctx.ctx, 0)
            if model.is_eog(tok):
                break
            out.append(tok)
            assert ctx.decode([(tok, pos, 0, True)]) == 0
            pos += 1
    except GrammarDeadEnd:
        pass  # a refusal of this request, not a crash
    finally:
        sampler.close()


def test_a_trigger_after_a_long_free_answer_is_still_found(model):
    """Only the end of a long free answer is searched for the marker (TRIGGER_WINDOW), and a marker
    there still triggers the grammar."""
    g = tool_grammar(spec("auto"), HERMES)
    s = Sampler(SamplingParams(grammar=g.gbnf, grammar_triggers=g.triggers), model.vocab, model.n_vocab)
    try:
        for tok in model.tokenize("word " * 400 + '<tool_call>\n{"name": "get_time"', False, True):
            assert force(s, tok)
        assert not s._awaiting  # noqa: SLF001
        assert s._grammar_allows(model.tokenize(",", False, False)[0])  # noqa: SLF001  the call goes on
        assert not s._grammar_allows(model.tokenize("}", False, False)[0])  # noqa: SLF001  no arguments yet
    finally:
        s.close()
