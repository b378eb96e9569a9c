"""Request bodies → typed parameters. Pure functions: every bad input becomes an APIError that names
the offending field; unknown fields are ignored, as OpenAI does."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine.grammar import SchemaError, grammar_for_response_format
from ..engine.events import DEFAULT_MIN_P, DEFAULT_TOP_K, SamplingParams
from .errors import invalid

MAX_N = 16
MAX_STOPS = 16


def parse_json_body(raw: bytes) -> dict:
    if not raw.strip():
        raise invalid("The request body is empty; send a JSON object.", None, "invalid_json")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise invalid(f"The request body is not valid JSON: {e}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None, "invalid_json")
    return body


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _number(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise invalid(f"'{key}' must be a number, not {_type_name(v)}.", key, "invalid_type")
    if not (lo <= v <= hi):
        raise invalid(f"'{key}' must be between {lo} and {hi}; got {v}.", key)
    return float(v)


def _integer(body: dict, key: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise invalid(f"'{key}' must be an integer, not {_type_name(v)}.", key, "invalid_type")
    if v < lo or (hi is not None and v > hi):
        rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise invalid(f"'{key}' must be {rng}; got {v}.", key)
    return v


def _boolean(body: dict, key: str, default: bool) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise invalid(f"'{key}' must be a boolean, not {_type_name(v)}.", key, "invalid_type")
    return v


def _model(body: dict) -> str:
    v = body.get("model")
    if v is None:
        raise invalid("'model' is required: name the model to use (GET /v1/models lists them).", "model",
                      "missing_required_parameter")
    if not isinstance(v, str) or not v.strip():
        raise invalid(f"'model' must be a non-empty string, not {_type_name(v)}.", "model", "invalid_type")
    return v.strip()


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        if len(v) > MAX_STOPS:
            raise invalid(f"'stop' may hold at most {MAX_STOPS} strings; got {len(v)}.", "stop")
        return [s for s in v if s]
    raise invalid("'stop' must be a string or an array of strings.", "stop", "invalid_type")


def _logit_bias(body: dict, n_vocab: int) -> dict[int, float]:
    v = body.get("logit_bias")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise invalid("'logit_bias' must be an object mapping token ids to biases.", "logit_bias", "invalid_type")
    out: dict[int, float] = {}
    for k, b in v.items():
        try:
            tok = int(k)
        except (TypeError, ValueError):
            raise invalid(f"'logit_bias' keys must be token ids (integers as strings); got {k!r}.",
                          "logit_bias", "invalid_type") from None
        if not (0 <= tok < n_vocab):
            raise invalid(f"'logit_bias' token id {tok} is outside this model's vocabulary (0..{n_vocab - 1}).",
                          "logit_bias")
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not (-100 <= b <= 100):
            raise invalid(f"'logit_bias' values must be numbers between -100 and 100; got {b!r} for {k}.",
                          "logit_bias")
        # OpenAI semantics: -100 bans a token, +100 forces it.
        out[tok] = float("-inf") if b <= -100 else float(b)
    return out


def _unsupported(body: dict) -> None:
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        raise invalid("'logprobs' is not supported by this node yet; remove it from the request.", "logprobs",
                      "unsupported_parameter")
    if body.get("tools") or body.get("functions"):
        key = "tools" if body.get("tools") else "functions"
        raise invalid(f"'{key}' (function calling) is not supported by this node yet; remove it from the request.",
                      key, "unsupported_parameter")
    if body.get("suffix") not in (None, ""):
        raise invalid("'suffix' (insertion) is not supported; remove it from the request.", "suffix",
                      "unsupported_parameter")
    if body.get("best_of") not in (None, 1):
        raise invalid("'best_of' is not supported; use 'n' to get several completions.", "best_of",
                      "unsupported_parameter")


@dataclass
class GenerationParams:
    model: str
    sampling: SamplingParams
    max_tokens: int | None
    stop: list[str]
    n: int
    stream: bool
    include_usage: bool
    extra: dict = field(default_factory=dict)


def parse_generation(body: dict, n_vocab: int | None, default_max_tokens: int | None) -> GenerationParams:
    """Parameters shared by chat and text completions. ``n_vocab`` is None when the model is not known
    yet (then logit_bias is checked later)."""
    _unsupported(body)
    model = _model(body)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    top_k = _integer(body, "top_k", DEFAULT_TOP_K, 0)
    min_p = _number(body, "min_p", DEFAULT_MIN_P, 0.0, 1.0)
    seed = _integer(body, "seed", None, -(2**63), 2**64 - 1)
    presence = _number(body, "presence_penalty", 0.0, -2.0, 2.0)
    frequency = _number(body, "frequency_penalty", 0.0, -2.0, 2.0)
    repeat = _number(body, "repeat_penalty", 1.0, 0.0, 10.0)
    max_tokens = _integer(body, "max_tokens", default_max_tokens, 1)
    mct = _integer(body, "max_completion_tokens", None, 1)
    if mct is not None:
        max_tokens = mct  # the newer name wins
    n = _integer(body, "n", 1, 1, MAX_N)
    stream = _boolean(body, "stream", False)
    so = body.get("stream_options")
    include_usage = False
    if so is not None:
        if not isinstance(so, dict):
            raise invalid("'stream_options' must be an object.", "stream_options", "invalid_type")
        if not stream:
            raise invalid("'stream_options' is only allowed when 'stream' is true.", "stream_options")
        iu = so.get("include_usage", False)
        if not isinstance(iu, bool):
            raise invalid("'stream_options.include_usage' must be a boolean.", "stream_options.include_usage",
                          "invalid_type")
        include_usage = iu
    rf = body.get("response_format")
    if rf is not None and not isinstance(rf, dict):
        raise invalid("'response_format' must be an object such as {\"type\": \"json_object\"}.",
                      "response_format", "invalid_type")
    try:
        grammar = grammar_for_response_format(rf)
    except SchemaError as e:
        raise invalid(str(e), "response_format") from None
    bias = _logit_bias(body, n_vocab) if n_vocab is not None else {}
    sampling = SamplingParams(
        temperature=temperature, top_p=top_p, top_k=top_k or 0, min_p=min_p,
        seed=(seed & 0xFFFFFFFF) if seed is not None else None,
        presence_penalty=presence, frequency_penalty=frequency, repeat_penalty=repeat,
        logit_bias=bias, grammar=grammar,
    )
    return GenerationParams(model, sampling, max_tokens, _stop(body), n, stream, include_usage)


def with_vocab(gp: GenerationParams, body: dict, n_vocab: int) -> GenerationParams:
    """Once the model is known: check 'logit_bias' against its vocabulary and add it."""
    bias = _logit_bias(body, n_vocab)
    if not bias:
        return gp
    return replace(gp, sampling=replace(gp.sampling, logit_bias=bias))


VALID_ROLES = {"system", "developer", "user", "assistant"}


def parse_messages(body: dict) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if msgs is None:
        raise invalid("'messages' is required: a non-empty array of {role, content} objects.", "messages",
                      "missing_required_parameter")
    if not isinstance(msgs, list):
        raise invalid(f"'messages' must be an array, not {_type_name(msgs)}.", "messages", "invalid_type")
    if not msgs:
        raise invalid("'messages' must contain at least one message.", "messages", "empty_array")
    out = []
    for i, m in enumerate(msgs):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"'{p}' must be an object with 'role' and 'content'.", p, "invalid_type")
        role = m.get("role")
        if role == "tool" or role == "function":
            raise invalid(f"'{p}.role' '{role}' needs function calling, which this node does not support yet.",
                          f"{p}.role", "unsupported_parameter")
        if role not in VALID_ROLES:
            raise invalid(f"'{p}.role' must be one of 'system', 'developer', 'user', 'assistant'; got {role!r}.",
                          f"{p}.role")
        content = m.get("content")
        if content is None:
            if role == "assistant":
                content = ""
            else:
                raise invalid(f"'{p}.content' is required.", f"{p}.content", "missing_required_parameter")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                pp = f"{p}.content[{j}]"
                if not isinstance(part, dict) or "type" not in part:
                    raise invalid(f"'{pp}' must be an object with a 'type'.", pp, "invalid_type")
                if part["type"] != "text":
                    raise invalid(f"'{pp}' has type {part['type']!r}; this model accepts text parts only.", pp,
                                  "unsupported_content")
                if not isinstance(part.get("text"), str):
                    raise invalid(f"'{pp}.text' must be a string.", f"{pp}.text", "invalid_type")
                texts.append(part["text"])
            content = "".join(texts)
        elif not isinstance(content, str):
            raise invalid(f"'{p}.content' must be a string or an array of text parts, not {_type_name(content)}.",
                          f"{p}.content", "invalid_type")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def parse_prompts(body: dict) -> list[str | list[int]]:
    """/v1/completions 'prompt': a string, an array of strings, an array of token ids, or an array of those."""
    p = body.get("prompt")
    if p is None:
        raise invalid("'prompt' is required.", "prompt", "missing_required_parameter")
    if isinstance(p, str):
        return [p]
    if isinstance(p, list) and p:
        if all(isinstance(x, str) for x in p):
            return list(p)
        if all(isinstance(x, int) and not isinstance(x, bool) for x in p):
            return [list(p)]
        if all(isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x) for x in p):
            return [list(x) for x in p]
    raise invalid("'prompt' must be a string, an array of strings, or an array of token ids.", "prompt",
                  "invalid_type")


def parse_embedding_inputs(body: dict) -> list[str | list[int]]:
    v = body.get("input")
    if v is None:
        raise invalid("'input' is required.", "input", "missing_required_parameter")
    if isinstance(v, str):
        items: list = [v]
    elif isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        items = list(v)
    elif isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        items = [list(v)]
    elif isinstance(v, list) and v and all(
            isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x) for x in v):
        items = [list(x) for x in v]
    else:
        raise invalid("'input' must be a string, an array of strings, or an array of token ids.", "input",
                      "invalid_type")
    for i, x in enumerate(items):
        if x == "":
            raise invalid(f"'input[{i}]' is empty; every input must contain text.", "input")
    if len(items) > 2048:
        raise invalid("'input' may hold at most 2048 items.", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise invalid("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    if body.get("dimensions") is not None:
        raise invalid("'dimensions' is not supported: this model's embeddings have a fixed size.", "dimensions",
                      "unsupported_parameter")
    return items


