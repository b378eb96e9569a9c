"""The llama.cpp sampler chain built from a request's SamplingParams (events.py). Worker side only."""

from __future__ import annotations

import ctypes
import math
import random
import re

import llama_cpp
import numpy as np

from .events import SamplingParams

PENALTY_LAST_N = 64
TRIGGER_WINDOW = 256  # bytes of the answer's end searched for a lazy grammar's (unanchored) trigger

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


def pick_logprobs(logits: np.ndarray, token: int, top_n: int) -> tuple[float, list[tuple[int, float]]]:
    """The log-softmax of ``logits`` at ``token``, and the ``top_n`` most likely tokens with theirs (most
    likely first; ties by token id). The exponentials stay in float32 (ten times faster than float64
    over a 50k vocabulary, about 0.2 ms per token here) and are summed in float64."""
    peak = float(logits.max())
    log_total = peak + math.log(float(np.exp(logits - peak).sum(dtype=np.float64)))
    top: list[tuple[int, float]] = []
    if top_n > 0:
        n = min(top_n, logits.shape[0])
        part = np.argpartition(logits, -n)[-n:]
        order = part[np.lexsort((part, -logits[part]))]
        top = [(int(t), float(logits[t]) - log_total) for t in order]
    return float(logits[token]) - log_total, top


def token_logprob(
    ctx: llama_cpp.llama_context_p, batch_index: int, n_vocab: int, token: int, top_n: int, piece
) -> dict:
    """The log probability of ``token``, sampled from the logits at ``batch_index`` of the last decode,
    as OpenAI reports it: from the model's raw logits, before penalties, logit_bias, grammar and
    temperature (the sampler chains copy the logits, so they are still raw here). ``piece``: token id
    → its bytes. The entry is plain data in OpenAI's chat shape (events.Text). Called only for requests
    that ask for log probabilities."""
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, batch_index), shape=(n_vocab,))
    logprob, top = pick_logprobs(logits, token, top_n)
    return {**_token_entry(piece(token), logprob), "top_logprobs": [_token_entry(piece(t), lp) for t, lp in top]}


def _token_entry(data: bytes, logprob: float) -> dict:
    """A token as OpenAI shows it: its text (U+FFFD for a partial UTF-8 character) and exact bytes."""
    return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}


def _chain(samplers: list) -> llama_cpp.llama_sampler_p:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for smpl in samplers:
        llama_cpp.llama_sampler_chain_add(chain, smpl)  # the chain owns it from now on
    return chain


