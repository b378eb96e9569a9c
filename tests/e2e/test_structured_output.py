"""Structured output under sampling, over many seeds: the official openai SDK against a real node with
the real model.

Issue 13: with the default model at temperature 1, the converter once let a raw newline into a JSON
string value (``{ "city": "New York, …`` then a literal newline), which ``json.loads`` rejects. Strings
must follow JSON's rules (escapes only). Every answer that finished with "stop" must parse (and match
the schema); only an answer cut by max_tokens ("length") may be incomplete.
"""

from __future__ import annotations

import json

import pytest

from ..schema_check import violations

pytestmark = pytest.mark.e2e

# Unbounded strings (the `char*` rule), asked for in words that invite line breaks.
PROSE = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "description": {"type": "string"},
        "facts": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["city", "description", "facts"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe New York as JSON. Write the description as a poem, one line per verse."}]
SEEDS = range(0, 24, 8)  # three requests of n=8: 24 sampled answers per format


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": PROSE}},
    ],
    ids=["json_object", "json_schema_strict"],
)
def test_every_finished_answer_parses_at_temperature_one(openai_client, model_id, response_format):
    slow = openai_client.with_options(timeout=900)
    answers = []
    for seed in SEEDS:
        r = slow.chat.completions.create(
            model=model_id, messages=ASK, max_tokens=120, temperature=1, seed=seed, n=8,
            response_format=response_format,
        )
        answers += r.choices
    assert len(answers) == 24
    finished = [c for c in answers if c.finish_reason == "stop"]
    for c in answers:
        assert c.finish_reason in ("stop", "length"), c.finish_reason
    for c in finished:
        value = json.loads(c.message.content)  # raises on a raw control character inside a string
        assert isinstance(value, dict), c.message.content
        if response_format["type"] == "json_schema":
            assert violations(value, PROSE) == [], c.message.content
    # Most answers fit in 120 tokens; a run where none finished would prove nothing.
    assert len(finished) >= 8, [c.message.content for c in answers]
