"""Sampling parameters (plain data) and the llama.cpp sampler chain built from them."""

from __future__ import annotations

import random
import llama_cpp

from .events import SamplingParams

PENALTY_LAST_N = 64


class GrammarError(ValueError):
    pass


class Sampler:
    """Owns one llama.cpp sampler chain (one per sequence)."""

    def __init__(self, params: SamplingParams, vocab: llama_cpp.llama_vocab_p, n_vocab: int) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.chain = chain
        add = lambda s: llama_cpp.llama_sampler_chain_add(chain, s)  # noqa: E731
        if params.logit_bias:
            arr = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for i, (tok, bias) in enumerate(params.logit_bias.items()):
                arr[i].token = tok
                arr[i].bias = bias
            add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), arr))
        if params.grammar is not None:
            g = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
            if not g:
                self.close()
                raise GrammarError("the grammar derived from response_format could not be parsed by llama.cpp")
            add(g)
        if params.presence_penalty or params.frequency_penalty or params.repeat_penalty != 1.0:
            add(llama_cpp.llama_sampler_init_penalties(
                PENALTY_LAST_N, params.repeat_penalty, params.frequency_penalty, params.presence_penalty))
        if params.greedy:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: llama_cpp.llama_context_p, batch_index: int) -> int:
        """Sample from the logits at ``batch_index`` of the last decode, and accept the token."""
        return llama_cpp.llama_sampler_sample(self.chain, ctx, batch_index)

    def close(self) -> None:
        if self.chain:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None


