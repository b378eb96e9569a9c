"""Token log probabilities (engine TokenLogprob entries) in OpenAI's wire shapes. Pure functions.

- Chat completions: ``choices[].logprobs = {"content": [{token, logprob, bytes, top_logprobs: [{token,
  logprob, bytes}]}], "refusal": null}``; a stream chunk carries the entries of the text it carries.
- Completions (legacy): ``choices[].logprobs = {tokens, token_logprobs, top_logprobs, text_offset}``,
  where ``top_logprobs`` holds one {token: logprob} object per token with the most likely tokens and
  always the sampled one (up to logprobs + 1 entries, as OpenAI documents), and ``text_offset`` is each
  token's character offset in the choice's text (the echoed prompt included).

A token's ``token`` is its text; a token holding part of a UTF-8 character is shown with U+FFFD in place
of the partial character, and ``bytes`` gives its exact bytes.
"""

from __future__ import annotations

from ..engine.events import TokenLogprob


def token_text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def chat_content(entries: list[TokenLogprob]) -> list[dict]:
    """The ``content`` list of a chat choice's (or chunk's) ``logprobs``."""
    return [
        {
            "token": token_text(e.token),
            "logprob": e.logprob,
            "bytes": list(e.token),
            "top_logprobs": [{"token": token_text(t), "logprob": lp, "bytes": list(t)} for t, lp in e.top],
        }
        for e in entries
    ]


def chat_logprobs(entries: list[TokenLogprob] | None) -> dict | None:
    """A chat choice's ``logprobs`` object; None when the request did not ask for them."""
    if entries is None:
        return None
    return {"content": chat_content(entries), "refusal": None}


def completion_logprobs(entries: list[TokenLogprob] | None, offset: int) -> dict | None:
    """A completion choice's (or chunk's) legacy ``logprobs`` object; ``offset`` is the character offset
    of the first entry's text in the choice's text. None when the request did not ask for them."""
    if entries is None:
        return None
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for e in entries:
        text = token_text(e.token)
        tokens.append(text)
        token_logprobs.append(e.logprob)
        top = {token_text(t): lp for t, lp in e.top}
        top.setdefault(text, e.logprob)
        tops.append(top)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}
