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

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token's log probability, from the log-softmax of the model's raw logits at its step
    (before penalties, logit_bias, grammar and temperature), and the ``top`` most likely tokens there as
    (token bytes, log probability), most likely first. Bytes, not text: a token can hold part of a UTF-8
    character."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass
class TokenEvent:
    """Text released to the client. ``logprobs``: when the request asked for them, one entry per sampled
    token whose text this event completes (an event may carry none, one or several)."""

    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass
class DoneEvent:
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_ms: float
    tokens_per_second: float | None


@dataclass
class ErrorEvent:
    """``code``: "engine_error", "invalid_grammar", "engine_stopped", "overloaded", or "engine_crashed" — the
    engine's process died while this request ran: the request may be what killed it, so it is never retried
    (not by the SDKs, not on another peer)."""

    message: str
    code: str = "engine_error"


Event = TokenEvent | DoneEvent | ErrorEvent


@dataclass(eq=False)
class GenRequest:
    prompt: list[int]
    params: SamplingParams
    max_new_tokens: int | None  # None: until the slot's context is full
    stop: list[str]
    emit: Callable[[Event], None]
    submitted_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    rid: int = -1  # the request's number on its engine worker

    def cancel(self) -> None:
        self.cancelled = True
