"""Grammars that hold tool calls to their tools' schemas, built with the project's JSON Schema converter
(runtime/engine/grammar.py), one per request.

- ``required`` or a named function, and the generic protocol whatever the choice: the grammar applies from
  the first token (the whole answer is a call, or for the generic protocol a JSON envelope);
- ``auto`` with a native format: a lazy grammar. The answer is free until the format's marker appears;
  from the marker on, the grammar holds the calls (and, once they are complete, allows only the end of the
  answer). The engine applies it from the trigger (runtime/engine/sampling.py).

A strict tool's schema must be enforceable (checked in spec.py); a non-strict tool whose schema uses
keywords the converter does not support gets arguments held to "any JSON object".
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.grammar import GrammarBuilder, gbnf_literal, json_text
from .formats import MAX_CALLS_PER_ANSWER, ToolFormat
from .spec import FunctionTool, ToolsSpec


@dataclass(frozen=True)
class ToolGrammar:
    gbnf: str
    triggers: tuple[str, ...] = ()  # regular expressions; empty: the grammar applies from the first token


def _args(b: GrammarBuilder, tool: FunctionTool) -> str:
    if tool.enforceable:
        return b.schema_rule(tool.parameters, f"{tool.name}-args")
    return b.primitive("object")


def _json_call(b: GrammarBuilder, tools: tuple[FunctionTool, ...], args_key: str) -> str:
    """``{"name": "<tool>", "<args_key>": <arguments>}``, one alternative per tool."""
    sp = b.primitive("space")
    alts = []
    for t in tools:
        body = (
            f'"{{" {sp} "\\"name\\"" {sp} ":" {sp} {gbnf_literal(json_text(t.name))} {sp} "," {sp} '
            f'{gbnf_literal(json_text(args_key))} {sp} ":" {sp} {_args(b, t)} "}}" {sp}'
        )
        alts.append(b.add_rule(f"call-{t.name}", body))
    return b.add_rule("call", " | ".join(alts))


_XML_TEXT = r'([^<] | "<" [^/])*'  # a parameter's text: anything without a closing tag in it


def _xml_call(b: GrammarBuilder, tools: tuple[FunctionTool, ...]) -> str:
    """Qwen3-Coder's ``<tool_call>\\n<function=name>\\n<parameter=p>\\nvalue\\n</parameter>\\n…``."""
    text = b.add_rule("xml-text", _XML_TEXT)
    alts = []
    for t in tools:
        props = t.parameters.get("properties") or {}
        required = set(t.parameters.get("required") or ())
        parts = []
        if t.enforceable and props:
            for name, sub in props.items():
                types = sub.get("type") if isinstance(sub, dict) else None
                value = text if types == "string" else b.schema_rule(sub, f"{t.name}-{name}", t.parameters)
                param = f'"<parameter=" {gbnf_literal(name)} ">\\n" {value} "\\n</parameter>\\n"'
                parts.append(f"({param})" if name in required else f"({param})?")
        else:
            parts.append(f'("<parameter=" [a-zA-Z0-9_-]+ ">\\n" {text} "\\n</parameter>\\n")*')
        head = f'"<tool_call>\\n<function=" {gbnf_literal(t.name)} ">\\n"'
        alts.append(b.add_rule(f"call-{t.name}", f'{head} {" ".join(parts)} "</function>\\n</tool_call>"'))
    return b.add_rule("call", " | ".join(alts))


def _repeat(b: GrammarBuilder, one: str, parallel: bool, sep: str) -> str:
    if not parallel:
        return one
    return f"{one} ({sep} {one}){{0,{MAX_CALLS_PER_ANSWER - 1}}}"


def tool_grammar(spec: ToolsSpec, fmt: ToolFormat) -> ToolGrammar | None:
    """The grammar for this request's tool calls in this format; None when the tools are off."""
    tools = spec.callable_tools
    if not spec.active or not tools:
        return None
    b = GrammarBuilder()
    sp = b.primitive("space")
    parallel = spec.parallel and spec.choice.mode != "function"
    forced = spec.choice.mode in ("required", "function")
    if fmt.name == "generic":
        call = _json_call(b, tools, "arguments")
        alts = [f'"\\"tool_call\\"" {sp} ":" {sp} {call}']
        if parallel:
            alts.append(
                f'"\\"tool_calls\\"" {sp} ":" {sp} "[" {sp} {_repeat(b, call, True, f""" "," {sp}""")} "]" {sp}'
            )
        if not forced:
            alts.append(f'"\\"response\\"" {sp} ":" {sp} {b.primitive("string")}')
        return ToolGrammar(b.render(f'"{{" {sp} ({" | ".join(alts)}) "}}" {sp}'))
    if fmt.name == "llama3":
        root = _repeat(b, _json_call(b, tools, "parameters"), parallel, f'";" {sp}')
    elif fmt.name == "mistral":
        call = _json_call(b, tools, "arguments")
        root = f'"[TOOL_CALLS]" {sp} "[" {sp} {_repeat(b, call, parallel, f""" "," {sp}""")} "]" {sp}'
    elif fmt.name == "qwen-xml":
        root = _repeat(b, _xml_call(b, tools), parallel, sp)
    else:  # hermes, phi4: JSON between tags
        call = _json_call(b, tools, "arguments")
        block = b.add_rule("block", f"{gbnf_literal(fmt.open)} {sp} {call} {gbnf_literal(fmt.close)} {sp}")
        root = _repeat(b, block, parallel, sp)
    return ToolGrammar(b.render(root), () if forced else (fmt.trigger,))
