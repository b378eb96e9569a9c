"""Request bodies → typed parameters. Pure functions: every bad input becomes an APIError that names
the offending field; unknown fields are ignored, as OpenAI does."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any, TypeGuard, overload

from .engine.events import DEFAULT_MIN_P, DEFAULT_TOP_K, SamplingParams
from .engine.grammar import SchemaError, grammar_for_response_format
from .errors import APIError, invalid, type_name
from .tools.spec import ToolsSpec, parse_assistant_tool_calls, parse_tool_call_id, parse_tools


@dataclass(frozen=True)
class RequestLimits:
    """How much one request may ask for, checked before any work is done for it (rendering,
    tokenizing, building jobs, queueing). Each limit is far above what a demanding real client sends
    (OpenAI's own where it has one) and low enough that refusing or serving a request at the limit
    costs the node milliseconds, not seconds. docs/api.md lists them; change them here only. (The body
    size, checked before the body is read, is the setting ``ServeSettings.max_body_bytes``.)"""

    json_depth: int = 100  # nesting of arrays/objects (a JSON schema nests a few levels per property)
    messages: int = 2048  # chat messages per request
    text_chars: int = 4_000_000  # characters of text per request: message contents, prompts, inputs (~1M tokens)
    prompts: int = 2048  # prompts per /v1/completions request (OpenAI: 2048 inputs per embeddings request)
    choices: int = 2048  # prompts × n: completions one request may ask for
    n: int = 16  # choices per prompt
    token_ids: int = 1_048_576  # prompt or input tokens given as ids, per request (the largest contexts)
    stops: int = 16  # stop strings (OpenAI allows 4; more costs nothing here)
    stop_chars: int = 1000  # characters per stop string
    logit_bias: int = 1024  # logit_bias entries (OpenAI allows 300)
    embedding_inputs: int = 2048  # items of 'input' per /v1/embeddings request (OpenAI: 2048)


LIMITS = RequestLimits()


def too_many(param: str, what: str, got: int, limit: int) -> APIError:
    return invalid(
        f"'{param}' holds {got} {what}; this node accepts at most {limit} per request.", param, "array_above_max_length"
    )


def _text(value: str, param: str) -> str:
    """Text that will be tokenized (or matched against output) must be encodable as UTF-8: JSON allows
    a lone UTF-16 surrogate such as "\\ud800", which no tokenizer can take."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise invalid(
                f"'{param}' contains an unpaired UTF-16 surrogate (\\u{ord(value[e.start]):04x} at "
                f"character {e.start}); send valid Unicode text.",
                param,
                "invalid_unicode",
            ) from None
    return value


class _TextBudget:
    """Counts the characters of text in one request against ``LIMITS.text_chars``."""

    def __init__(self, param: str) -> None:
        self.param = param
        self.used = 0

    def take(self, value: str, param: str) -> str:
        self.used += len(value)
        if self.used > LIMITS.text_chars:
            raise invalid(
                f"The text in '{self.param}' is longer than this node accepts in one request "
                f"({LIMITS.text_chars} characters in all). Send less text, or split it over several "
                f"requests.",
                self.param,
                "string_above_max_length",
            )
        return _text(value, param)


_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_BRACKET_STEP = [0] * 256
for _c in b"[{":
    _BRACKET_STEP[_c] = 1
for _c in b"]}":
    _BRACKET_STEP[_c] = -1


def _depth_exceeds(raw: bytes, value: Any, limit: int) -> bool:
    """Whether parsed JSON nests deeper than ``limit``. Counting the brackets of the raw text runs at C
    speed and can only over-estimate (brackets inside strings count too); only when it says "too deep"
    is the parsed value walked to be sure."""
    brackets = raw.translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit or max(accumulate(map(_BRACKET_STEP.__getitem__, brackets))) <= limit:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        for child in v.values() if isinstance(v, dict) else v:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def parse_json_body(raw: bytes) -> dict:
    if not raw.strip():
        raise invalid("The request body is empty; send a JSON object.", None, "invalid_json")
    too_deep = invalid(
        f"The request body nests arrays and objects more than {LIMITS.json_depth} levels deep; "
        f"this node accepts at most {LIMITS.json_depth}.",
        None,
        "json_too_deep",
    )
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise invalid(f"The request body is not valid JSON: {e}", None, "invalid_json") from None
    except RecursionError:  # deeper than Python's parser can go: certainly deeper than the limit
        raise too_deep from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", None, "invalid_json")
    if _depth_exceeds(raw, body, LIMITS.json_depth):
        raise too_deep
    return body


