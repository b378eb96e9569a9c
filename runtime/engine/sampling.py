"""The llama.cpp sampler chain built from a request's SamplingParams (events.py). Worker side only."""

from __future__ import annotations

import ctypes
import math
import random

import llama_cpp
import numpy as np

from .events import SamplingParams

PENALTY_LAST_N = 64

# A banned token (OpenAI: logit_bias -100) gets this finite bias, not -inf. Next to logits of a few
# tens it is a ban everywhere (exp(-1e4) is 0 in float32), except where the grammar allows nothing
# but banned tokens: there the grammar, which removes tokens with -inf, wins and a banned token is
# written. With -inf every candidate could be -inf, and the chain would pick a token the grammar
# rejects, which llama.cpp answers by throwing across the C boundary (std::terminate, issue 10).
BAN_BIAS = -1.0e4

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


class GrammarError(ValueError):
    """The grammar cannot be used for this request: it does not parse, or (GrammarDeadEnd) it allows
    no token at some step. Either way the request's fault, answered 400 for ``response_format``."""


class GrammarDeadEnd(GrammarError):
    pass


def effective_bias(bias: float) -> float:
    """The bias added to a token's logit: a ban (-100 or less) becomes BAN_BIAS (see above)."""
    return BAN_BIAS if bias <= -100 else bias


class Sampler:
    """Owns one llama.cpp sampler chain (one per sequence).

    Order: penalties, logit bias, grammar, then the selector (greedy, or top-k/top-p/min-p/temperature/
    dist). Without a grammar nothing in the chain can fail, and ``llama_sampler_sample`` does it all.
    With one, sampling is split into apply / check / accept: after the chain has chosen, the chosen
    token must have a logit above -inf (one the grammar allowed) before the grammar is told about it;
    otherwise the grammar has reached a dead end and the request fails with GrammarDeadEnd, where
    ``llama_sampler_sample`` would have made llama.cpp throw inside ``accept`` and abort the process.
    """

    def __init__(self, params: SamplingParams, vocab: llama_cpp.llama_vocab_p, n_vocab: int) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.chain = chain
        self.n_vocab = n_vocab
        self._candidates: np.ndarray | None = None
        add = lambda s: llama_cpp.llama_sampler_chain_add(chain, s)  # noqa: E731
        if params.presence_penalty or params.frequency_penalty or params.repeat_penalty != 1.0:
            # llama-cpp-python 0.3.36 binds the five-argument form (n_vocab first).
            add(llama_cpp.llama_sampler_init_penalties(
                n_vocab, PENALTY_LAST_N, params.repeat_penalty, params.frequency_penalty, params.presence_penalty))
        if params.logit_bias:
            arr = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for i, (tok, bias) in enumerate(params.logit_bias.items()):
                arr[i].token = tok
                arr[i].bias = effective_bias(bias)
            add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), arr))
        if params.grammar is not None:
            try:
                text = params.grammar.encode("utf-8")
            except UnicodeEncodeError:
                text = b""  # an unencodable grammar is refused below like an unparsable one
            g = llama_cpp.llama_sampler_init_grammar(vocab, text, b"root") if text else None
            if not g:
                self.close()
                raise GrammarError("the grammar derived from response_format could not be parsed by llama.cpp")
            add(g)
            self._candidates = np.zeros(n_vocab, dtype=_TOKEN_DATA)
            self._ids = np.arange(n_vocab, dtype=np.int32)
            self._array = llama_cpp.llama_token_data_array(
                data=self._candidates.ctypes.data_as(llama_cpp.llama_token_data_p), size=n_vocab, selected=-1,
                sorted=False)
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
        """Sample from the logits at ``batch_index`` of the last decode, and accept the token.
        Raises GrammarDeadEnd when the grammar allows no token."""
        if self._candidates is None:
            return llama_cpp.llama_sampler_sample(self.chain, ctx, batch_index)
        logits = llama_cpp.llama_get_logits_ith(ctx, batch_index)
        cand = self._candidates
        cand["id"] = self._ids  # the samplers reorder the array in place: refill all of it
        cand["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        cand["p"] = 0.0
        arr = self._array
        arr.data = cand.ctypes.data_as(llama_cpp.llama_token_data_p)
        arr.size = self.n_vocab
        arr.selected = -1
        arr.sorted = False
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(arr))
        # Read through the array's own pointer: a sampler may point it at storage of its own. The grammar
        # marks what it rejects with -inf (+inf is possible: repeat_penalty 0 divides by zero).
        if not (0 <= arr.selected < arr.size) or not arr.data[arr.selected].logit > -math.inf:
            raise GrammarDeadEnd("the response_format grammar allows no token at this point of the answer "
                                 "(with this request's logit_bias); no valid JSON can be completed")
        token = int(arr.data[arr.selected].id)
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    def close(self) -> None:
        if self.chain:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None
