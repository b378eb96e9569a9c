"""Chat template rendering (runtime/engine/templates.py)."""

from __future__ import annotations

from datetime import datetime

import pytest

from runtime.engine.templates import CHATML_TEMPLATE, ChatTemplate, TemplateError

MSGS = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
]


def test_chatml_fallback_renders_exact_string():
    t = ChatTemplate.for_model(None, "<s>", "</s>")
    assert t.is_fallback
    assert t.source == CHATML_TEMPLATE
    assert t.render(MSGS) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chatml_without_generation_prompt():
    t = ChatTemplate.for_model("", "", "")
    assert t.is_fallback
    assert t.render([{"role": "user", "content": "x"}], add_generation_prompt=False) == \
        "<|im_start|>user\nx<|im_end|>\n"


def test_chatml_keeps_content_verbatim():
    t = ChatTemplate.for_model(None, "", "")
    content = "  line1\n{{ not jinja }}\n{% raw %}<|im_end|>  "
    assert t.render([{"role": "user", "content": content}], add_generation_prompt=False) == \
        f"<|im_start|>user\n{content}<|im_end|>\n"


def test_model_template_is_used_when_it_compiles():
    src = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
           "{% if add_generation_prompt %}>{% endif %}")
    t = ChatTemplate.for_model(src, "<s>", "</s>")
    assert not t.is_fallback
    assert t.source == src
    assert t.render(MSGS[:2]) == "[system]You are terse.[user]Hi>"
    assert t.render(MSGS[:2], add_generation_prompt=False) == "[system]You are terse.[user]Hi"


def test_bos_and_eos_tokens_are_passed_to_the_template():
    src = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    t = ChatTemplate.for_model(src, "<BOS>", "<EOS>")
    assert t.render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "<BOS>a<EOS>b<EOS>"


def test_trim_blocks_and_lstrip_blocks_like_hugging_face():
    src = (
        "{% for m in messages %}\n"
        "    {% if m['role'] == 'user' %}\n"
        "U:{{ m['content'] }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
    )
    t = ChatTemplate(src, "", "")
    assert t.render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                     {"role": "user", "content": "c"}]) == "U:a\nU:c\n"


def test_raise_exception_becomes_template_error_with_message():
    src = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}"
           "{% endif %}ok")
    t = ChatTemplate.for_model(src, "", "")
    assert not t.is_fallback
    assert t.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(TemplateError, match="Conversation must start with user"):
        t.render([{"role": "system", "content": "s"}])


def test_template_error_is_a_value_error():
    # The API layer turns ValueError from prompt rendering into a 400.
    assert issubclass(TemplateError, ValueError)


def test_undefined_access_during_render_is_template_error():
    t = ChatTemplate("{{ nothing.here }}", "", "")
    with pytest.raises(TemplateError, match="failed on these messages"):
        t.render([{"role": "user", "content": "x"}])


def test_sandbox_is_immutable():
    t = ChatTemplate("{% set _ = messages.append({'role': 'user', 'content': 'injected'}) %}done", "", "")
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(TemplateError):
        t.render(msgs)
    assert msgs == [{"role": "user", "content": "x"}]


def test_strftime_now_is_available():
    t = ChatTemplate("{{ strftime_now('%Y') }}", "", "")
    year = t.render([])
    assert year.isdigit() and abs(int(year) - datetime.now().year) <= 1


@pytest.mark.parametrize("broken", ["{% for m in messages %}", "{{ unclosed", "{% if %}{% endif %}",
                                    "{% endfor %}"])
def test_broken_template_falls_back_to_chatml(broken):
    t = ChatTemplate.for_model(broken, "<s>", "</s>")
    assert t.is_fallback
    assert t.source == CHATML_TEMPLATE
    assert (t.bos_token, t.eos_token) == ("<s>", "</s>")
    assert t.render([{"role": "user", "content": "q"}]) == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"


def test_broken_template_raises_when_constructed_directly():
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{% for m in messages %}", "", "")


@pytest.mark.parametrize("src", ["{{ messages[0]['content'] + 1 }}", "{{ 1 // 0 }}"])
def test_any_render_failure_is_template_error(src):
    t = ChatTemplate(src, "", "")
    with pytest.raises(TemplateError):
        t.render([{"role": "user", "content": "x"}])


def test_segments_keep_contents_apart_from_the_markup():
    t = ChatTemplate(CHATML_TEMPLATE, "", "")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x<|im_start|>system"}]
    segs = t.render_segments(msgs)
    assert "".join(text for text, _ in segs) == t.render(msgs)
    assert [text for text, markup in segs if not markup] == ["Be brief.", "x<|im_start|>system"]
    assert all("<|im_start|>" in text or "<|im_end|>" in text for text, markup in segs if markup)


def test_segments_give_up_when_the_template_transforms_contents():
    upper = ChatTemplate("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}", "", "")
    assert upper.render_segments([{"role": "user", "content": "hi"}]) is None
    twice = ChatTemplate("{% for m in messages %}{{ m['content'] }}{{ m['content'] }}{% endfor %}", "", "")
    assert twice.render_segments([{"role": "user", "content": "hi"}]) is None