class Sampler:
    """Owns one llama.cpp sampler chain (one per sequence).

    Order: penalties, logit bias, grammar, then the selector (greedy, or top-k/top-p/min-p/temperature/
    dist). Without a grammar nothing in the chain can fail, and ``llama_sampler_sample`` does it all.

    With a grammar, sampling is apply / check / accept, in Python:
    - first the chain without the grammar chooses, and the grammar is asked about that one token
      (cheap: llama.cpp's grammar check costs milliseconds per step over the whole vocabulary);
    - if the grammar rejects it, the whole chain runs again with the grammar over every candidate
      (as llama.cpp's own common sampler does; greedy answers are the same either way);
    - the chosen token must have a logit above -inf, i.e. one the grammar allowed, before the
      grammar is told about it. Otherwise the grammar has reached a dead end and the request fails
      with GrammarDeadEnd, where ``llama_sampler_sample`` would have made llama.cpp throw inside
      ``accept`` (or GGML_ABORT on an end-of-generation token) and end the process.

    A lazy grammar (tool calls in auto mode) is triggered here, in Python, not by llama.cpp's own lazy
    grammar (``llama_sampler_init_grammar_lazy_patterns``, which llama-cpp-python 0.3.36 binds): that one
    feeds the text after its trigger to the grammar unchecked, and throws across the C boundary (ending
    the process) when the token that completed the trigger carries text the grammar refuses. Here each
    token is checked first (``_accept_free``).
    """

    def __init__(self, params: SamplingParams, vocab: llama_cpp.llama_vocab_p, n_vocab: int) -> None:
        self.chain = None
        self.n_vocab = n_vocab
        self._grammar = None
        self._awaiting = False
        if params.grammar is not None:
            try:
                text = params.grammar.encode("utf-8")
            except UnicodeEncodeError:
                text = b""  # an unencodable grammar is refused below like an unparsable one
            self._grammar = llama_cpp.llama_sampler_init_grammar(vocab, text, b"root") if text else None
            if not self._grammar:
                raise GrammarError("the grammar derived from response_format or tools could not be parsed by llama.cpp")
        pre = []
        if params.presence_penalty or params.frequency_penalty or params.repeat_penalty != 1.0:
            # llama-cpp-python 0.3.36 binds the five-argument form (n_vocab first).
            pre.append(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, PENALTY_LAST_N, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
                )
            )
        if params.logit_bias:
            arr = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for i, (tok, bias) in enumerate(params.logit_bias.items()):
                arr[i].token = tok
                arr[i].bias = effective_bias(bias)
            pre.append(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), arr))
        if params.greedy:
            select = [llama_cpp.llama_sampler_init_greedy()]
        else:
            select = []
            if params.top_k > 0:
                select.append(llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                select.append(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                select.append(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            select.append(llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            select.append(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        if self._grammar is None:
            self.chain = _chain(pre + select)
            return
        # Three parts, each owned (and freed) here, applied one by one: penalties and bias, the grammar,
        # the selector. A lazy grammar (``grammar_triggers``) is left out until its trigger appears.
        self._pre, self._select = _chain(pre), _chain(select)
        self._vocab = vocab
        self._triggers = [re.compile(p.encode("utf-8")) for p in params.grammar_triggers]
        self._awaiting = bool(self._triggers)
        self._anchored = any(p.startswith("^") for p in params.grammar_triggers)  # matched at the answer's start
        self._seen = b""  # the answer so far, while a lazy grammar waits for its trigger
        self._candidates = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._array = llama_cpp.llama_token_data_array()
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)

    def sample(self, ctx: llama_cpp.llama_context_p, batch_index: int) -> int:
        """Sample from the logits at ``batch_index`` of the last decode, and accept the token.
        Raises GrammarDeadEnd when the grammar allows no token."""
        if self._grammar is None:
            return llama_cpp.llama_sampler_sample(self.chain, ctx, batch_index)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, batch_index), shape=(self.n_vocab,))
        arr = self._fill(logits)
        llama_cpp.llama_sampler_apply(self._pre, ctypes.byref(arr))
        llama_cpp.llama_sampler_apply(self._select, ctypes.byref(arr))
        if self._awaiting and 0 <= arr.selected < arr.size:
            return self._accept_free(int(arr.data[arr.selected].id))
        if 0 <= arr.selected < arr.size:
            chosen = arr.data[arr.selected]
            if self._grammar_allows(int(chosen.id), chosen.logit):
                return self._accept(int(chosen.id))
        # The chain's own choice breaks the grammar: choose again among what the grammar allows.
        arr = self._fill(logits)
        for part in (self._pre, self._grammar, self._select):
            llama_cpp.llama_sampler_apply(part, ctypes.byref(arr))
        # Read through the array's own pointer: a sampler may point it at storage of its own. The grammar
        # marks what it rejects with -inf (+inf is possible: repeat_penalty 0 divides by zero).
        if not (0 <= arr.selected < arr.size) or not arr.data[arr.selected].logit > -math.inf:
            raise GrammarDeadEnd(
                "the grammar of response_format or tools allows no token at this point of the answer "
                "(with this request's logit_bias); no valid JSON can be completed"
            )
        return self._accept(int(arr.data[arr.selected].id))

    def _fill(self, logits: np.ndarray) -> llama_cpp.llama_token_data_array:
        cand = self._candidates
        cand["id"] = self._ids  # the samplers reorder the array in place: refill all of it
        cand["logit"] = logits
        cand["p"] = 0.0
        arr = self._array
        arr.data = cand.ctypes.data_as(llama_cpp.llama_token_data_p)
        arr.size, arr.selected, arr.sorted = self.n_vocab, -1, False
        return arr

    def _grammar_allows(self, token: int, logit: float = 0.0) -> bool:
        """Whether the grammar, in its current state, accepts ``token`` next (asked on a copy of one
        candidate: the grammar's state does not change)."""
        one = self._one_array
        cand = self._one[0]
        cand.id = token  # type: ignore[assignment]  # ctypes converts the int
        cand.logit, cand.p = logit, 0.0
        one.size, one.selected, one.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(one))
        return bool(self._one[0].logit > -math.inf)

    def _accept(self, token: int) -> int:
        for part in (self._pre, self._grammar, self._select):  # penalties' history, the grammar's state
            llama_cpp.llama_sampler_accept(part, token)
        return token

    def _accept_free(self, token: int) -> int:
        """A token chosen while a lazy grammar waits: accepted without the grammar, then the answer so
        far is searched for a trigger. From a trigger on, the grammar is fed the text from the trigger's
        start (its first group, if it has one); tokens it would refuse never reach llama.cpp (which
        would throw across the C boundary): then this trigger is passed over and the wait goes on."""
        for part in (self._pre, self._select):
            llama_cpp.llama_sampler_accept(part, token)
        self._seen += _piece(self._vocab, token)
        for pattern in self._triggers:
            m = pattern.search(self._seen)
            if m is None:
                continue
            start = m.start(1) if m.re.groups and m.start(1) >= 0 else m.start()
            if self._feed(self._seen[start:]):
                self._awaiting = False
                self._seen = b""
                return token
            self._seen = self._seen[start + 1 :]  # not a call this grammar can hold: look further on
        if len(self._seen) > 2 * TRIGGER_WINDOW and not self._anchored:
            self._seen = self._seen[-TRIGGER_WINDOW:]  # a marker is short: searching all of a long answer is waste
        return token

    def _feed(self, text: bytes) -> bool:
        """Feed ``text`` to the grammar as tokens, each checked first. False (and a fresh grammar) when
        the text is not a prefix the grammar accepts."""
        tokens = _tokenize(self._vocab, text)
        if b"".join(_piece(self._vocab, t) for t in tokens) == text and all(self._feed_one(t) for t in tokens):
            return True
        llama_cpp.llama_sampler_reset(self._grammar)
        return False

    def _feed_one(self, token: int) -> bool:
        if not self._grammar_allows(token):
            return False
        llama_cpp.llama_sampler_accept(self._grammar, token)
        return True

    def close(self) -> None:
        if self.chain:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None
        if self._grammar is not None:
            for part in (self._pre, self._grammar, self._select):
                llama_cpp.llama_sampler_free(part)
            self._grammar = None


def _piece(vocab: llama_cpp.llama_vocab_p, token: int) -> bytes:
    """The text of ``token`` as the grammar reads it (special tokens written out)."""
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, 64, 0, True)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, -n, 0, True)
    return buf.raw[:n]


def _tokenize(vocab: llama_cpp.llama_vocab_p, text: bytes) -> list[int]:
    n_max = len(text) + 8
    arr = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), arr, n_max, False, True)
    return list(arr[: max(n, 0)])