def _number(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise invalid(f"'{key}' must be a number, not {type_name(v)}.", key, "invalid_type")
    if not (lo <= v <= hi):
        raise invalid(f"'{key}' must be between {lo} and {hi}; got {v}.", key)
    return float(v)


@overload
def _integer(body: dict, key: str, default: int, lo: int, hi: int | None = None) -> int: ...


@overload
def _integer(body: dict, key: str, default: None, lo: int, hi: int | None = None) -> int | None: ...


def _integer(body: dict, key: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise invalid(f"'{key}' must be an integer, not {type_name(v)}.", key, "invalid_type")
    if v < lo or (hi is not None and v > hi):
        rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise invalid(f"'{key}' must be {rng}; got {v}.", key)
    return v


def _boolean(body: dict, key: str, default: bool) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise invalid(f"'{key}' must be a boolean, not {type_name(v)}.", key, "invalid_type")
    return v


def _model(body: dict) -> str:
    v = body.get("model")
    if v is None:
        raise invalid(
            "'model' is required: name the model to use (GET /v1/models lists them).",
            "model",
            "missing_required_parameter",
        )
    if not isinstance(v, str) or not v.strip():
        raise invalid(f"'model' must be a non-empty string, not {type_name(v)}.", "model", "invalid_type")
    return v.strip()


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        return [_stop_string(v, "stop")] if v else []
    if isinstance(v, list):
        if len(v) > LIMITS.stops:
            raise too_many("stop", "strings", len(v), LIMITS.stops)
        if all(isinstance(s, str) for s in v):
            return [_stop_string(s, f"stop[{i}]") for i, s in enumerate(v) if s]
    raise invalid("'stop' must be a string or an array of strings.", "stop", "invalid_type")


def _stop_string(s: str, param: str) -> str:
    if len(s) > LIMITS.stop_chars:
        raise invalid(
            f"'{param}' is {len(s)} characters long; a stop string may have at most {LIMITS.stop_chars}.",
            "stop",
            "string_above_max_length",
        )
    return _text(s, "stop")


def _logit_bias(body: dict, n_vocab: int) -> dict[int, float]:
    v = body.get("logit_bias")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise invalid("'logit_bias' must be an object mapping token ids to biases.", "logit_bias", "invalid_type")
    if len(v) > LIMITS.logit_bias:
        raise too_many("logit_bias", "entries", len(v), LIMITS.logit_bias)
    out: dict[int, float] = {}
    for k, b in v.items():
        try:
            tok = int(k)
        except (TypeError, ValueError):
            raise invalid(
                f"'logit_bias' keys must be token ids (integers as strings); got {k!r}.", "logit_bias", "invalid_type"
            ) from None
        if not (0 <= tok < n_vocab):
            raise invalid(
                f"'logit_bias' token id {tok} is outside this model's vocabulary (0..{n_vocab - 1}).", "logit_bias"
            )
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not (-100 <= b <= 100):
            raise invalid(f"'logit_bias' values must be numbers between -100 and 100; got {b!r} for {k}.", "logit_bias")
        # OpenAI semantics: -100 bans a token, +100 forces it.
        out[tok] = float("-inf") if b <= -100 else float(b)
    return out


MAX_TOP_LOGPROBS = 20  # chat completions' top_logprobs (OpenAI's limit)
MAX_LEGACY_LOGPROBS = 5  # completions' logprobs (OpenAI's limit)


def _logprobs(body: dict, endpoint: str) -> int | None:
    """How many alternatives to report per token (0: the sampled token's only), or None for no log
    probabilities. Chat: ``logprobs`` (boolean) with ``top_logprobs`` (0-20); completions: ``logprobs``
    (0-5, the legacy form)."""
    if endpoint == "completion":
        return _integer(body, "logprobs", None, 0, MAX_LEGACY_LOGPROBS)
    wanted = _boolean(body, "logprobs", False)
    top = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    if top is not None and not wanted:
        raise invalid("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
    return (top or 0) if wanted else None


def _unsupported(body: dict) -> None:
    if body.get("suffix") not in (None, ""):
        raise invalid(
            "'suffix' (insertion) is not supported; remove it from the request.", "suffix", "unsupported_parameter"
        )
    if body.get("best_of") not in (None, 1):
        raise invalid(
            "'best_of' is not supported; use 'n' to get several completions.", "best_of", "unsupported_parameter"
        )


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
    tools: ToolsSpec | None = None  # 'tools', 'tool_choice', 'parallel_tool_calls' (None: no tools sent)


def parse_generation(
    body: dict, n_vocab: int | None, default_max_tokens: int | None, endpoint: str = "chat"
) -> GenerationParams:
    """Parameters shared by chat and text completions (``endpoint``: "chat" or "completion"). ``n_vocab``
    is None when the model is not known yet (then logit_bias is checked later)."""
    _unsupported(body)
    logprobs = _logprobs(body, endpoint)
    model = _model(body)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    top_k = _integer(body, "top_k", DEFAULT_TOP_K, 0)
    min_p = _number(body, "min_p", DEFAULT_MIN_P, 0.0, 1.0)
    seed = _integer(body, "seed", None, -(2**63), 2**64 - 1)
    presence = _number(body, "presence_penalty", 0.0, -2.0, 2.0)
    frequency = _number(body, "frequency_penalty", 0.0, -2.0, 2.0)
    repeat = _number(body, "repeat_penalty", 1.0, 0.0, 10.0)
    if repeat == 0.0:  # llama.cpp divides logits by it
        raise invalid("'repeat_penalty' must be above 0 (1 means no penalty); got 0.", "repeat_penalty")
    max_tokens = _integer(body, "max_tokens", default_max_tokens, 1)
    mct = _integer(body, "max_completion_tokens", None, 1)
    if mct is not None:
        max_tokens = mct  # the newer name wins
    n = _integer(body, "n", 1, 1, LIMITS.n)
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
            raise invalid(
                "'stream_options.include_usage' must be a boolean.", "stream_options.include_usage", "invalid_type"
            )
        include_usage = iu
    rf = body.get("response_format")
    if rf is not None and not isinstance(rf, dict):
        raise invalid(
            '\'response_format\' must be an object such as {"type": "json_object"}.', "response_format", "invalid_type"
        )
    try:
        grammar = grammar_for_response_format(rf)
    except SchemaError as e:
        raise invalid(str(e), "response_format") from None
    tools = parse_tools(body)
    if grammar is not None and tools is not None and tools.active:
        raise invalid(
            "'response_format' together with active 'tools' is not supported: the tool-call grammar already "
            "shapes the answer. Send one of them, or 'tool_choice': 'none'.",
            "response_format",
            "unsupported_parameter",
        )
    lb = body.get("logit_bias")
    if isinstance(lb, dict) and len(lb) > LIMITS.logit_bias:  # bounded even before the vocabulary is known
        raise too_many("logit_bias", "entries", len(lb), LIMITS.logit_bias)
    bias = _logit_bias(body, n_vocab) if n_vocab is not None else {}
    sampling = SamplingParams(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k or 0,
        min_p=min_p,
        seed=(seed & 0xFFFFFFFF) if seed is not None else None,
        presence_penalty=presence,
        frequency_penalty=frequency,
        repeat_penalty=repeat,
        logit_bias=bias,
        grammar=grammar,
        logprobs=logprobs,
    )
    return GenerationParams(model, sampling, max_tokens, _stop(body), n, stream, include_usage, tools=tools)


def with_vocab(gp: GenerationParams, body: dict, n_vocab: int) -> GenerationParams:
    """Once the model is known: check 'logit_bias' against its vocabulary and add it."""
    bias = _logit_bias(body, n_vocab)
    if not bias:
        return gp
    return replace(gp, sampling=replace(gp.sampling, logit_bias=bias))


VALID_ROLES = {"system", "developer", "user", "assistant", "tool"}


def parse_messages(body: dict) -> list[dict[str, Any]]:
    """{role, content} per message (content as one string); an assistant message may add 'tool_calls'
    (then its content may be empty), a 'tool' message carries 'tool_call_id'."""
    msgs = body.get("messages")
    if msgs is None:
        raise invalid(
            "'messages' is required: a non-empty array of {role, content} objects.",
            "messages",
            "missing_required_parameter",
        )
    if not isinstance(msgs, list):
        raise invalid(f"'messages' must be an array, not {type_name(msgs)}.", "messages", "invalid_type")
    if not msgs:
        raise invalid("'messages' must contain at least one message.", "messages", "empty_array")
    if len(msgs) > LIMITS.messages:
        raise too_many("messages", "messages", len(msgs), LIMITS.messages)
    budget = _TextBudget("messages")
    out = []
    for i, m in enumerate(msgs):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"'{p}' must be an object with 'role' and 'content'.", p, "invalid_type")
        role = m.get("role")
        if role == "function":
            raise invalid(
                f"'{p}.role' 'function' is OpenAI's deprecated form of tool results; send role 'tool' with "
                f"'tool_call_id'.",
                f"{p}.role",
                "unsupported_parameter",
            )
        if role not in VALID_ROLES:
            raise invalid(
                f"'{p}.role' must be one of 'system', 'developer', 'user', 'assistant', 'tool'; got {role!r}.",
                f"{p}.role",
            )
        extra: dict[str, Any] = {}
        if role == "tool":
            extra["tool_call_id"] = parse_tool_call_id(m, p)
        elif role == "assistant" and m.get("tool_calls") is not None:
            extra["tool_calls"] = parse_assistant_tool_calls(m["tool_calls"], p)
            for c in extra["tool_calls"]:
                budget.take(c["function"]["name"] + c["function"]["arguments"], f"{p}.tool_calls")
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
                    raise invalid(
                        f"'{pp}' has type {part['type']!r}; this model accepts text parts only.",
                        pp,
                        "unsupported_content",
                    )
                if not isinstance(part.get("text"), str):
                    raise invalid(f"'{pp}.text' must be a string.", f"{pp}.text", "invalid_type")
                texts.append(budget.take(part["text"], f"{pp}.text"))
            content = "".join(texts)
        elif isinstance(content, str):
            budget.take(content, f"{p}.content")
        else:
            raise invalid(
                f"'{p}.content' must be a string or an array of text parts, not {type_name(content)}.",
                f"{p}.content",
                "invalid_type",
            )
        out.append({"role": "system" if role == "developer" else role, "content": content, **extra})
    return out


def _is_token_id(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _texts_or_token_ids(v: Any, param: str, max_items: int, what: str) -> list[str | list[int]] | None:
    """A string, an array of strings, an array of token ids or an array of such arrays, counted against
    the limits before anything is done with it; None when ``v`` has none of these shapes."""
    budget = _TextBudget(param)
    if isinstance(v, str):
        return [budget.take(v, param)]
    if not isinstance(v, list) or not v:
        return None
    if _is_token_id(v[0]):  # one prompt as token ids
        if len(v) > LIMITS.token_ids:
            raise too_many(param, "token ids", len(v), LIMITS.token_ids)
        return [list(v)] if all(_is_token_id(t) for t in v) else None
    if len(v) > max_items:
        raise too_many(param, what, len(v), max_items)
    if all(isinstance(x, str) for x in v):
        return [budget.take(x, f"{param}[{i}]") for i, x in enumerate(v)]
    if all(isinstance(x, list) and x for x in v):
        if sum(len(x) for x in v) > LIMITS.token_ids:
            raise too_many(param, "token ids", sum(len(x) for x in v), LIMITS.token_ids)
        if all(_is_token_id(t) for x in v for t in x):
            return [list(x) for x in v]
    return None


def parse_prompts(body: dict) -> list[str | list[int]]:
    """/v1/completions 'prompt': a string, an array of strings, an array of token ids, or an array of those.
    Bounded together with 'n' here, so that every caller (the route, the mesh's serving side) refuses an
    oversized request before tokenizing a prompt or building a job."""
    p = body.get("prompt")
    if p is None:
        raise invalid("'prompt' is required.", "prompt", "missing_required_parameter")
    prompts = _texts_or_token_ids(p, "prompt", LIMITS.prompts, "prompts")
    if prompts is None:
        raise invalid(
            "'prompt' must be a string, an array of strings, or an array of token ids.", "prompt", "invalid_type"
        )
    n = body.get("n")
    if isinstance(n, float) and n.is_integer():
        n = int(n)  # as parse_generation reads it; n itself is checked there
    if _is_token_id(n) and len(prompts) * n > LIMITS.choices:
        raise invalid(
            f"{len(prompts)} prompts with 'n' {n} ask for {len(prompts) * n} completions; this node "
            f"accepts at most {LIMITS.choices} (prompts × n) per request.",
            "n",
            "array_above_max_length",
        )
    return prompts


def parse_embedding_inputs(body: dict) -> list[str | list[int]]:
    v = body.get("input")
    if v is None:
        raise invalid("'input' is required.", "input", "missing_required_parameter")
    items = _texts_or_token_ids(v, "input", LIMITS.embedding_inputs, "inputs")
    if items is None:
        raise invalid(
            "'input' must be a string, an array of strings, or an array of token ids.", "input", "invalid_type"
        )
    for i, x in enumerate(items):
        if x == "":
            raise invalid(f"'input[{i}]' is empty; every input must contain text.", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise invalid("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    if body.get("dimensions") is not None:
        raise invalid(
            "'dimensions' is not supported: this model's embeddings have a fixed size.",
            "dimensions",
            "unsupported_parameter",
        )
    return items
