"""What flows between the node and an engine: plain data only, importable without llama.cpp.

The node's own process never loads llama.cpp (it runs in a supervised worker process, see worker.py), so
everything the API, the mesh and the model manager share with the engine lives here: the sampling
parameters of a request, the request itself, and the events a generation produces.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NodeError

# Defaults follow the OpenAI API where it defines one (temperature, top_p) and llama.cpp's otherwise.
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05


# KV cache element types: name -> (ggml type id, bytes per element). q8_0 halves the cache and decodes
# as fast, but needs flash attention, whose CPU kernel reads prompts ~3x slower (docs/benchmarks.md).
KV_TYPES: dict[str, tuple[int, float]] = {"f16": (1, 2.0), "q8_0": (8, 34 / 32)}


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    description: str
    n_ctx_train: int
    n_layer: int
    n_embd: int
    n_head_kv: int
    n_head: int
    n_vocab: int
    n_params: int
    size_bytes: int
    chat_template: str | None
    bos_text: str
    eos_text: str
    add_bos: bool
    architecture: str

    def kv_bytes_per_token(self, kv_type: str = "f16") -> int:
        """K and V for every layer: the KV cache cost of one token of context."""
        head_dim = self.n_embd // max(1, self.n_head)
        return int(2 * self.n_layer * self.n_head_kv * head_dim * KV_TYPES[kv_type][1])


class QueueFull(Exception):
    pass


class EngineStopped(Exception):
    pass


class EngineUnavailable(Exception):
    """The engine's worker process is down (crashed and restarting, or given up on)."""

    def __init__(self, message: str, retry_after: int | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class EngineConfig:
    threads: int
    slots: int | None = None
    ctx_per_slot: int | None = None
    gpu_layers: int | None = None
    max_queue: int = 64
    kv_type: str = "f16"
    # Seconds the engine may go without a sign of progress while it has work (the worker reports at least
    # once a second while its loop runs) before it is taken for hung in native code, stopped and restarted.
    stall_timeout: float = 180.0


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = DEFAULT_TOP_K
    min_p: float = DEFAULT_MIN_P
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)  # -100 or less (or -inf): banned
    grammar: str | None = None  # GBNF, rule "root"
    # None: no log probabilities (nothing is computed). n >= 0: each sampled token's log probability and
    # the n most likely alternatives at its step (OpenAI's top_logprobs / the completions' logprobs).
    logprobs: int | None = None
    # Lazy grammar: regular expressions (Python syntax) on the answer; the grammar applies from the first
    # match (from its first group, if it has one) instead of from the first token. Tool calls in auto mode.
    grammar_triggers: tuple[str, ...] = ()
    # Write control tokens as their text in the answer: some models' tool-call markers (Mistral's
    # [TOOL_CALLS]) are control tokens, which are otherwise left out of the text.
    special_text: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


# -- the generation vocabulary ---------------------------------------------------------------------------
#
# One answer's events, whoever produces them: the engine worker (Text, Finished, Failed), the node's
# generation service (adds Started for a local answer), the mesh requester (all of them, decoded from a
# peer's messages by runtime/mesh/wire.py). The OpenAI formatter (runtime/api/openai_format.py) is their
# one reader. Plain picklable dataclasses: they cross the worker's pipe as they are.


@dataclass(frozen=True)
class Started:
    """A choice has a prompt and an engine working on it (here or on a peer)."""

    prompt_tokens: int
    model: str  # the id of the model that answers (a peer's own spelling of it for a mesh answer)
    fingerprint: str | None = None  # OpenAI's system_fingerprint of whoever answers; None: not known


@dataclass
class Text:
    """Generated text: one token's worth (or the held-back tail flushed at the end).

    ``logprobs``: None unless the request asked for log probabilities (SamplingParams.logprobs); then one
    entry per sampled token whose text this event completes (an event can complete none, one or several
    tokens: text is held back for a partial UTF-8 character or a possible stop string). Each entry is
    plain JSON data in OpenAI's chat shape — ``{"token", "logprob", "bytes", "top_logprobs": [{"token",
    "logprob", "bytes"}]}`` — the log-softmax of the model's raw logits at that step (before penalties,
    logit_bias, grammar and temperature); it crosses the worker's pipe and the mesh as it is.
    ``token_ids``: room for the ids of those tokens (None today)."""

    text: str
    token_ids: list[int] | None = None
    logprobs: list | None = None


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call, as OpenAI streams them: ``id`` and ``name`` come with the call's first
    delta, ``arguments_fragment`` pieces follow. (Room for the tool-calling work: nothing produces one
    yet.)"""

    index: int  # which tool call of the choice
    id: str | None
    name: str | None
    arguments_fragment: str


@dataclass
class Finished:
    """A choice ended. ``finish_reason``: "stop" | "length" (and, with tool calling, "tool_calls")."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    ttft_ms: float = 0.0  # measured by a local engine; 0 for a mesh answer (not measured here)
    tokens_per_second: float | None = None


# Failures that end a request wherever it runs: the request may be what crashed the engine, so it is never
# retried (not by the SDKs, not on another peer).
FINAL_CODES = frozenset({"engine_crashed"})


@dataclass
class Failed:
    """A choice failed. From an engine only ``message`` and ``code`` are set: "engine_error",
    "invalid_grammar", "engine_stopped", "overloaded", or "engine_crashed" (see ``FINAL_CODES``), and
    ``error()`` gives them their HTTP meaning. A failure that already has one (a peer's refusal, the mesh
    being unavailable) carries its ``status``, ``type``, ``param`` and ``retry_after``."""

    message: str
    code: str = "engine_error"
    status: int | None = None
    type: str | None = None
    param: str | None = None
    retry_after: int | None = None

    def error(self) -> NodeError:
        """The failure as the node's error type: what the client sees."""
        if self.status is not None:
            return NodeError(
                self.message,
                status=self.status,
                code=self.code,
                type=self.type or ("invalid_request_error" if self.status < 500 else "server_error"),
                param=self.param,
                retry_after=self.retry_after,
                retryable=False if self.code in FINAL_CODES else None,
            )
        if self.code == "invalid_grammar":
            return NodeError(self.message, status=400, code="invalid_value", param="response_format")
        if self.code == "overloaded":
            return NodeError(self.message, status=503, code=self.code, retry_after=1)
        if self.code in FINAL_CODES:
            # Not retried: the SDKs retry 5xx by themselves unless told not to (x-should-retry: false).
            return NodeError(self.message, status=500, code=self.code, retryable=False)
        return NodeError(self.message, status=503 if self.code == "engine_stopped" else 500, code=self.code)

    @classmethod
    def of(cls, e: NodeError) -> Failed:
        return cls(e.message, e.code or "error", e.status, e.type, e.param, e.retry_after)


EngineEvent = Text | Finished | Failed  # what an engine emits for a request
GenEvent = Started | Text | ToolCallDelta | Finished | Failed  # what an answer is made of


def is_final(ev: GenEvent) -> bool:
    """The last event of a choice."""
    return isinstance(ev, Finished | Failed)


@dataclass(eq=False)
class GenRequest:
    prompt: list[int]
    params: SamplingParams
    max_new_tokens: int | None  # None: until the slot's context is full
    stop: list[str]
    emit: Callable[[EngineEvent], None]
    submitted_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    rid: int = -1  # the request's number on its engine worker

    def cancel(self) -> None:
        self.cancelled = True
