"""Chat prompt rendering from the GGUF's Jinja chat template.

The template is read from the model's ``tokenizer.chat_template`` metadata and rendered in a Jinja
sandbox the way Hugging Face's ``apply_chat_template`` does. Models without a template fall back to
ChatML (documented in docs/api.md), the most common format among instruction-tuned GGUFs.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(ValueError):
    pass


def _raise(message: str) -> None:
    raise TemplateError(message)


@dataclass
class ChatTemplate:
    source: str
    bos_token: str
    eos_token: str
    is_fallback: bool = False

    def __post_init__(self) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateError as e:
            raise TemplateError(f"the model's chat template does not compile: {e}") from None

    @classmethod
    def for_model(cls, template: str | None, bos: str, eos: str) -> ChatTemplate:
        if template:
            try:
                return cls(template, bos, eos)
            except TemplateError:
                pass
        return cls(CHATML_TEMPLATE, bos, eos, is_fallback=True)

    def render_segments(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, tools: list[dict] | None = None
    ) -> list[tuple[str, bool]] | None:
        """The prompt as (text, is_template_markup) pieces: each message's content apart from the template's
        own text, so the content can be tokenized as plain text (a user cannot write the model's control
        tokens, such as a fake system turn). Rendered with a per-call random marker in place of each
        content; None when the template transforms contents so that the markers do not come back intact,
        once each and in order (the caller then tokenizes the whole text as before)."""
        nonce = secrets.token_hex(8)
        marks = [f"\ue000{nonce}:{i}\ue001" for i in range(len(messages))]
        rendered = self.render(
            [{**m, "content": marks[i]} for i, m in enumerate(messages)], add_generation_prompt, tools
        )
        pieces = re.split(f"\ue000{nonce}:(\\d+)\ue001", rendered)
        found = [int(x) for x in pieces[1::2]]
        if found != list(range(len(messages))):
            return None
        out: list[tuple[str, bool]] = []
        for k, text in enumerate(pieces):
            if k % 2 == 0:
                if text:
                    out.append((text, True))
            elif messages[int(text)]["content"]:
                out.append((messages[int(text)]["content"], False))
        return out

    def render(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, tools: list[dict] | None = None
    ) -> str:
        """The prompt text. ``tools``: OpenAI-shaped tool definitions for templates that offer tools
        themselves (left undefined when None, as templates test ``tools is defined``)."""
        extra = {"tools": tools} if tools is not None else {}
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except TemplateError:
            raise
        except Exception as e:  # jinja2 errors and plain Python errors raised inside the template
            raise TemplateError(f"the model's chat template failed on these messages: {e}") from None
